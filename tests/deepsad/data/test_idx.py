"""The IDX reader: round trips, every kind of corruption, and the MNIST directory layouts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from deepsad.data.idx import MNIST_FILES, read_idx, read_mnist_like
from deepsad.data.sources import load_dataset
from deepsad.errors import DataError


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``a`` as IDX with element type ``code`` (big-endian)."""
    dtype = {0x08: "u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(dtype).tobytes()


def write_mnist(directory: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = True) -> None:
    """Four tiny MNIST-style files in ``directory``; image i is filled with value i."""
    directory.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{part}-images-idx3-ubyte", images), (f"{part}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_uint8(tmp_path: Path, gz: bool) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(idx_bytes(a)) if gz else idx_bytes(a))
    out = read_idx(path)
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.uint8 and out.flags.writeable


def test_big_endian_types_come_back_native(tmp_path: Path) -> None:
    a = np.array([[-5, 70000], [1, 2]], dtype=np.int32)
    (tmp_path / "a.idx").write_bytes(idx_bytes(a, 0x0C))
    out = read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(out, a)
    assert out.dtype.isnative
    f = np.array([0.5, -2.25], dtype=np.float32)
    (tmp_path / "f.idx").write_bytes(idx_bytes(f, 0x0D))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), f)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "truncated IDX header"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad magic 0x12340801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown element type code 0x07"),
        (b"\x00\x00\x08\x00", "bad magic 0x00000800"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header: expected 8 bytes of dimensions, got 4"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02\x03", "expected 5 bytes got 3"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x01\x02\x03", "expected 2 bytes got 3"),
    ],
    ids=["short-magic", "bad-magic", "bad-type", "zero-dims", "short-dims", "truncated", "trailing"],
)
def test_corrupt_files_name_the_file_and_the_problem(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_payload_inside_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]))
    with pytest.raises(DataError, match=r"expected 7840 bytes got 7740"):
        read_idx(path)


def test_broken_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    noise = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    path.write_bytes(gzip.compress(idx_bytes(noise))[:3000])
    with pytest.raises(DataError, match=r"not a valid gzip file"):
        read_idx(path)
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"not a valid gzip file"):
        read_idx(path)


def test_huge_claimed_shape_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x08\x04" + b"\xff\xff\xff\xff" * 4)
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_read_mnist_like_shapes(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    files = {k: tmp_path / f"{k}.gz" for k in MNIST_FILES}
    ds = read_mnist_like("mnist", files)
    assert ds.kind == "image" and ds.x_train.shape == (6, 1, 28, 28) and ds.x_test is not None
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (4, 1, 28, 28)
    assert int(ds.x_train[3, 0, 5, 5]) == 3


def test_images_and_labels_must_agree(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match=r"has 4 images but .* has 3 labels"):
        read_mnist_like("mnist", {k: tmp_path / k for k in MNIST_FILES})
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2, 11], np.uint8)))
    with pytest.raises(DataError, match=r"label 11 is outside 0..9"):
        read_mnist_like("mnist", {k: tmp_path / k for k in MNIST_FILES})


@pytest.mark.parametrize(
    ("name", "sub"),
    [
        ("mnist", ""),
        ("mnist", "mnist"),
        ("mnist", "MNIST"),
        ("mnist", "MNIST/raw"),
        ("fmnist", "fashion-mnist"),
        ("fmnist", "FashionMNIST"),
        ("fmnist", "fmnist"),
        ("fashion-mnist", "FashionMNIST/raw"),
    ],
)
def test_layouts_are_found(tmp_path: Path, name: str, sub: str) -> None:
    write_mnist(tmp_path / sub if sub else tmp_path, gz=sub.endswith("raw"))
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28)
    assert ds.name in ("mnist", "fmnist")


def test_raw_preferred_over_gz_and_mixing_is_fine(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    write_mnist(tmp_path, n_train=8, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape[0] == 8 and ds.x_test is not None and ds.x_test.shape[0] == 4
