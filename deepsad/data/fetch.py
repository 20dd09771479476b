"""Download data sets from their canonical homes with checksum checks, and report what a directory holds.

Only sets with a canonical download *and* a published checksum are fetchable: MNIST,
Fashion-MNIST, CIFAR-10 (binary version) and the raw UCI Arrhythmia file. Downloads use the
standard library only. Every file is written to a temporary name in its target directory and
renamed into place only after its checksum matched, so a failed or tampered download leaves
nothing behind. Files already present and verified are not downloaded again.

A mirror (``--mirror`` or ``DEEPSAD_DATA_MIRROR``) replaces the canonical base URL: a file is then
fetched from ``{mirror}/{subdir}/{filename}``, with ``subdir`` the folder it lands in under the
target directory (``mnist``, ``fashion-mnist``, ``uci``; the CIFAR-10 archive sits at the mirror's
root because it unpacks into its own folder). ``file://`` mirrors work too.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from deepsad.data.archive import extract_tar_safely
from deepsad.data.official import Identity, official_md5s
from deepsad.data.sources import DATASETS, resolve_name
from deepsad.errors import ConfigError, DataError, IntegrityError

MIRROR_ENV = "DEEPSAD_DATA_MIRROR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file to download.

    Attributes:
        filename: its name at the source and on disk.
        url: its canonical URL.
        subdir: the folder under the target directory it is written to (``""`` = the target).
        algorithm: ``"md5"`` or ``"sha256"``.
        digest: the expected hex digest.
        of_decompressed: the digest is of the gunzipped content — mirrors recompress ``.gz``
            files, so only the content is stable.
        extract_to: for a ``.tar.gz`` archive, the folder it unpacks into (it is then deleted);
            ``expect`` lists the files that must be there afterwards, with their sizes in bytes.
    """

    filename: str
    url: str
    subdir: str
    algorithm: str
    digest: str
    of_decompressed: bool = False
    extract_to: str = ""
    expect: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.algorithm not in ("md5", "sha256"):
            raise ValueError(f"{self.filename}: unsupported checksum {self.algorithm!r}")


def _idx_files(base: str, subdir: str, md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(f"{stem}.gz", f"{base}{stem}.gz", subdir, "md5", md5, of_decompressed=True)
        for stem, md5 in md5s.items()
    )


MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FMNIST_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_RECORDS_BYTES = 10000 * 3073

# name -> the files `deepsad data fetch name` downloads. IDX MD5s are of the decompressed files
# (deepsad.data.official holds them: the loaders recognise the same files by them).
REMOTE: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _idx_files(MNIST_BASE, "mnist", official_md5s("mnist")),
    "fmnist": _idx_files(FMNIST_BASE, "fashion-mnist", official_md5s("fmnist")),
    "cifar10": (
        RemoteFile(
            "cifar-10-binary.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "",
            "md5",
            "c32a1d4ab5d03f1284b67883e8d87530",
            extract_to="cifar-10-batches-bin",
            expect=tuple(
                (f, _CIFAR_RECORDS_BYTES)
                for f in (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
            ),
        ),
    ),
    "arrhythmia": (
        RemoteFile(
            "arrhythmia.data",
            "https://archive.ics.uci.edu/ml/machine-learning-databases/arrhythmia/arrhythmia.data",
            "uci",
            "sha256",
            "a7f0f4ca289a4c58b5ed85a9adb793189acd38425828ce3dfbb70adb45f30169",
        ),
    ),
}


def file_digest(path: Path, algorithm: str, *, decompress: bool = False) -> str:
    """Hex digest of ``path`` (of its gunzipped content if ``decompress``).

    Raises:
        IntegrityError: ``decompress`` and the file is not valid gzip.
        OSError: the file cannot be read.
    """
    # usedforsecurity=False: the sources publish MD5, which FIPS builds refuse otherwise.
    h = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with gzip.open(path, "rb") if decompress else path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IntegrityError(f"not a valid gzip file ({e})") from e
    return h.hexdigest()


def _verified(path: Path, rf: RemoteFile, *, decompress: bool) -> bool:
    """Whether an existing file matches ``rf``'s checksum (unreadable or corrupt means no)."""
    try:
        return path.is_file() and file_digest(path, rf.algorithm, decompress=decompress) == rf.digest
    except (OSError, IntegrityError):
        return False


def _url(rf: RemoteFile, mirror: str | None) -> str:
    if not mirror:
        return rf.url
    parts = [mirror.rstrip("/"), *([rf.subdir] if rf.subdir else []), rf.filename]
    return "/".join(parts)


def _download(name: str, url: str, dest_dir: Path, timeout: float) -> Path:
    """Stream ``url`` into a new temporary file in ``dest_dir``; the caller renames or deletes it."""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    except OSError as e:
        raise DataError(f"{name}: cannot write in {dest_dir}: {e}") from e
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "deepsad-sweeps"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{name}: download of {url} failed: {e}; check the network, or use a mirror "
            f"(--mirror URL or {MIRROR_ENV})"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _verify_download(name: str, rf: RemoteFile, url: str, tmp: Path) -> None:
    """Raise IntegrityError unless the downloaded ``tmp`` matches ``rf``'s checksum."""
    try:
        actual = file_digest(tmp, rf.algorithm, decompress=rf.of_decompressed)
    except IntegrityError as e:
        raise IntegrityError(f"{name}: {rf.filename} from {url}: {e}; nothing was saved") from e
    if actual != rf.digest:
        what = " (of the decompressed content)" if rf.of_decompressed else ""
        raise IntegrityError(
            f"{name}: checksum mismatch for {rf.filename} from {url}: expected {rf.algorithm} "
            f"{rf.digest}{what}, got {actual}; nothing was saved"
        )


def _fetch_file(name: str, rf: RemoteFile, to: Path, mirror: str | None, timeout: float) -> list[Path]:
    dest_dir = to / rf.subdir if rf.subdir else to
    dest = dest_dir / rf.filename
    if _verified(dest, rf, decompress=rf.of_decompressed):
        return [dest]
    # The loader also accepts the decompressed file; if that is there and verified, keep it.
    raw = dest.with_suffix("") if rf.of_decompressed else None
    if raw is not None and _verified(raw, rf, decompress=False):
        return [raw]
    url = _url(rf, mirror)
    tmp = _download(name, url, dest_dir, timeout)
    try:
        _verify_download(name, rf, url, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return [dest]


def _archive_complete(rf: RemoteFile, to: Path) -> list[Path] | None:
    paths = [to / rf.extract_to / f for f, _ in rf.expect]
    ok = all(p.is_file() and p.stat().st_size == size for p, (_, size) in zip(paths, rf.expect, strict=True))
    return paths if ok else None


def _fetch_archive(name: str, rf: RemoteFile, to: Path, mirror: str | None, timeout: float) -> list[Path]:
    done = _archive_complete(rf, to)
    if done is not None:
        return done
    url = _url(rf, mirror)
    tmp = _download(name, url, to, timeout)
    try:
        _verify_download(name, rf, url, tmp)
        extract_tar_safely(tmp, to, label=f"{name}: {rf.filename}")
    finally:
        tmp.unlink(missing_ok=True)
    done = _archive_complete(rf, to)
    if done is None:
        sizes = ", ".join(f"{f} ({s} bytes)" for f, s in rf.expect)
        raise DataError(f"{name}: {rf.filename} did not unpack to {to / rf.extract_to}: {sizes}")
    return done


def fetch(name: str, to: str | Path, *, mirror: str | None = None, timeout: float = 60) -> list[Path]:
    """Download and verify the files of data set ``name`` into ``to`` (created if needed).

    Files land where :func:`~deepsad.data.sources.load_dataset` looks: ``to/mnist/``,
    ``to/fashion-mnist/``, ``to/cifar-10-batches-bin/``, ``to/uci/``. Files already present and
    verified are kept without downloading.

    Args:
        name: a registry name or alias.
        to: the data directory.
        mirror: a base URL replacing the canonical homes (default: ``$DEEPSAD_DATA_MIRROR``).
        timeout: seconds to wait on a stalled connection.

    Returns:
        the paths of the data set's files (empty for scikit-learn sets, which need none).

    Raises:
        ConfigError: unknown name, or a mirror that is not an http(s) or file URL.
        DataError: the set has no verifiable download (the message says where to get it and where
            to put it), a download failed, or an archive is unsafe.
        IntegrityError: a downloaded file does not match its checksum; nothing is saved.
    """
    key = resolve_name(name)
    info = DATASETS[key]
    if info.builtin is not None:
        return []
    to = Path(to).expanduser()
    if not info.fetchable or key not in REMOTE:
        raise DataError(f"{key}: there is no verifiable canonical download; {info.how_to_get(to)}")
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror and urllib.parse.urlsplit(mirror).scheme not in ("http", "https", "file"):
        raise ConfigError(f"mirror {mirror!r} must be an http://, https:// or file:// URL")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{key}: cannot create {to}: {e}") from e
    paths: list[Path] = []
    for rf in REMOTE[key]:
        fetch_one = _fetch_archive if rf.extract_to else _fetch_file
        paths.extend(fetch_one(key, rf, to, mirror, timeout))
    return paths


@dataclass(frozen=True)
class DatasetStatus:
    """What a data directory holds of one data set.

    Files are found, not read; those of MNIST, Fashion-MNIST and CIFAR-10 are checksummed (see
    :mod:`deepsad.data.official`), so another data set's official files do not count as present.

    Attributes:
        name: the registry name.
        present: whether some layout is complete (always true for scikit-learn sets) and none of
            its files is a damaged official file.
        layout: the complete layout's label (``"IDX"``, ``"UCI raw"``, ``"scikit-learn"``), or None.
        found: the files found for that layout.
        missing: for an absent set, one line per layout: the missing files and where it looked, or
            the file that is another data set's (or a damaged copy) and what it is.
        hint: for an absent set, how to get it (``deepsad data fetch ...`` or where to download).
        checksums: for a present set with known official files: ``"verified"`` (every file is the
            official one) or ``"unverified"``; ``""`` for other sets.
        notes: for an unverified set, one line per file that is not verified, saying why.
    """

    name: str
    present: bool
    layout: str | None
    found: tuple[Path, ...]
    missing: tuple[str, ...]
    hint: str
    checksums: str = ""
    notes: tuple[str, ...] = ()


def check(data_dir: str | Path) -> list[DatasetStatus]:
    """Report, for every registry entry, whether ``data_dir`` holds its files and where.

    Raises:
        DataError: ``data_dir`` is not a directory.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist (create it with `deepsad data fetch NAME --to {root}`)"
        )
    statuses: list[DatasetStatus] = []
    for info in DATASETS.values():
        if info.builtin is not None:
            statuses.append(DatasetStatus(info.name, True, "scikit-learn", (), (), ""))
            continue
        searched = info.locate(root)
        best = searched[0]
        ids = [best.identities[f.key] for f in best.layout.files if f.key in best.identities]
        damaged = [i.reason for i in ids if i.status == "damaged"]
        if best.complete and not damaged:
            found = tuple(best.found[f.key] for f in best.layout.files)
            checksums = "" if info.judge is None else _checksums(ids)
            notes = tuple(i.reason for i in ids if i.status != "verified")
            statuses.append(
                DatasetStatus(info.name, True, best.layout.label, found, (), "", checksums, notes)
            )
        else:
            rejected = [r.reason for loc in searched for r in loc.rejected]
            if len(rejected) > 1:
                rejected = [f"{rejected[0]} (and {len(rejected) - 1} more such file(s))"]
            missing = tuple(
                [*damaged, *rejected, *(loc.describe_missing() for loc in searched if loc.missing)]
            )
            statuses.append(DatasetStatus(info.name, False, None, (), missing, info.how_to_get(root)))
    return statuses


def _checksums(ids: list[Identity]) -> str:
    return "verified" if all(i.status == "verified" for i in ids) else "unverified"
