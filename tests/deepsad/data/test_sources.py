"""The registry, name resolution, missing-file messages, and the real MNIST / Fashion-MNIST."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepsad.data.dataset import Dataset
from deepsad.data.sources import ALIASES, DATASETS, load_dataset, resolve_name
from deepsad.errors import ConfigError, DataError

NAMES = ["mnist", "fmnist", "cifar10", "arrhythmia", "cardio", "satellite", "satimage-2", "shuttle", "thyroid",
         "digits", "breast_cancer"]  # fmt: skip


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> Dataset:
    return load_dataset("mnist", shared_data)


def test_registry_names() -> None:
    assert list(DATASETS) == NAMES
    assert resolve_name("fashion-mnist") == "fmnist" and resolve_name(" MNIST ") == "mnist"
    for alias, target in ALIASES.items():
        assert target in DATASETS and alias not in DATASETS
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.has_test_split == (name in ("mnist", "fmnist", "cifar10"))
        assert info.kind == ("image" if name in ("mnist", "fmnist", "cifar10") else "tabular")
    assert {n for n, i in DATASETS.items() if i.fetchable} == {"mnist", "fmnist", "cifar10", "arrhythmia"}
    assert DATASETS["mnist"].files[0] == "train-images-idx3-ubyte(.gz)"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError) as e:
        load_dataset("mnits", "/data")
    msg = str(e.value)
    assert "'mnits'" in msg and all(n in msg for n in NAMES) and "fashion-mnist" in msg and ".npz" in msg


def test_file_based_set_needs_a_directory() -> None:
    with pytest.raises(ConfigError, match=r"mnist: needs a data directory"):
        load_dataset("mnist", None)


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert msg.startswith("mnist: missing train-images-idx3-ubyte(.gz)")
    for d in ("", "/mnist", "/MNIST", "/MNIST/raw"):
        assert f"{tmp_path}{d}," in msg or f"{tmp_path}{d})" in msg
    assert f"run `deepsad data fetch mnist --to {tmp_path}`" in msg
    assert "\n" not in msg


def test_missing_only_some_files(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    assert "fmnist: missing train-images" in str(e.value)  # MNIST files do not count for fmnist
    with pytest.raises(DataError, match=r"missing train-labels-idx1-ubyte\(\.gz\), t10k-images"):
        load_dataset("mnist", tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=f"arrhythmia: data directory {tmp_path / 'nope'} does not exist; run"
    ):
        load_dataset("arrhythmia", tmp_path / "nope")


def test_missing_with_alternatives_and_no_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("cardio", tmp_path)
    msg = str(e.value)
    assert "cardio.mat (ODDS .mat; looked in" in msg and " or ctg.csv (UCI raw; looked in" in msg
    assert str(tmp_path / "uci") in msg and "deepsad data fetch" not in msg and "CTG.xls" in msg


def test_real_mnist(mnist: Dataset) -> None:
    assert mnist.kind == "image" and mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test is not None and mnist.y_test is not None
    assert mnist.x_test.shape == (10000, 1, 28, 28) and mnist.y_train.dtype == np.int64
    counts = np.bincount(mnist.y_train).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.source.endswith("mnist")


def test_real_fashion_mnist(shared_data: Path) -> None:
    ds = load_dataset("fashion-mnist", shared_data)
    assert ds.name == "fmnist" and ds.x_train.shape == (60000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.y_test is not None and np.bincount(ds.y_test).tolist() == [1000] * 10


def test_loaders_do_not_import_torch() -> None:
    code = (
        "import sys; import deepsad.data.sources, deepsad.data.fetch; "
        "bad = [m for m in ('torch', 'sklearn', 'scipy', 'typer', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
