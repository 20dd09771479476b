"""ODDS outlier-detection benchmarks: the ODDS ``.mat`` files, and rebuilds of two from raw UCI files.

ODDS (Rayana, 2016, https://odds.cs.stonybrook.edu/) ships each set as a MATLAB v5 file with
``X`` (n, d) and ``y`` (n, 1), 1 = outlier. Deep SAD uses six of them. ``arrhythmia`` and
``cardio`` can be rebuilt exactly from the raw UCI files (rules in :func:`rebuild_arrhythmia` and
:func:`rebuild_cardio`). Every result is checked against the published size in
:data:`ODDS_SHAPES`, so a wrong or damaged file cannot pass for the benchmark.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.errors import DataError

# name -> (rows, features, outliers), as published by ODDS.
ODDS_SHAPES: dict[str, tuple[int, int, int]] = {
    "arrhythmia": (452, 274, 66),
    "cardio": (1831, 21, 176),
    "satellite": (6435, 36, 2036),
    "satimage-2": (5803, 36, 71),
    "shuttle": (49097, 9, 3511),
    "thyroid": (3772, 6, 93),
}

# UCI Arrhythmia classes that ODDS counts as outliers (the rare arrhythmia types).
ARRHYTHMIA_OUTLIER_CLASSES: tuple[int, ...] = (3, 4, 5, 7, 8, 9, 14, 15)

# The 21 ODDS cardio features, in order. The UCI sheet has AC..DP twice: raw counts first, then the
# per-second rates that ODDS uses; CARDIO_RATE_FEATURES are the ones to take from the second copy.
CARDIO_FEATURES: tuple[str, ...] = (
    "LB", "AC", "FM", "UC", "DL", "DS", "DP", "ASTV", "MSTV", "ALTV", "MLTV",
    "Width", "Min", "Max", "Nmax", "Nzeros", "Mode", "Mean", "Median", "Variance", "Tendency",
)  # fmt: skip
CARDIO_RATE_FEATURES: frozenset[str] = frozenset({"AC", "FM", "UC", "DL", "DS", "DP"})


def _finish(name: str, path: Path, x: np.ndarray, y: np.ndarray) -> Dataset:
    """Check the published size, then wrap as a tabular Dataset (no test split)."""
    n, d, outliers = ODDS_SHAPES[name]
    got = (x.shape[0], x.shape[1] if x.ndim == 2 else -1, int(y.sum()))
    if got != (n, d, outliers):
        raise DataError(
            f"{name}: {path} gives {got[0]}×{got[1]} with {got[2]} outliers, "
            f"expected {n}×{d} with {outliers} (is it the ODDS {name} data?)"
        )
    return Dataset(
        name=name, kind="tabular", x_train=x, y_train=y, x_test=None, y_test=None, source=str(path)
    )


def read_odds_mat(name: str, path: Path) -> Dataset:
    """Read an ODDS ``.mat`` file (MATLAB v5: ``X`` (n, d), ``y`` (n, 1) with 1 = outlier).

    Returns:
        a tabular Dataset: ``x`` float64 ``(n, d)``, ``y`` int64 ``(n,)`` in {0, 1}, no test split.

    Raises:
        DataError: naming ``path`` when it is not a readable MATLAB v4/v5 file (v7.3 is HDF5 and
            not supported), lacks ``X`` or ``y``, has labels other than 0/1, non-finite values, or
            a size other than the published one.
    """
    # scipy is imported here: it is only needed for .mat files and costs ~0.3 s to import.
    import scipy.io
    import scipy.sparse

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as e:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DataError(f"{name}: {path}: MATLAB v7.3 files are not supported; save it as v5 ({e})") from e
    except (OSError, ValueError, TypeError, EOFError) as e:
        raise DataError(f"{name}: {path}: not a readable MATLAB file ({e})") from e
    if "X" not in mat or "y" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{name}: {path}: expected variables X and y, found {keys}")
    raw_x = mat["X"].toarray() if scipy.sparse.issparse(mat["X"]) else mat["X"]
    try:
        x = np.asarray(raw_x, dtype=np.float64)
        y_raw = np.asarray(mat["y"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: {path}: X and y must be numeric ({e})") from e
    if x.ndim != 2 or y_raw.shape[0] != x.shape[0]:
        raise DataError(f"{name}: {path}: X is {x.shape} but y has {y_raw.shape[0]} entries")
    if not np.isin(y_raw, (0.0, 1.0)).all():
        bad = y_raw[~np.isin(y_raw, (0.0, 1.0))][0]
        raise DataError(f"{name}: {path}: y must be 0 (normal) or 1 (outlier), found {bad:g}")
    _check_finite(name, path, x)
    return _finish(name, path, x, y_raw.astype(np.int64))


def _check_finite(name: str, path: Path, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{name}: {path}: non-finite value (NaN or inf) at row {row}, column {col}")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """CSV rows with their 1-based line numbers, skipping rows that are entirely blank."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV: {e}") from e
    return [(i, row) for i, row in rows if any(row)]


def _number(name: str, path: Path, line: int, col: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        what = "missing value" if text == "" else f"{text!r} is not a number"
        raise DataError(f"{name}: {path}: line {line}, column {col + 1}: {what}") from None


def rebuild_arrhythmia(path: Path) -> Dataset:
    """Rebuild ODDS ``arrhythmia`` from the raw UCI ``arrhythmia.data``.

    The raw file is CSV without header, ``?`` for missing values, 279 features and the class
    (1..16) last. ODDS drops the 5 features that have missing values (274 left) and calls classes
    3, 4, 5, 7, 8, 9, 14, 15 outliers: 452 rows, 66 outliers.

    Returns:
        a tabular Dataset: ``x`` float64 ``(452, 274)``, ``y`` int64 in {0, 1}, no test split.

    Raises:
        DataError: naming ``path`` and the line for ragged rows, non-numeric cells or classes
            outside 1..16, or when the result is not 452×274 with 66 outliers.
    """
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"arrhythmia: {path} is empty")
    width = len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"arrhythmia: {path}: line {line} has {len(row)} fields, expected {width}")
        values[r] = [
            np.nan if c == "?" else _number("arrhythmia", path, line, j, c) for j, c in enumerate(row)
        ]
    features, classes = values[:, :-1], values[:, -1]
    if np.isnan(classes).any() or not np.isin(classes, np.arange(1, 17)).all():
        line = rows[int(np.flatnonzero(~np.isin(classes, np.arange(1, 17)))[0])][0]
        raise DataError(f"arrhythmia: {path}: line {line}: class must be an integer in 1..16")
    complete = ~np.isnan(features).any(axis=0)
    y = np.isin(classes, ARRHYTHMIA_OUTLIER_CLASSES).astype(np.int64)
    return _finish("arrhythmia", path, features[:, complete], y)


def _cardio_columns(path: Path, header: list[str]) -> tuple[list[int], int]:
    """Indices of the 21 ODDS features (rates from the second AC..DP block) and of NSP."""
    columns: list[int] = []
    for feat in CARDIO_FEATURES:
        hits = [j for j, h in enumerate(header) if h == feat]
        if feat in CARDIO_RATE_FEATURES:
            if f"{feat}.1" in header:  # a pandas export names the second copy "AC.1"
                hits = [header.index(f"{feat}.1")]
            elif len(hits) == 2:
                hits = hits[1:]
            else:
                raise DataError(
                    f"cardio: {path}: expected column {feat} twice (raw counts, then per-second rates), "
                    f"found it {len(hits)} time(s)"
                )
        if len(hits) != 1:
            raise DataError(f"cardio: {path}: expected one column {feat} in the header, found {len(hits)}")
        columns.append(hits[0])
    if header.count("NSP") != 1:
        raise DataError(f"cardio: {path}: expected one column NSP in the header, found {header.count('NSP')}")
    return columns, header.index("NSP")


def rebuild_cardio(path: Path) -> Dataset:
    """Rebuild ODDS ``cardio`` from the raw UCI Cardiotocography sheet saved as ``ctg.csv``.

    The CSV has a header in which AC, FM, UC, DL, DS, DP appear twice (raw counts, then per-second
    rates) and empty spacer columns. ODDS keeps 21 features (:data:`CARDIO_FEATURES`, using the
    per-second rates) and the rows with NSP 1 (normal) or 3 (pathologic = outlier), dropping NSP 2
    (suspect): 1831 rows, 176 outliers. Blank rows are skipped.

    Returns:
        a tabular Dataset: ``x`` float64 ``(1831, 21)``, ``y`` int64 in {0, 1}, no test split.

    Raises:
        DataError: naming ``path`` (and the line) for a header without the needed columns, a row
            that is too short or holds a non-number, an NSP other than 1..3, or a result that is not
            1831×21 with 176 outliers.
    """
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"cardio: {path} is empty")
    columns, nsp_col = _cardio_columns(path, rows[0][1])
    needed = max([*columns, nsp_col]) + 1
    xs: list[list[float]] = []
    ys: list[int] = []
    for line, row in rows[1:]:
        if len(row) < needed:
            raise DataError(f"cardio: {path}: line {line} has {len(row)} fields, expected at least {needed}")
        nsp = _number("cardio", path, line, nsp_col, row[nsp_col])
        if nsp not in (1.0, 2.0, 3.0):
            raise DataError(f"cardio: {path}: line {line}: NSP must be 1, 2 or 3, got {row[nsp_col]!r}")
        if nsp == 2.0:
            continue
        xs.append([_number("cardio", path, line, j, row[j]) for j in columns])
        ys.append(int(nsp == 3.0))
    x = np.asarray(xs, dtype=np.float64).reshape(len(xs), len(columns))
    _check_finite("cardio", path, x)
    return _finish("cardio", path, x, np.asarray(ys, dtype=np.int64))
