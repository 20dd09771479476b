"""User files (.npz, .csv) and the scikit-learn sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepsad.data.sources import load_dataset
from deepsad.data.tabular import load_breast_cancer, load_digits, load_file
from deepsad.errors import DataError


def test_npz_tabular(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    y = np.arange(10) % 2
    np.savez(tmp_path / "d.npz", X=x, y=y)
    ds = load_file(tmp_path / "d.npz")
    assert ds.name == "custom" and ds.kind == "tabular" and ds.x_test is None
    assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train, x)
    assert ds.source == str(tmp_path / "d.npz")


def test_npz_images_column_labels_and_test_split(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", X=x, y=np.array([[0.0], [1.0], [1.0], [0.0]]), X_test=x[:2], y_test=[1, 0])
    ds = load_file(tmp_path / "d.npz")
    assert ds.kind == "image" and ds.x_train.shape == (4, 1, 8, 8)
    assert ds.y_train.tolist() == [0, 1, 1, 0] and ds.y_test is not None and ds.y_test.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((3, 2))}, r"expected arrays X and y, found \['X'\]"),
        ({"X": np.zeros((3, 2)), "y": np.array([0.5, 1, 0])}, "y must hold integer class labels"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, "X has 3 rows but its labels have 4"),
        ({"X": np.zeros((3, 2, 2)), "y": np.zeros(3)}, r"X must be \(N, D\) numbers"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3), "X_test": np.zeros((1, 2))}, "given together"),
        (
            {"X": np.zeros((3, 2)), "y": np.zeros(3), "X_test": np.zeros((1, 5)), "y_test": [0]},
            "does not match",
        ),
    ],
)
def test_npz_problems(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_file(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(e.value)


def test_npz_non_finite_names_file_row_and_column(tmp_path: Path) -> None:
    x = np.zeros((5, 3))
    x[3, 1] = np.inf
    np.savez(tmp_path / "d.npz", X=x, y=np.zeros(5))
    with pytest.raises(
        DataError, match=r"d\.npz: X has a non-finite value \(NaN or inf\) at row 3, column 1"
    ):
        load_file(tmp_path / "d.npz")


def test_npz_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match=r"object arrays are not accepted"):
        load_file(tmp_path / "d.npz")


def test_csv_with_header_and_named_label(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,Label,b\n1,0,2\n3,1,4\n\n5,0,6\n")
    ds = load_file(tmp_path / "d.csv")
    np.testing.assert_array_equal(ds.x_train, [[1, 2], [3, 4], [5, 6]])
    assert ds.y_train.tolist() == [0, 1, 0]


@pytest.mark.parametrize("name", ["y", "class", "CLASS"])
def test_csv_label_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "d.csv").write_text(f"{name},f1,f2\n1,0.5,2\n0,3,4\n")
    assert load_file(tmp_path / "d.csv").y_train.tolist() == [1, 0]


def test_csv_without_header_uses_last_column(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("1.5,2,0\n3,4e-1,1\n")
    ds = load_file(tmp_path / "d.csv")
    np.testing.assert_array_equal(ds.x_train, [[1.5, 2], [3, 0.4]])
    assert ds.y_train.tolist() == [0, 1]


def test_csv_header_written_by_pandas_is_not_a_data_row(tmp_path: Path) -> None:
    """`DataFrame(x).to_csv(index=False)` names the columns 0..n-1: that first line is a header (it was
    once taken for a sample, shifting every row by one)."""
    (tmp_path / "d.csv").write_text("0,1,2\n1.5,2,0\n3,4e-1,1\n")
    ds = load_file(tmp_path / "d.csv")
    np.testing.assert_array_equal(ds.x_train, [[1.5, 2], [3, 0.4]])
    assert ds.y_train.tolist() == [0, 1]


def test_csv_header_without_label_name_uses_last_column(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("f1,f2,target\n1,2,3\n")
    assert load_file(tmp_path / "d.csv").y_train.tolist() == [3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a,b,y\n1,2,0\n1,nan,1\n",
            r"d\.csv: data has a non-finite value \(NaN or inf\) at row 1 \(line 3\), column 1",
        ),
        ("a,b,y\n1,,0\n", r"d\.csv: line 2, column 1 \('b'\): missing value"),
        ("1,2,0\n1,x,1\n", r"line 2, column 1: 'x' is not a number"),
        ("a,b,y\n1,2\n", "line 2 has 2 fields, expected 3"),
        ("a,b,y\n1,2,0.5\n", "label 0.5 is not an integer class"),
        ("a,b,y\n", "no data rows after the header"),
        ("", "no data rows"),
        ("y\n1\n", "need at least one feature column"),
    ],
)
def test_csv_problems(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=message) as e:
        load_file(tmp_path / "d.csv")
    assert str(tmp_path / "d.csv") in str(e.value)


def test_unsupported_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file"):
        load_file(tmp_path / "nope.csv")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'"):
        load_file(tmp_path / "d.txt")
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"d.npz"):
        load_file(tmp_path / "d.npz")


def test_load_dataset_accepts_file_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d.csv").write_text("1,2,0\n3,4,1\n")
    assert load_dataset("d.csv", tmp_path).x_train.shape == (2, 2)
    assert load_dataset(str(tmp_path / "d.csv"), None).x_train.shape == (2, 2)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("d.csv", "/nonexistent").x_train.shape == (2, 2)


def test_digits() -> None:
    ds = load_digits()
    assert ds.kind == "tabular" and ds.x_train.shape == (1797, 64) and ds.x_test is None
    assert ds.classes == tuple(range(10)) and ds.x_train.dtype == np.float64


def test_breast_cancer_benign_is_normal() -> None:
    ds = load_dataset("breast_cancer", None)
    assert ds.x_train.shape == (569, 30) and ds.x_test is None
    # scikit-learn has 357 benign (its class 1) and 212 malignant (its class 0) samples.
    assert int((ds.y_train == 0).sum()) == 357 and int(ds.y_train.sum()) == 212
    assert load_breast_cancer().y_train.tolist() == ds.y_train.tolist()
