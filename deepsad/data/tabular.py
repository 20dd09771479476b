"""Tabular data from a user's file (``.npz`` or ``.csv``) and the small scikit-learn sets.

User files load as ``Dataset(name="custom")``. Labels are integer class labels; which classes are
normal is decided later by the protocol, as for any other set.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepsad.data.dataset import Dataset, Kind
from deepsad.errors import DataError

# Header names recognised as the label column of a CSV file (case-insensitive), in priority order.
CSV_LABEL_COLUMNS: tuple[str, ...] = ("y", "label", "class")


def load_file(path: str | Path) -> Dataset:
    """Load a user's data file as ``Dataset(name="custom")`` with no test split.

    ``.npz``: arrays ``X`` and ``y`` (and optionally ``X_test`` and ``y_test``). ``X`` of shape
    ``(N, D)`` is tabular (float64); ``(N, C, H, W)`` uint8 is an image set (``(N, H, W)`` uint8
    gets ``C = 1``). Object arrays are refused (they would need unpickling).
    ``.csv``: one row per sample, numeric cells, header optional. The label column is the one named
    ``y``, ``label`` or ``class`` (case-insensitive) if the header has one, else the last column.

    Raises:
        DataError: naming the file when it is missing or unreadable, lacks ``X``/``y``, holds
            labels that are not integers, or a non-finite/missing/non-numeric value (with its row
            and column).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p)
    if suffix == ".csv":
        return _load_csv(p)
    raise DataError(f"{p}: unsupported file type {p.suffix!r} (expected .npz with X and y, or .csv)")


def _labels(path: Path, y: np.ndarray, what: str = "y") -> np.ndarray:
    if y.ndim == 2 and 1 in y.shape:  # a column or row vector, as MATLAB-minded tools save it
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{path}: {what} must be 1-D, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise DataError(f"{path}: {what} must hold integer class labels, got dtype {y.dtype}")


def _features(path: Path, x: np.ndarray, what: str = "X") -> tuple[np.ndarray, Kind]:
    """Return ``(x, kind)``: tabular float64 (N, D) or image uint8 (N, C, H, W)."""
    if x.ndim == 2:
        if x.dtype.kind not in "iubf":
            raise DataError(f"{path}: {what} must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float64)
        _check_finite(path, x, what)
        return x, "tabular"
    if x.ndim in (3, 4) and x.dtype == np.uint8:
        return (x[:, None] if x.ndim == 3 else x), "image"
    raise DataError(
        f"{path}: {what} must be (N, D) numbers or (N, C, H, W) uint8 images, got {x.shape} {x.dtype}"
    )


def _check_finite(path: Path, x: np.ndarray, what: str, lines: list[int] | None = None) -> None:
    if np.isfinite(x).all():
        return
    row, col = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
    where = f"row {row}" if lines is None else f"row {row} (line {lines[row]})"
    raise DataError(f"{path}: {what} has a non-finite value (NaN or inf) at {where}, column {col}")


def _load_npz(path: Path) -> Dataset:
    try:
        # allow_pickle=False: an object array would be unpickled, i.e. could run code.
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{path}: cannot load ({e}); object arrays are not accepted") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: expected arrays X and y, found {sorted(arrays)}")
    x, kind = _features(path, arrays["X"])
    y = _labels(path, arrays["y"])
    x_test = y_test = None
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: X_test and y_test must be given together")
    if "X_test" in arrays:
        x_test, test_kind = _features(path, arrays["X_test"], "X_test")
        y_test = _labels(path, arrays["y_test"], "y_test")
        if test_kind != kind or x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: X_test {x_test.shape} does not match X {x.shape}")
    for what, a, b in (("X", x, y), ("X_test", x_test, y_test)):
        if a is not None and b is not None and a.shape[0] != b.shape[0]:
            raise DataError(f"{path}: {what} has {a.shape[0]} rows but its labels have {b.shape[0]}")
    return Dataset(
        name="custom", kind=kind, x_train=x, y_train=y, x_test=x_test, y_test=y_test, source=str(path)
    )


def is_number(text: str) -> bool:
    """Whether a CSV cell parses as a float (a header row has cells that do not)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_header_row(cells: Sequence[str]) -> bool:
    """Whether the first row of a CSV file of numeric features is a header (never data).

    It is one when some non-empty cell is not a number (``px0,px1,label``), or when its cells are
    exactly the column positions ``0, 1, ..., n-1`` — the names pandas gives the columns of an
    unnamed frame, so ``DataFrame(x).to_csv(index=False)`` writes them as its first line. An empty
    cell alone does not make a header (it is a missing value of a data row, refused later with its
    row and column). A genuine first data row that reads exactly ``0,1,...,n-1`` needs a header
    line above it. Used by training (:func:`load_file`) and scoring (``deepsad score``) alike.
    """
    stripped = [c.strip() for c in cells]
    if any(c and not is_number(c) for c in stripped):
        return True
    return bool(stripped) and stripped == [str(i) for i in range(len(stripped))]


def _load_csv(path: Path) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, [c.strip() for c in r]) for i, r in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV: {e}") from e
    rows = [(i, r) for i, r in rows if any(r)]
    if not rows:
        raise DataError(f"{path}: no data rows")
    header: list[str] | None = None
    if is_header_row(rows[0][1]):
        header = rows[0][1]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    width = len(header) if header is not None else len(rows[0][1])
    if width < 2:
        raise DataError(
            f"{path}: need at least one feature column and a label column, found {width} column(s)"
        )
    label_col = width - 1
    if header is not None:
        lowered = [h.lower() for h in header]
        label_col = next((lowered.index(n) for n in CSV_LABEL_COLUMNS if n in lowered), width - 1)
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[r, j] = float(cell)
            except ValueError:
                what = "missing value" if cell == "" else f"{cell!r} is not a number"
                name = f" ({header[j]!r})" if header is not None else ""
                raise DataError(f"{path}: line {line}, column {j}{name}: {what}") from None
    lines = [line for line, _ in rows]
    y = values[:, label_col]
    x = np.delete(values, label_col, axis=1)
    if not np.isfinite(y).all() or not (y == np.round(y)).all():
        bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
        raise DataError(f"{path}: line {lines[bad]}: label {y[bad]:g} is not an integer class")
    _check_finite(path, x, "data", lines)
    return Dataset(
        name="custom",
        kind="tabular",
        x_train=x,
        y_train=y.astype(np.int64),
        x_test=None,
        y_test=None,
        source=str(path),
    )


def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits as a tabular set: ``x`` float64 ``(1797, 64)`` (0..16), ``y`` 0..9.

    No test split (the protocol makes one); needs no files.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # sklearn is slow to import

    bunch = sk_load_digits()
    return Dataset(
        name="digits",
        kind="tabular",
        x_train=np.asarray(bunch.data, dtype=np.float64),
        y_train=np.asarray(bunch.target, dtype=np.int64),
        x_test=None,
        y_test=None,
        source="sklearn.datasets.load_digits",
    )


def load_breast_cancer() -> Dataset:
    """scikit-learn's Wisconsin breast cancer set: ``x`` float64 ``(569, 30)``, ``y`` in {0, 1}.

    Labels are flipped from scikit-learn's coding (0 = malignant, 1 = benign) so that
    **0 = benign = normal** and **1 = malignant = outlier** (212 of 569), as the other outlier
    sets. No test split; needs no files.
    """
    from sklearn.datasets import load_breast_cancer as sk_load_breast_cancer

    bunch = sk_load_breast_cancer()
    return Dataset(
        name="breast_cancer",
        kind="tabular",
        x_train=np.asarray(bunch.data, dtype=np.float64),
        y_train=(np.asarray(bunch.target) == 0).astype(np.int64),
        x_test=None,
        y_test=None,
        source="sklearn.datasets.load_breast_cancer",
    )
