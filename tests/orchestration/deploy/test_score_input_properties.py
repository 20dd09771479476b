"""Property tests of `deepsad score`'s input reader (issue 12): whatever the bytes or the table, the
reader gives an array that fits the model's input spec or one clean DataError — never another
exception, never a hang (pytest-timeout kills a hang; nothing here asserts a duration)."""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deepsad.deploy import InputSpec, is_header_row
from deepsad.errors import DataError
from orchestration.cli.deploy import read_input

pytestmark = pytest.mark.timeout(300)

TABULAR = InputSpec("tabular", (3,))
IMAGE = InputSpec("image", (1, 4, 4))
SUFFIXES = (".csv", ".csv.gz", ".npz", ".parquet", ".pq", "-idx3-ubyte", "-idx3-ubyte.gz", ".bin")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read(data: bytes, suffix: str, spec: InputSpec) -> np.ndarray | None:
    """read_input on ``data`` saved as ``input<suffix>``: the array, or None after a clean DataError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"input{suffix}"
        path.write_bytes(data)
        try:
            x = read_input(path, spec)
        except DataError as e:
            message = str(e)
            assert message and "\n" not in message, message
            return None
    assert isinstance(x, np.ndarray) and x.dtype == np.dtype(spec.dtype)
    assert x.ndim == 1 + len(spec.shape) and x.shape[1:] == spec.shape
    if spec.kind == "tabular":
        assert np.isfinite(x).all()
    return x


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES), image=st.booleans())
def test_any_bytes(data: bytes, suffix: str, image: bool) -> None:
    _read(data, suffix, IMAGE if image else TABULAR)


def _valid_files() -> dict[str, bytes]:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    images = (np.arange(2 * 16) % 256).astype(np.uint8).reshape(2, 1, 4, 4)
    npz = io.BytesIO()
    np.savez_compressed(npz, X=x)
    parquet = io.BytesIO()
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), parquet)
    idx = bytes([0, 0, 8, 4, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 4]) + images.tobytes()
    text = "a,b,c\n" + "\n".join(",".join(repr(v) for v in row) for row in x) + "\n"
    return {
        ".csv": text.encode(),
        ".csv.gz": gzip.compress(text.encode()),
        ".npz": npz.getvalue(),
        ".parquet": parquet.getvalue(),
        "-idx3-ubyte": idx,
        "-idx3-ubyte.gz": gzip.compress(idx),
    }


VALID = _valid_files()


@SETTINGS
@given(
    suffix=st.sampled_from(sorted(VALID)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
)
def test_corrupted_valid_files(suffix: str, edits: list[tuple[int, int]], cut: int | None) -> None:
    """Valid files of every format with bytes changed and/or cut short: deeper than random bytes get."""
    data = bytearray(VALID[suffix])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    spec = IMAGE if "idx" in suffix else TABULAR
    _read(bytes(data), suffix, spec)


_NPZ_DTYPES = [np.dtype(d) for d in ("u1", "i8", "f2", "f4", "f8", "?", "c8", "U3", "S2", "M8[s]")] + [
    np.dtype([("a", "<f8")])
]


@SETTINGS
@given(
    arrays=st.dictionaries(
        st.sampled_from(["X", "y", "x", "X.npy"]),
        hnp.arrays(
            dtype=st.sampled_from(_NPZ_DTYPES),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
        ),
        max_size=3,
    ),
    compressed=st.booleans(),
    image=st.booleans(),
)
def test_any_npz(arrays: dict[str, np.ndarray], compressed: bool, image: bool) -> None:
    buf = io.BytesIO()
    save: Any = np.savez_compressed if compressed else np.savez
    save(buf, **arrays)
    _read(buf.getvalue(), ".npz", IMAGE if image else TABULAR)


def test_npz_oddities() -> None:
    """A .npy under an .npz name, an encrypted-looking / unsupported zip member, a pickled X."""
    npy = io.BytesIO()
    np.save(npy, np.zeros((2, 3)))
    assert _read(npy.getvalue(), ".npz", TABULAR) is None
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000, 3), }"
    for member in (
        b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header,  # 240 TB claimed, none there
        b"\x93NUMPY\x01\x00\x10\x00" + header,  # a header cut short: numpy raises tokenize.TokenError
    ):
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as f:
            f.writestr("X.npy", member)
        assert _read(z.getvalue(), ".npz", TABULAR) is None
    raw = bytearray(z.getvalue())
    raw[raw.find(b"PK\x03\x04") + 8] = 99  # an unknown compression method
    assert _read(bytes(raw), ".npz", TABULAR) is None
    pickled = io.BytesIO()
    np.savez(pickled, X=np.array([object()], dtype=object))
    assert _read(pickled.getvalue(), ".npz", TABULAR) is None


_cells = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e308", "1e999", "0x10", "1_000", '"q"', "label", "y", "é"]),
    st.text(max_size=4),
)


@SETTINGS
@given(rows=st.lists(st.lists(_cells, min_size=1, max_size=5), min_size=1, max_size=6))
def test_any_small_csv_table(rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    x = _read(out.getvalue().encode("utf-8"), ".csv", TABULAR)
    if x is not None:
        assert x.shape[0] <= len(rows)


_columns = st.sampled_from(
    [
        pa.array([1, 2, 3], pa.int64()),
        pa.array([1.5, None, 3.0], pa.float64()),
        pa.array([0.5, 1.5, 2.5], pa.float16()),
        pa.array([True, False, True]),
        pa.array([None, None, None], pa.null()),
        pa.array(["a", "b", "c"]),
        pa.array([1, 2, 3], pa.uint64()),
        pa.array([1, 2, 3], pa.int8()).dictionary_encode(),
        pa.array([[1], [2], [3]]),
        pa.array([1, 2, 3], pa.timestamp("s")),
        pa.array([1, 2, 3], pa.decimal128(5, 1)),
        pa.array([1e308, -1e308, 0.0]),
    ]
)


@SETTINGS
@given(
    columns=st.lists(st.tuples(st.sampled_from(["a", "a", "b", "label", "0", "1", "2", " Y "]), _columns), max_size=5),
    image=st.booleans(),
)
def test_any_small_parquet_table(columns: list[tuple[str, pa.Array]], image: bool) -> None:
    table = pa.Table.from_arrays([c for _, c in columns], names=[n for n, _ in columns]) if columns else pa.table({})
    buf = io.BytesIO()
    try:
        pq.write_table(table, buf)
    except (pa.ArrowException, ValueError):
        assume(False)  # a table Parquet cannot hold is not an input anyone can give
    _read(buf.getvalue(), ".parquet", IMAGE if image else TABULAR)


# --------------------------------------------------------------------------------------- CSV headers


@SETTINGS
@given(
    x=hnp.arrays(
        np.float64,
        shape=st.tuples(st.integers(1, 6), st.just(3)),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    ),
    header=st.sampled_from(["pandas", "names", "none", "names+label"]),
)
def test_csv_rows_are_the_data_rows_whatever_the_header(x: np.ndarray, header: str) -> None:
    """A header row is never scored (pandas writes `0,1,2` for an unnamed frame) and no data row is
    ever taken for a header: the rows read are exactly the rows written."""
    pd = pytest.importorskip("pandas")
    assume(not (header == "none" and list(x[0]) == [0.0, 1.0, 2.0]))  # the documented ambiguity
    frame = pd.DataFrame(x)
    if header in ("names", "names+label"):
        frame.columns = ["f0", "f1", "f2"]
    if header == "names+label":
        frame["label"] = 1
    text = frame.to_csv(index=False, header=header != "none")
    got = _read(text.encode(), ".csv", TABULAR)
    assert got is not None
    np.testing.assert_array_equal(got, x)


def test_header_rule() -> None:
    assert is_header_row([str(i) for i in range(64)])  # pandas' to_csv(index=False)
    assert is_header_row(["a", "1"]) and is_header_row(["px0", "", "label"])
    assert not is_header_row(["0", "1", "3"]) and not is_header_row(["1", "2", "3"])
    assert not is_header_row(["1.5", "", "3"])  # a missing value is not a header
    assert not is_header_row(["", ""]) and not is_header_row(["0.0", "1.0"])
