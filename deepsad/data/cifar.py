"""CIFAR-10 in its binary version (preferred) or its python version, read without trusting pickles.

Binary version (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
``test_batch.bin``, each a sequence of 3073-byte records: 1 label byte, then 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, rows in order) — exactly ``(3, 32, 32)`` in C order.

Python version (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
each a Python 2 pickle of a dict with ``data`` ((N, 3072) uint8) and ``labels`` (list of int).
A pickle can run any code it names, so these files are read only through
:class:`_RestrictedUnpickler`, which admits the few numpy globals needed to rebuild an array and
refuses everything else *before* calling it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.errors import DataError

BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
BIN_TEST = "test_batch.bin"
PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PY_TEST = "test_batch"

_RECORD = 1 + 3 * 32 * 32


def _numpy_reconstruct() -> Any:
    # numpy 2 moved the implementation to numpy._core; old pickles (like CIFAR's) name numpy.core,
    # which numpy 2 only keeps as a deprecated alias. Resolve both names to the real function.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, strings and numbers — nothing else.

    Every global a pickle refers to (the only way a pickle can reach callable code) goes through
    :meth:`find_class`; anything outside the allow-list raises ``pickle.UnpicklingError`` before
    it is looked up, so it is never imported or called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing to load a persistent id")


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch through the restricted unpickler.

    Returns:
        ``x`` uint8 ``(N, 3, 32, 32)`` and ``y`` int64 ``(N,)``.

    Raises:
        DataError: naming ``path`` if the pickle refers to anything but numpy array reconstruction
            (the payload is never executed), is malformed, or does not hold ``data``/``labels`` of
            the right shapes.
    """
    try:
        with path.open("rb") as f:
            # latin1 turns Python 2 byte strings into str, which numpy accepts for array data.
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: unsafe or malformed pickle: {e}; only numpy arrays are admitted "
            "(the binary version cifar-10-batches-bin/ needs no unpickling)"
        ) from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(obj).__name__}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be an (N, 3072) uint8 array")
    if not isinstance(labels, list | np.ndarray):
        raise DataError(f"{path}: 'labels' must be a list of integers")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'labels' must be a list of integers ({e})") from e
    if y.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {y.shape[0]} labels")
    _check_labels(path, y)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), y


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes).

    Returns:
        ``x`` uint8 ``(N, 3, 32, 32)`` and ``y`` int64 ``(N,)``.

    Raises:
        DataError: naming ``path`` if it is empty, not a whole number of records, or has labels
            outside 0..9.
    """
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {_RECORD}-byte CIFAR-10 record"
        )
    records = raw.reshape(-1, _RECORD)
    y = records[:, 0].astype(np.int64)
    _check_labels(path, y)
    return np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32), y


def _check_labels(path: Path, y: np.ndarray) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        bad = int(y[(y < 0) | (y > 9)][0])
        raise DataError(f"{path}: label {bad} is outside 0..9")


def _assemble(
    files: Mapping[str, Path],
    train: tuple[str, ...],
    test: str,
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]],
) -> Dataset:
    xs, ys = zip(*(read(files[k]) for k in train), strict=True)
    x_test, y_test = read(files[test])
    return Dataset(
        name="cifar10",
        kind="image",
        x_train=np.concatenate(xs),
        y_train=np.concatenate(ys),
        x_test=x_test,
        y_test=y_test,
        source=str(files[test].parent),
    )


def read_cifar_binary(files: Mapping[str, Path]) -> Dataset:
    """CIFAR-10 from the binary version: ``x`` uint8 ``(N, 3, 32, 32)``, 50k train / 10k test.

    Args:
        files: a path for each of :data:`BIN_TRAIN` and :data:`BIN_TEST`.

    Raises:
        DataError: a batch is malformed (see :func:`read_binary_batch`).
    """
    return _assemble(files, BIN_TRAIN, BIN_TEST, read_binary_batch)


def read_cifar_python(files: Mapping[str, Path]) -> Dataset:
    """CIFAR-10 from the python version, via the restricted unpickler; shapes as the binary one.

    Args:
        files: a path for each of :data:`PY_TRAIN` and :data:`PY_TEST`.

    Raises:
        DataError: a batch refers to a non-numpy global or is malformed (see
            :func:`read_python_batch`).
    """
    return _assemble(files, PY_TRAIN, PY_TEST, read_python_batch)
