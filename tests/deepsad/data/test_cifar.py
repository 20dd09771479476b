"""CIFAR-10 binary and python batches, and the restricted unpickler that guards the latter."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from deepsad.data.cifar import BIN_TEST, BIN_TRAIN, PY_TEST, PY_TRAIN, read_binary_batch, read_python_batch
from deepsad.data.sources import load_dataset
from deepsad.errors import DataError


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def write_bin(directory: Path, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, f in enumerate((*BIN_TRAIN, BIN_TEST)):
        x, y = images(n, i)
        rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(n, -1)], axis=1)
        (directory / f).write_bytes(rec.tobytes())
        written[f] = (x, y)
    return written


# The pure-Python pickler: its per-type `dispatch` table can be extended (the C one cannot).
_PurePickler: Any = pickle._Pickler


class _Py2Pickler(_PurePickler):
    """Writes byte strings as Python 2 ``str`` (BINSTRING), as the published CIFAR pickles do."""

    dispatch: ClassVar[dict[type, Any]] = dict(_PurePickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: Any, path: Path) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_py(directory: Path, n: int = 3, *, style: str = "py3") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, f in enumerate((*PY_TRAIN, PY_TEST)):
        x, y = images(n, 10 + i)
        if style == "py2":  # like the published files: byte-string keys, protocol 2
            py2_pickle(
                {b"batch_label": b"x", b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]},
                directory / f,
            )
        else:
            payload = {"data": x.reshape(n, -1), "labels": [int(v) for v in y], "filenames": ["a"] * n}
            (directory / f).write_bytes(pickle.dumps(payload, protocol=4))
        written[f] = (x, y)
    return written


def test_binary_version(tmp_path: Path) -> None:
    written = write_bin(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.kind == "image" and ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test is not None and ds.y_test is not None and ds.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train[:3], written["data_batch_1.bin"][0])
    np.testing.assert_array_equal(ds.y_train[3:6], written["data_batch_2.bin"][1])
    np.testing.assert_array_equal(ds.x_test, written["test_batch.bin"][0])
    assert ds.y_train.dtype == np.int64


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_python_version(tmp_path: Path, style: str) -> None:
    written = write_py(tmp_path / "cifar-10-batches-py", style=style)
    ds = load_dataset("cifar-10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train[12:], written["data_batch_5"][0])
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])


def test_binary_preferred_over_python(tmp_path: Path) -> None:
    write_py(tmp_path / "cifar-10-batches-py", n=2)
    write_bin(tmp_path / "cifar-10-batches-bin", n=4)
    assert load_dataset("cifar10", tmp_path).x_train.shape[0] == 20


def test_binary_batch_must_be_whole_records(tmp_path: Path) -> None:
    write_bin(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(
        DataError, match=r"data_batch_3.bin: size 9218 bytes is not a positive multiple of the 3073"
    ):
        load_dataset("cifar10", tmp_path)


def test_binary_labels_checked(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    path.write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(DataError, match=r"label 12 is outside 0..9"):
        read_binary_batch(path)


class _Exploit:
    """Unpickling this runs ``os.system(command)`` with a normal unpickler."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _ExploitPopen(_Exploit):
    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", self.command.split()[-1]],))


class _ExploitEval(_Exploit):
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({self.command.split()[-1]!r}, 'w')",))


@pytest.mark.parametrize("exploit", [_Exploit, _ExploitPopen, _ExploitEval])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, exploit: type[_Exploit]) -> None:
    marker = tmp_path / "pwned"
    write_py(tmp_path / "cifar-10-batches-py")
    evil = (
        {"data": _Exploit(f"touch {marker}"), "labels": [0]}
        if exploit is _Exploit
        else exploit(f"touch {marker}")
    )
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2: unsafe or malformed pickle: refusing to load global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(_Exploit("true"), protocol=4))
    with pytest.raises(DataError, match=r"refusing to load global (posix|nt|os)\.system"):
        read_python_batch(path)


def test_numpy_object_array_cannot_smuggle_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = _Exploit(f"touch {marker}")
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": arr, "labels": [0]}, protocol=4))
    with pytest.raises(DataError, match=r"refusing to load global"):
        read_python_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "expected a dict"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, r"'data' must be an \(N, 3072\) uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1 labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, "label 10 is outside"),
    ],
)
def test_python_batch_contents_checked(tmp_path: Path, payload: Any, message: str) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(DataError, match=message):
        read_python_batch(path)


def test_garbage_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(DataError, match=str(path)):
        read_python_batch(path)
