"""ODDS .mat files and the rebuilds of arrhythmia and cardio from the raw UCI files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from deepsad.data import odds
from deepsad.data.sources import DATASETS, load_dataset
from deepsad.errors import DataError


@pytest.fixture
def small_shapes(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int, int]]:
    """Shrink the published sizes so that tests can write small files."""
    shapes = {name: (20, 4, 3) for name in odds.ODDS_SHAPES}
    monkeypatch.setattr(odds, "ODDS_SHAPES", shapes)
    return shapes


def write_mat(
    path: Path, n: int = 20, d: int = 4, outliers: int = 3, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).normal(size=(n, d))
    y = np.zeros((n, 1))
    y[:outliers] = 1
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


@pytest.mark.parametrize("name", ["satellite", "satimage-2", "shuttle", "thyroid", "arrhythmia", "cardio"])
@pytest.mark.parametrize("sub", ["", "odds"])
def test_mat_files(tmp_path: Path, small_shapes: object, name: str, sub: str) -> None:
    x, y = write_mat(tmp_path / sub / f"{name}.mat")
    ds = load_dataset(name, tmp_path)
    assert ds.name == name and ds.kind == "tabular" and ds.x_test is None and ds.y_test is None
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, y.ravel())
    assert ds.classes == (0, 1)


def test_full_size_thyroid_without_patching(tmp_path: Path) -> None:
    write_mat(tmp_path / "odds" / "thyroid.mat", 3772, 6, 93)
    ds = load_dataset("thyroid", tmp_path)
    assert ds.x_train.shape == (3772, 6) and int(ds.y_train.sum()) == 93


@pytest.mark.parametrize(("n", "d", "k"), [(19, 4, 3), (20, 5, 3), (20, 4, 4)])
def test_published_size_is_enforced(tmp_path: Path, small_shapes: object, n: int, d: int, k: int) -> None:
    write_mat(tmp_path / "shuttle.mat", n, d, k)
    with pytest.raises(
        DataError, match=rf"shuttle: .*shuttle.mat gives {n}×{d} with {k} outliers, expected 20×4 with 3"
    ):
        load_dataset("shuttle", tmp_path)


def test_labels_must_be_binary(tmp_path: Path, small_shapes: object) -> None:
    scipy.io.savemat(tmp_path / "thyroid.mat", {"X": np.zeros((20, 4)), "y": np.full((20, 1), 2.0)})
    with pytest.raises(DataError, match=r"y must be 0 .* found 2"):
        load_dataset("thyroid", tmp_path)


def test_missing_variable_and_non_finite(tmp_path: Path, small_shapes: object) -> None:
    scipy.io.savemat(tmp_path / "thyroid.mat", {"data": np.zeros((20, 4))})
    with pytest.raises(DataError, match=r"expected variables X and y, found \['data'\]"):
        load_dataset("thyroid", tmp_path)
    x = np.zeros((20, 4))
    x[7, 2] = np.nan
    scipy.io.savemat(tmp_path / "thyroid.mat", {"X": x, "y": np.zeros((20, 1))})
    with pytest.raises(DataError, match=r"thyroid.mat: non-finite value .* row 7, column 2"):
        load_dataset("thyroid", tmp_path)


def test_not_a_mat_file(tmp_path: Path) -> None:
    (tmp_path / "satellite.mat").write_bytes(b"definitely not MATLAB" * 20)
    with pytest.raises(DataError, match=r"satellite: .*satellite.mat: not a readable MATLAB file"):
        load_dataset("satellite", tmp_path)


def test_missing_mat_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("satimage-2", tmp_path)
    msg = str(e.value)
    assert "satimage-2.mat" in msg and str(tmp_path / "odds") in msg and "odds.cs.stonybrook.edu" in msg


def test_arrhythmia_from_uci(shared_data: Path) -> None:
    ds = load_dataset("arrhythmia", shared_data)
    assert ds.x_train.shape == (452, 274) and int(ds.y_train.sum()) == 66
    assert ds.source.endswith("uci/arrhythmia.data") and ds.x_test is None
    assert np.isfinite(ds.x_train).all()
    # Age is the first raw feature; the first record is a 75-year-old, class 8 (an outlier class).
    assert ds.x_train[0, 0] == 75 and ds.y_train[0] == 1


def test_cardio_from_uci(shared_data: Path) -> None:
    ds = load_dataset("cardio", shared_data)
    assert ds.x_train.shape == (1831, 21) and int(ds.y_train.sum()) == 176
    # The second data row (NSP 1): LB 132, then per-second rates AC 0.006, FM 0, UC 0.006, ...
    np.testing.assert_allclose(ds.x_train[0, :7], [132, 0.006, 0.0, 0.006, 0.003, 0.0, 0.0])
    assert ds.x_train[0, odds.CARDIO_FEATURES.index("Tendency")] == 0


def test_mat_preferred_over_uci(tmp_path: Path, shared_data: Path, small_shapes: object) -> None:
    shutil.copytree(shared_data / "uci", tmp_path / "uci")
    write_mat(tmp_path / "odds" / "cardio.mat")
    assert load_dataset("cardio", tmp_path).x_train.shape == (20, 4)
    assert [layout.label for layout in DATASETS["cardio"].layouts] == ["ODDS .mat", "UCI raw"]


def test_cardio_tolerates_blank_rows_and_pandas_headers(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "uci" / "ctg.csv").read_text().splitlines()
    header = lines[0].split(",")
    seen: set[str] = set()
    for j, h in enumerate(header):  # name the second copies as pandas does
        if h in odds.CARDIO_RATE_FEATURES and h in seen:
            header[j] = f"{h}.1"
        seen.add(h)
    text = "\n".join([",".join(header), *lines[1:], "", ",,,,,,", ""]) + "\n"
    (tmp_path / "ctg.csv").write_text(text)
    reference = load_dataset("cardio", shared_data)
    ds = load_dataset("cardio", tmp_path)
    np.testing.assert_array_equal(ds.x_train, reference.x_train)


def test_cardio_errors_name_the_line(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "uci" / "ctg.csv").read_text().splitlines()
    row = lines[2].split(",")
    row[10] = "abc"
    (tmp_path / "ctg.csv").write_text("\n".join([lines[0], lines[1], ",".join(row)]) + "\n")
    with pytest.raises(DataError, match=r"cardio: .*ctg.csv: line 3, column 11: 'abc' is not a number"):
        load_dataset("cardio", tmp_path)
    (tmp_path / "ctg.csv").write_text(lines[0].replace("NSP", "X") + "\n" + lines[1] + "\n")
    with pytest.raises(DataError, match=r"expected one column NSP"):
        load_dataset("cardio", tmp_path)
    (tmp_path / "ctg.csv").write_text(lines[0].replace("AC,FM,UC,DL,DS,DP,DR", "a,b,c,d,e,f,g", 1) + "\n")
    with pytest.raises(DataError, match=r"expected column AC twice"):
        load_dataset("cardio", tmp_path)


def test_arrhythmia_errors(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "uci" / "arrhythmia.data").read_text().splitlines()
    (tmp_path / "arrhythmia.data").write_text("\n".join([lines[0], lines[1] + ",1"]) + "\n")
    with pytest.raises(DataError, match=r"line 2 has 281 fields, expected 280"):
        load_dataset("arrhythmia", tmp_path)
    (tmp_path / "arrhythmia.data").write_text("\n".join([*lines[:-1], lines[-1].rsplit(",", 1)[0] + ",17"]))
    with pytest.raises(DataError, match=r"line 452: class must be an integer in 1..16"):
        load_dataset("arrhythmia", tmp_path)
    (tmp_path / "arrhythmia.data").write_text("\n".join(lines[:400]) + "\n")
    with pytest.raises(DataError, match=r"gives 400×"):
        load_dataset("arrhythmia", tmp_path)
