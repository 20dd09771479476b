"""The official files of MNIST, Fashion-MNIST and CIFAR-10, and how a file on disk is recognised.

MNIST and Fashion-MNIST use the same file names, shapes and format, so a file's name says nothing
about which set it holds: only its content does. Each official file is known here by the MD5 of its
content (of the gunzipped content for ``.gz`` files — mirrors recompress them, so only the content
is stable) and its size in bytes. A file found where a data set's file should be is then:

* ``verified`` — it is that very official file;
* ``foreign`` — it is another official file: another data set's (MNIST's ``train-images`` where
  Fashion-MNIST's should be) or another file of the same set (the test images named as the training
  images). The loaders skip it and, if nothing else is found, refuse with one line naming the file and
  what it is;
* ``damaged`` — the official file's exact size but another checksum: a damaged copy, or other data
  of exactly the official shape under the official set's name. Refused (after the reader has had its
  say, so a format error is reported as such); a user's own data of that shape loads as an ``.npz``
  file under its own name;
* ``unverified`` — any other content: a user's own files in the official format (a subset, another
  size). They load; ``deepsad data check`` reports them as unverified. So do files of which no
  checksum is published (the CIFAR-10 *binary* batches: only the archive's and the python batches'
  checksums are).

Hashing a file costs one pass over it (about 0.3 s for MNIST's training images); results are cached
in-process by (path, device, inode, size, modification time), so a process that loads a set again
does not hash again. The cache is keyed by the file's identity on disk, so a file that is replaced
or modified is hashed anew.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deepsad.errors import DataError

__all__ = [
    "OFFICIAL_FILES",
    "TITLES",
    "Identity",
    "OfficialFile",
    "clear_cache",
    "content_digest",
    "identify",
    "official_md5s",
]

Status = Literal["verified", "foreign", "damaged", "unverified"]

# Registry name -> how messages name the set.
TITLES: dict[str, str] = {"mnist": "MNIST", "fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


@dataclass(frozen=True)
class OfficialFile:
    """One official file.

    Attributes:
        dataset: the registry name (``"mnist"``).
        key: the file's name without ``.gz`` — the key its layout reads it under.
        md5: hex MD5 of the content (gunzipped for ``.gz`` files).
        size: the content's size in bytes, or None where it is not recorded here.
    """

    dataset: str
    key: str
    md5: str
    size: int | None = None


def _idx(dataset: str, md5s: tuple[str, str, str, str]) -> tuple[OfficialFile, ...]:
    # The four IDX files have the same shapes in MNIST and Fashion-MNIST (60k/10k × 28×28).
    sizes = {
        "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
        "train-labels-idx1-ubyte": 8 + 60000,
        "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
        "t10k-labels-idx1-ubyte": 8 + 10000,
    }
    return tuple(
        OfficialFile(dataset, key, md5, size) for (key, size), md5 in zip(sizes.items(), md5s, strict=True)
    )


# MD5s as published by the sets' homes (and by torchvision for the CIFAR-10 python batches);
# ../shared/data/README.md lists the IDX ones too.
OFFICIAL_FILES: tuple[OfficialFile, ...] = (
    *_idx(
        "mnist",
        (
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    ),
    *_idx(
        "fmnist",
        (
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    ),
    OfficialFile("cifar10", "data_batch_1", "c99cafc152244af753f735de768cd75f"),
    OfficialFile("cifar10", "data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    OfficialFile("cifar10", "data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    OfficialFile("cifar10", "data_batch_4", "634d18415352ddfa80567beed471001a"),
    OfficialFile("cifar10", "data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    OfficialFile("cifar10", "test_batch", "40351d587109b95175f43aff81a1287e"),
)


def official_md5s(dataset: str) -> dict[str, str]:
    """``{key: md5}`` of the official files of ``dataset`` (empty for sets not listed)."""
    return {f.key: f.md5 for f in OFFICIAL_FILES if f.dataset == dataset}


@dataclass(frozen=True)
class Identity:
    """What a file found for ``dataset``'s ``key`` turned out to be.

    Attributes:
        path: the file.
        status: ``verified``, ``foreign``, ``damaged`` or ``unverified`` (see the module docstring).
        reason: one line for messages (empty when verified), naming the file.
    """

    path: Path
    status: Status
    reason: str = ""

    @property
    def admitted(self) -> bool:
        """Whether a loader may use the file (a damaged one is refused only after reading)."""
        return self.status != "foreign"


_CHUNK = 1 << 20
_cache: dict[tuple[str, int, int, int, int], tuple[str, int]] = {}
_cache_lock = threading.Lock()


def content_digest(path: Path) -> tuple[str, int]:
    """``(md5 hex, size in bytes)`` of the content of ``path`` (gunzipped if it ends in ``.gz``).

    Cached in-process by the file's path, device, inode, size and modification time.

    Raises:
        DataError: naming ``path`` when it cannot be read or is not valid gzip.
    """
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    # usedforsecurity=False: the sources publish MD5, which FIPS builds refuse otherwise. MD5 only
    # tells honest files apart here; it is not a defence against a crafted one.
    h = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    result = (h.hexdigest(), size)
    with _cache_lock:
        _cache[key] = result
    return result


def _name(f: OfficialFile) -> str:
    return f"{TITLES.get(f.dataset, f.dataset)}'s {f.key}"


def identify(dataset: str, key: str, path: Path) -> Identity:
    """Recognise the file found at ``path`` for ``dataset``'s file ``key`` by its content's checksum.

    A file that cannot be read or decompressed is ``unverified`` here: the reader reports the
    problem when it loads the file.
    """
    try:
        md5, size = content_digest(path)
    except DataError as e:
        return Identity(path, "unverified", f"{e} (not checked)")
    title = TITLES.get(dataset, dataset)
    expected = next((f for f in OFFICIAL_FILES if (f.dataset, f.key) == (dataset, key)), None)
    if expected is not None and expected.md5 == md5:
        return Identity(path, "verified")
    other = next((f for f in OFFICIAL_FILES if f.md5 == md5), None)
    if other is not None:
        whose = f"not {title}'s" if other.dataset != dataset else f"not its {key}"
        return Identity(path, "foreign", f"{path} is {_name(other)} (recognised by its checksum), {whose}")
    if expected is None:
        return Identity(path, "unverified", f"{path}: no published checksum for {title}'s {key}")
    if expected.size is not None and expected.size == size:
        return Identity(
            path,
            "damaged",
            f"{path} has the size of {title}'s official {key} but not its checksum (md5 of the content "
            f"{md5}, expected {expected.md5})",
        )
    return Identity(path, "unverified", f"{path}: matches no official {title} file (your own data?)")


def clear_cache() -> None:
    """Forget every cached checksum (tests; a long-lived process that wants to re-hash)."""
    with _cache_lock:
        _cache.clear()
