"""The IDX file format (MNIST, Fashion-MNIST), raw or gzip-compressed, and the MNIST-style readers.

An IDX file is a 4-byte magic number ``0x0000TTNN`` (``TT`` = element type code, ``NN`` = number of
dimensions), then ``NN`` big-endian uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.errors import DataError

# Element type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# The four files of an MNIST-style set; the readers get them under these keys.
MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int: ...


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed on the fly) into a writable native-endian array.

    Returns:
        the array with the file's shape, e.g. ``(60000, 28, 28)`` uint8 for MNIST training images.

    Raises:
        DataError: naming ``path`` when the file cannot be read, is not valid gzip, has a bad magic
            number, an unknown type code or a payload length that does not match its dimensions.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as gz:
                return _read_idx_stream(gz, path)
        with path.open("rb") as raw:
            return _read_idx_stream(raw, path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def _read_exact(f: _Readable, buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return how many bytes arrived (fewer only at end of file)."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _read_idx_stream(f: _Readable, path: Path) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: truncated IDX header: expected 4 bytes of magic number, got {len(magic)}")
    code = int.from_bytes(magic, "big")
    if magic[0] != 0 or magic[1] != 0 or magic[3] == 0:
        raise DataError(f"{path}: bad magic 0x{code:08x} (not an IDX file)")
    if magic[2] not in IDX_DTYPES:
        raise DataError(f"{path}: bad magic 0x{code:08x}: unknown element type code 0x{magic[2]:02x}")
    dtype = np.dtype(IDX_DTYPES[magic[2]])
    ndim = magic[3]
    header = f.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: expected {4 * ndim} bytes of dimensions, got {len(header)}"
        )
    dims = tuple(int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    # Read straight into the result: one copy, no per-sample work (60k MNIST images in ~0.3 s).
    try:
        out = np.empty(dims, dtype=dtype)
    except (MemoryError, ValueError) as e:
        raise DataError(
            f"{path}: header claims shape {dims} of {dtype.str}, which cannot be allocated"
        ) from e
    got = _read_exact(f, out.reshape(-1).view(np.uint8).data)
    extra = 0
    if got == expected:
        while chunk := f.read(_CHUNK):
            extra += len(chunk)
    if got != expected or extra:
        raise DataError(
            f"{path}: payload for shape {dims} of {dtype.str} expected {expected} bytes got {got + extra}"
        )
    return out.astype(dtype.newbyteorder("="), copy=False)


def read_mnist_like(name: str, files: Mapping[str, Path]) -> Dataset:
    """Read an MNIST-style set (MNIST, Fashion-MNIST) from its four IDX files.

    Args:
        name: the registry name, used in messages and as ``Dataset.name``.
        files: a path for each key in :data:`MNIST_FILES`.

    Returns:
        an image Dataset: ``x`` uint8 ``(N, 1, 28, 28)``, ``y`` int64 ``(N,)`` in 0..9, with the
        standard 60k/10k train/test split.

    Raises:
        DataError: a file is corrupt, images are not ``(N, 28, 28)`` uint8, labels are not ``(N,)``
            uint8 in 0..9, or images and labels disagree in count.
    """
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("train", "t10k"):
        images_path = files[f"{part}-images-idx3-ubyte"]
        labels_path = files[f"{part}-labels-idx1-ubyte"]
        x = read_idx(images_path)
        y = read_idx(labels_path)
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(
                f"{name}: {images_path}: expected (N, 28, 28) uint8 images, got {x.shape} {x.dtype}"
            )
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DataError(f"{name}: {labels_path}: expected (N,) uint8 labels, got {y.shape} {y.dtype}")
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{name}: {images_path} has {x.shape[0]} images but {labels_path} has {y.shape[0]} labels"
            )
        if y.size and int(y.max()) > 9:
            raise DataError(f"{name}: {labels_path}: label {int(y.max())} is outside 0..9")
        parts[part] = (x[:, None, :, :], y.astype(np.int64))
    return Dataset(
        name=name,
        kind="image",
        x_train=parts["train"][0],
        y_train=parts["train"][1],
        x_test=parts["t10k"][0],
        y_test=parts["t10k"][1],
        source=str(files["train-images-idx3-ubyte"].parent),
    )
