"""One small storage interface over a local directory and ``s3://bucket/prefix``.

Everything goes through a :mod:`pyarrow.fs` file system, so the very same object can be handed to Ray
Tune (``RunConfig(storage_path=storage.root, storage_filesystem=storage.filesystem)``) and to
:mod:`pyarrow.dataset` readers. How ``s3://`` locations are reached (endpoint, region, addressing; the
credentials come from the standard AWS chain only) is described in :mod:`orchestration.store.s3`.

Keys are ``/``-separated relative names (``storage.path("results", "trials/x.parquet")``); every
segment is checked, so no key can climb out of the root (``..``, absolute paths, NUL, backslashes and
percent-encoded dots are refused with :class:`~deepsad.errors.StorageError`).

Atomicity: :meth:`Storage.write_bytes` writes a temp file next to the target and renames it over the
target (local), or completes a single upload stream (S3: the object appears whole or not at all), so a
reader sees the old or the new file, never a partial one. Temp names start with ``.`` so that Parquet
dataset readers (which skip ``.``/``_`` files) and :meth:`Storage.list` never see them.

Directories (checkpoint bundles, AE cache entries) travel with a manifest: :meth:`Storage.upload_dir`
writes every file (``meta.json`` files last), checks the stored sizes, and then writes
``MANIFEST.json`` (``{"version": 1, "files": [{"path", "size", "sha256"}, ...], "created_at"}``) as the
very last object. The manifest is the visibility marker: :meth:`Storage.download_dir` refuses a
directory without one (an upload that died: :class:`IncompleteUploadError`) and verifies every listed
file's size and sha256 (:class:`~deepsad.errors.IntegrityError` naming the key). The same logic runs
on local directories and on S3.

Every error is a one-line :class:`StorageError` naming the URI (never credentials).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from deepsad.errors import IntegrityError, StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.store import s3

META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
MANIFEST_VERSION = 1
_TMP_MARK = ".tmp-"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class IncompleteUploadError(StorageError):
    """A directory has no ``MANIFEST.json``: its upload died, or is still running."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _tmp_name(name: str) -> str:
    return f".{name}{_TMP_MARK}{uuid.uuid4().hex[:16]}"


def _is_tmp_name(name: str) -> bool:
    return name.startswith(".") and _TMP_MARK in name


def _reason(e: BaseException) -> str:
    """A short, single-line reason for a wrapped error (first line only: no dumps, no request headers)."""
    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return s3.scrub((text.strip().splitlines() or [type(e).__name__])[0])


def safe_key(key: str, *, what: str = "key") -> str:
    """Normalise a relative ``/``-separated key and refuse anything that could leave its root.

    Refused (StorageError): empty keys and segments, ``.``/``..`` segments, absolute paths, NUL,
    backslashes, and any of those hidden behind percent-encoding (``%2e%2e``, ``%2f``, double encoding).
    Returns the key with duplicate separators removed, e.g. ``"a//b/"`` -> ``"a/b"``.
    """
    if not isinstance(key, str) or not key:
        raise StorageError(f"invalid storage {what} {key!r}: must be a non-empty string")
    if key.startswith("/"):
        raise StorageError(f"invalid storage {what} {key!r}: must be relative")
    segments = [s for s in key.split("/") if s]
    if not segments:
        raise StorageError(f"invalid storage {what} {key!r}: empty")
    for segment in segments:
        decoded = segment
        # Decode until stable so that "%252e%252e" (double encoding) is caught too.
        for _ in range(8):
            nxt = unquote(decoded)
            if nxt == decoded:
                break
            decoded = nxt
        for form in {segment, decoded}:
            if form in (".", "..") or any(c in form for c in ("\x00", "\\", "/")):
                raise StorageError(f"invalid storage {what} {key!r}: unsafe segment {segment!r}")
    return "/".join(segments)


def _local_uri(path: str) -> tuple[str, pafs.FileSystem, str]:
    # Ray Tune needs an absolute storage path; normpath also removes "a/../b" from the root itself.
    root = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    return root, pafs.LocalFileSystem(), root


def _s3_uri(uri: str) -> tuple[str, pafs.FileSystem, str]:
    # The URI keeps only bucket and prefix; endpoint, region and credentials come from the environment
    # (orchestration.store.s3), so the uri is safe to print and another process can rebuild the same Storage.
    bucket, prefix = s3.parse_uri(uri)
    if prefix:
        prefix = safe_key(prefix, what=f"prefix in s3://{bucket}")
    root = f"{bucket}/{prefix}" if prefix else bucket
    return f"s3://{root}", s3.S3Settings.from_env().filesystem(), root


_SCHEMES: dict[str, Callable[[str], tuple[str, pafs.FileSystem, str]]] = {"s3": _s3_uri}


def _redact(uri: str) -> str:
    """The URI without user info or query (where access keys may travel), for messages."""
    parts = urlsplit(uri)
    if "://" not in uri or not parts.scheme:  # a local path
        return uri
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


@dataclass(frozen=True)
class Storage:
    """A root location on a :mod:`pyarrow.fs` file system; all keys are relative to it.

    Attributes:
        uri: the root as shown to people and written to result rows: an absolute local path or
            ``s3://bucket/prefix``; never contains credentials, endpoint or query.
            ``Storage.from_uri(storage.uri)`` rebuilds it in any process with the same environment.
        filesystem: the pyarrow file system (picklable without credentials, so a Storage can travel
            to Ray workers).
        root: the root as a path for ``filesystem`` (absolute local path, or ``bucket/prefix``).
    """

    uri: str
    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    root: str

    @classmethod
    def from_uri(cls, uri: str | os.PathLike[str]) -> Storage:
        """A local path (made absolute), ``file://path`` or ``s3://bucket/prefix``.

        Raises StorageError on an unknown scheme, an ``s3://`` URI with credentials, a port, a query or
        an invalid bucket, and on malformed S3 settings in the environment (see :mod:`orchestration.store.s3`).
        Nothing is contacted: see :meth:`check_writable`.
        """
        text = os.fspath(uri)
        if not text.strip():
            raise StorageError("storage: empty location")
        # Only "<scheme>://" is a URI: a local directory may well be called "runs:1".
        scheme = urlsplit(text).scheme.lower() if "://" in text else ""
        if scheme == "file":
            parts = urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise StorageError(f"storage {_redact(text)}: file:// URIs must name a local path")
            return cls(*_local_uri(unquote(parts.path)))
        if scheme:
            make = _SCHEMES.get(scheme)
            if make is None:
                known = ", ".join(["local path", "file://", *(f"{s}://" for s in _SCHEMES)])
                raise StorageError(f"storage {_redact(text)}: unsupported scheme {scheme!r} (known: {known})")
            return cls(*make(text))
        return cls(*_local_uri(text))

    def __str__(self) -> str:
        return self.uri

    # ------------------------------------------------------------------------------------------ naming

    def _key(self, parts: tuple[str, ...]) -> str:
        return safe_key("/".join(parts)) if parts else ""

    def _where(self, key: str) -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def _fs_path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Storage:
        """The sub-location ``parts`` (which need not exist yet)."""
        key = self._key(parts)
        return Storage(self._where(key), self.filesystem, self._fs_path(key)) if key else self

    def path(self, *parts: str) -> str:
        """The ``filesystem`` path of the child ``parts`` (the root itself when none)."""
        return self._fs_path(self._key(parts))

    def _why(self, e: BaseException) -> str:
        """A one-line reason for ``e``; on S3 the well-known failures read as such (see s3.explain)."""
        if self.is_local or isinstance(e, StorageError):
            return _reason(e)
        return s3.explain(e, bucket=self._bucket, where=s3.describe_filesystem(self.filesystem))[0]

    @property
    def _bucket(self) -> str:
        return self.root.split("/", 1)[0]

    # ---------------------------------------------------------------------------------------- queries

    def _info(self, key: str) -> pafs.FileInfo:
        try:
            return self.filesystem.get_file_info(self._fs_path(key))
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot stat ({self._why(e)})") from e

    def exists(self, *parts: str) -> bool:
        """Whether a file or directory exists at ``parts``."""
        return self._info(self._key(parts)).type != pafs.FileType.NotFound

    def is_complete(self, *parts: str) -> bool:
        """Whether the directory ``parts`` holds a ``MANIFEST.json``, i.e. an upload of it finished."""
        key = self._key(parts)
        return self._info(f"{key}/{MANIFEST_FILE}" if key else MANIFEST_FILE).type == pafs.FileType.File

    def list(self, *parts: str) -> list[str]:
        """Sorted names directly under ``parts`` ([] if it does not exist); in-flight temp files are hidden."""
        key = self._key(parts)
        selector = pafs.FileSelector(self._fs_path(key), allow_not_found=True, recursive=False)
        try:
            infos = self.filesystem.get_file_info(selector)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot list ({self._why(e)})") from e
        return sorted(n for n in (posixpath.basename(i.path) for i in infos) if not _is_tmp_name(n))

    def _walk(self, key: str) -> dict[str, int]:
        """``{relative key: size}`` of all files under ``key``, exactly as the file system lists them."""
        base = self._fs_path(key).rstrip("/")
        selector = pafs.FileSelector(base, allow_not_found=False, recursive=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot list ({self._why(e)})") from e
        out = {}
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if not info.path.startswith(base + "/"):
                raise StorageError(f"storage {self._where(key)}: listing returned a foreign path")
            out[info.path[len(base) + 1 :]] = int(info.size or 0)
        return out

    def _walk_files(self, key: str) -> builtins.list[str]:
        """Keys of all files under ``key``, relative to it, exactly as the file system lists them."""
        return builtins.list(self._walk(key))

    # ---------------------------------------------------------------------------------------- reading

    def read_bytes(self, *parts: str) -> bytes:
        """The whole content of the file at ``parts``. Raises StorageError if missing or unreadable."""
        key = self._key(parts)
        try:
            with self.filesystem.open_input_stream(self._fs_path(key)) as fh:
                return bytes(fh.read())
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot read ({self._why(e)})") from e

    def download_dir(self, local: Path, *parts: str) -> Path:
        """Copy the directory ``parts`` into ``local`` (created) as its manifest lists it; returns ``local``.

        Every listed key must stay inside ``local``: a key with ``..``, an absolute path, NUL or
        encoded-dot tricks (possible in S3 listings and in a forged manifest) raises StorageError before
        anything is written. Only the files of ``MANIFEST.json`` are copied (not the manifest itself,
        nor temp files or leftovers of older uploads), each verified against the manifest.

        Raises:
            StorageError: ``parts`` does not exist, or a read or local write fails.
            IncompleteUploadError: ``parts`` has no ``MANIFEST.json`` ("incomplete upload").
            IntegrityError: the manifest is malformed, or a listed object is missing or differs in size or
                sha256 (naming its key); files verified before it are left in ``local``.
        """
        key = self._key(parts)
        local = Path(local)
        if self._info(key).type != pafs.FileType.Directory:
            raise StorageError(f"storage {self._where(key)}: no such directory")
        listed = set(self._walk_files(key))
        for rel in sorted(listed):
            safe_key(rel, what=f"key under {self._where(key)}")
        if MANIFEST_FILE not in listed:
            raise IncompleteUploadError(
                f"storage {self._where(key)}: incomplete upload (no {MANIFEST_FILE}; the upload died or is running)"
            )
        entries = self._read_manifest(key)
        root = local.resolve()
        plan = []
        for rel, size, digest in entries:
            target = (root / rel).resolve()
            if not target.is_relative_to(root):  # a symlink already in `local` could still redirect
                raise StorageError(f"storage {self._where(key)}: key {rel!r} escapes {local}")
            plan.append((rel, size, digest, target))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{local}: cannot create directory ({_reason(e)})") from e
        for rel, size, digest, target in plan:
            src = f"{key}/{rel}" if key else rel
            if rel not in listed:
                raise IntegrityError(
                    f"{self._where(src)}: missing (listed in {self._where(key)}/{MANIFEST_FILE})"
                )
            self._fetch_verified(src, size, digest, target)
        return local

    def _fetch_verified(self, src: str, size: int, digest: str, target: Path) -> None:
        """Stream ``src`` into ``target`` via a temp file that replaces it only once size and sha256 match."""
        tmp = target.parent / _tmp_name(target.name)
        sha, n = hashlib.sha256(), 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.filesystem.open_input_stream(self._fs_path(src)) as fin, open(tmp, "xb") as fout:
                while chunk := fin.read(_CHUNK):
                    sha.update(chunk)
                    n += len(chunk)
                    fout.write(chunk)
            if n != size:
                raise IntegrityError(
                    f"{self._where(src)}: size mismatch: expected {size} bytes ({MANIFEST_FILE}), actual {n}"
                )
            if sha.hexdigest() != digest:
                raise IntegrityError(
                    f"{self._where(src)}: sha256 mismatch: expected {digest} ({MANIFEST_FILE}), "
                    f"actual {sha.hexdigest()}"
                )
            os.replace(tmp, target)
        except IntegrityError:
            _remove_quietly(str(tmp))
            raise
        except (OSError, pa.ArrowException) as e:
            _remove_quietly(str(tmp))
            raise StorageError(
                f"storage {self._where(src)}: cannot download to {target} ({self._why(e)})"
            ) from e

    def _read_manifest(self, key: str) -> builtins.list[tuple[str, int, str]]:
        """``[(path, size, sha256), ...]`` of the manifest of ``key``; IntegrityError if malformed."""
        name = f"{key}/{MANIFEST_FILE}" if key else MANIFEST_FILE
        where = self._where(name)
        # bounded: a manifest comes from storage that others may write (size, depth, strictness)
        record = load_json_bounded(self.read_bytes(name), f"{where}: not a valid manifest", error=IntegrityError)
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, builtins.list) or record.get("version") != MANIFEST_VERSION:
            raise IntegrityError(
                f"{where}: not a valid manifest (expected version {MANIFEST_VERSION} and a files list)"
            )
        out, seen = [], set()
        for i, f in enumerate(files):
            ok = isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
            size = f.get("size") if ok else None
            if not ok or not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise IntegrityError(
                    f"{where}: not a valid manifest (files[{i}] needs path, size >= 0, sha256)"
                )
            if not _SHA256.fullmatch(f["sha256"]):
                raise IntegrityError(
                    f"{where}: not a valid manifest (files[{i}].sha256 is not 64 hex digits)"
                )
            rel = safe_key(f["path"], what=f"key in {where}")
            if rel == MANIFEST_FILE or rel in seen:
                raise IntegrityError(
                    f"{where}: not a valid manifest (files[{i}].path {rel!r} repeated or reserved)"
                )
            seen.add(rel)
            out.append((rel, size, f["sha256"]))
        return out

    # ---------------------------------------------------------------------------------------- writing

    def _put(self, key: str, src: _Readable) -> None:
        """Write ``src`` to ``key`` atomically (temp + rename locally, one stream = one object on S3)."""
        if not key:
            raise StorageError(f"storage {self.uri}: cannot write a file at the root itself")
        target = self._fs_path(key)
        parent, name = posixpath.split(target)
        if self.is_local:
            tmp = posixpath.join(parent, _tmp_name(name))
            try:
                os.makedirs(parent, exist_ok=True)
                with open(tmp, "xb") as fh:
                    shutil.copyfileobj(src, fh, _CHUNK)
                    fh.flush()
                    os.fsync(fh.fileno())  # the rename must never expose a file whose data is not on disk
                os.replace(tmp, target)
            except OSError as e:
                _remove_quietly(tmp)
                raise StorageError(f"storage {self._where(key)}: cannot write ({_reason(e)})") from e
            return
        try:
            # No create_dir: S3 has no directories, and markers would cost a request per write.
            with self.filesystem.open_output_stream(target) as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot write ({self._why(e)})") from e

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomically create or replace the file ``parts`` with ``data`` (parents are created)."""
        self._put(self._key(parts), io.BytesIO(data))

    def delete(self, *parts: str) -> None:
        """Delete the file or directory (recursively) at ``parts``; a missing one is fine.

        A directory loses its ``MANIFEST.json`` first, so concurrent readers see an incomplete upload,
        never a half-deleted one.
        """
        key = self._key(parts)
        path = self._fs_path(key)
        try:
            kind = self.filesystem.get_file_info(path).type
            if kind == pafs.FileType.Directory:
                manifest = self._fs_path(f"{key}/{MANIFEST_FILE}" if key else MANIFEST_FILE)
                if self.filesystem.get_file_info(manifest).type == pafs.FileType.File:
                    self.filesystem.delete_file(manifest)
                self.filesystem.delete_dir(path)
            elif kind != pafs.FileType.NotFound:
                self.filesystem.delete_file(path)
        except FileNotFoundError:
            return  # deleted by someone else in the meantime: the goal is reached
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot delete ({self._why(e)})") from e

    def upload_dir(self, local: Path, *parts: str) -> None:
        """Copy the local directory ``local`` to ``parts``: data files, ``meta.json`` files, then the manifest.

        Each file is hashed (sha256) from the very bytes sent. The ``meta.json`` files go after the data
        files (deepest first); then the stored sizes are checked against what was sent; then
        ``MANIFEST.json`` is written last, which makes the directory visible to :meth:`download_dir`. Any
        old ``MANIFEST.json`` and ``meta.json`` at ``parts`` are removed first, so while new files
        replace old ones readers see an incomplete upload, never a mix. Files already there and not in
        ``local`` are kept (and ignored by downloads: they are not in the manifest).

        Raises StorageError if ``local`` is not a directory, contains a symlink or a top-level
        ``MANIFEST.json`` (reserved), or a write fails; IntegrityError if a stored size differs.
        """
        key = self._key(parts)
        files = self._files_to_upload(Path(local), key)
        for hidden in (MANIFEST_FILE, META_FILE):
            at = f"{key}/{hidden}" if key else hidden
            if self.exists(at):
                self.delete(at)
        sent = self._send_files(key, files)
        self._check_stored_sizes(key, sent)
        self._write_manifest(key, sent)

    def _files_to_upload(self, local: Path, key: str) -> builtins.list[tuple[str, Path]]:
        """``[(relative key, path), ...]`` of the files under ``local`` in upload order: data files, then
        ``meta.json`` files deepest first. StorageError if ``local`` is not a directory, or holds a
        symlink or a top-level ``MANIFEST.json``."""
        if not local.is_dir():
            raise StorageError(f"{local}: not a directory (upload to {self._where(key)})")
        files: builtins.list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(local, followlinks=False):
            for name in sorted(dirnames) + sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink():
                    raise StorageError(f"{p}: refusing to upload a symlink (to {self._where(key)})")
            for name in sorted(filenames):
                p = Path(dirpath) / name
                files.append((p.relative_to(local).as_posix(), p))
        if any(rel == MANIFEST_FILE for rel, _ in files):
            raise StorageError(
                f"{local / MANIFEST_FILE}: reserved name, cannot upload (to {self._where(key)})"
            )
        # Data files first; then meta.json files, deepest first, so the top-level one is the last of them.
        files.sort(key=lambda f: (posixpath.basename(f[0]) == META_FILE, -f[0].count("/"), f[0]))
        return files

    def _send_files(self, key: str, files: builtins.list[tuple[str, Path]]) -> dict[str, tuple[int, str]]:
        """Write each file under ``key`` in order; ``{relative key: (size, sha256)}`` of the bytes sent."""
        sent: dict[str, tuple[int, str]] = {}
        for rel, p in files:
            dest = safe_key(f"{key}/{rel}" if key else rel)
            try:
                with open(p, "rb") as fh:
                    reader = _HashingReader(fh)
                    self._put(dest, reader)
            except OSError as e:
                raise StorageError(
                    f"{p}: cannot read for upload to {self._where(dest)} ({_reason(e)})"
                ) from e
            sent[rel] = (reader.size, reader.sha256.hexdigest())
        return sent

    def _check_stored_sizes(self, key: str, sent: dict[str, tuple[int, str]]) -> None:
        """IntegrityError naming the first file under ``key`` whose stored size differs from what was sent."""
        stored = self._walk(key) if sent else {}
        for rel, (size, _) in sent.items():
            if stored.get(rel) != size:
                dest = f"{key}/{rel}" if key else rel
                hint = (
                    ""
                    if self.is_local
                    else " (a server that stores aws-chunked framing? see orchestration.store.s3)"
                )
                raise IntegrityError(
                    f"{self._where(dest)}: stored size {stored.get(rel)} != {size} bytes sent{hint}"
                )

    def _write_manifest(self, key: str, sent: dict[str, tuple[int, str]]) -> None:
        """Write ``MANIFEST.json`` under ``key``, listing ``sent``: the marker that the upload is complete."""
        manifest = {
            "version": MANIFEST_VERSION,
            "files": [
                {"path": rel, "size": size, "sha256": digest} for rel, (size, digest) in sorted(sent.items())
            ],
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        self._put(f"{key}/{MANIFEST_FILE}" if key else MANIFEST_FILE, io.BytesIO(data))

    def check_writable(self) -> None:
        """Make sure the location can be used: create the root if needed (local), check the bucket (S3),
        then write, read back and delete a probe file.

        Called before any Ray process starts so that a bad location fails in a second, not after the
        first trial. Raises StorageError with one line: locally ``storage <uri>: not writable
        (<reason>)``; on S3 ``storage <uri>: bucket 'b' does not exist (endpoint <url>)``,
        ``storage <uri>: access denied — check the AWS credentials (...)``, ``storage <uri>: cannot
        reach endpoint <url> (connection refused)``, else ``storage <uri>: not writable (<reason>)``.
        """
        probe = _tmp_name("probe")
        try:
            if self.is_local:
                self.filesystem.create_dir(self.root, recursive=True)
            elif self.filesystem.get_file_info(self._bucket).type == pafs.FileType.NotFound:
                where = s3.describe_filesystem(self.filesystem)
                raise StorageError(f"storage {self.uri}: bucket {self._bucket!r} does not exist ({where})")
            payload = uuid.uuid4().bytes
            self.write_bytes(payload, probe)
            if self.read_bytes(probe) != payload:
                raise StorageError(f"storage {self.uri}: not writable (probe read back differs)")
            self.delete(probe)
        except StorageError as e:
            if str(e).startswith(f"storage {self.uri}: ") and e.__cause__ is None:
                raise  # already the final message
            raise StorageError(f"storage {self.uri}: {self._writable_reason(e.__cause__ or e)}") from e
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self.uri}: {self._writable_reason(e)}") from e

    def _writable_reason(self, e: BaseException) -> str:
        if not self.is_local and not isinstance(e, StorageError):
            reason, known = s3.explain(e, bucket=self._bucket, where=s3.describe_filesystem(self.filesystem))
            return reason if known else f"not writable ({reason})"
        return f"not writable ({_reason(e) if not isinstance(e, StorageError) else str(e)})"


class _HashingReader:
    """A reader that hashes (sha256) and counts what passes through it: what was sent is what is recorded."""

    def __init__(self, src: _Readable) -> None:
        self._src = src
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._src.read(size)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk


def _remove_quietly(path: str) -> None:
    # It may never have been created; the original error is what matters.
    with contextlib.suppress(OSError):
        os.unlink(path)
