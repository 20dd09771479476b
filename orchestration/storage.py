"""One small storage interface over a local directory (now) and ``s3://bucket/prefix`` (next).

Everything goes through a :mod:`pyarrow.fs` file system, so the very same object can be handed to Ray
Tune (``RunConfig(storage_path=storage.root, storage_filesystem=storage.filesystem)``) and to
:mod:`pyarrow.dataset` readers.

Keys are ``/``-separated relative names (``storage.path("results", "trials/x.parquet")``); every
segment is checked, so no key can climb out of the root (``..``, absolute paths, NUL, backslashes and
percent-encoded dots are refused with :class:`~deepsad.errors.StorageError`).

Atomicity: :meth:`Storage.write_bytes` writes a temp file next to the target and renames it over the
target (local), or issues a single PUT (S3), so a reader sees the old or the new file, never a partial
one. Temp names start with ``.`` so that Parquet dataset readers (which skip ``.``/``_`` files) and
:meth:`Storage.list` never see them. :meth:`Storage.upload_dir` writes ``meta.json`` files last: a bundle
becomes visible (to :func:`deepsad.checkpoint.load_bundle` and the AE cache) only once it is complete.

Every error is a one-line :class:`StorageError` naming the URI (never credentials).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from deepsad.errors import StorageError

META_FILE = "meta.json"
_TMP_MARK = ".tmp-"
_CHUNK = 1 << 20


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
    return (text.strip().splitlines() or [type(e).__name__])[0]


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
    # Slot for the S3 issue: build pafs.S3FileSystem from the environment/URI options, return the
    # credential-free "s3://bucket/prefix" as uri and "bucket/prefix" as root.
    raise StorageError("s3 storage arrives with the S3 issue")


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
            ``s3://bucket/prefix``; never contains credentials.
        filesystem: the pyarrow file system (picklable, so a Storage can travel to Ray workers).
        root: the root as a path for ``filesystem`` (absolute local path, or ``bucket/prefix``).
    """

    uri: str
    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    root: str

    @classmethod
    def from_uri(cls, uri: str | os.PathLike[str]) -> Storage:
        """A local path (made absolute) or ``s3://bucket/prefix``. Raises StorageError on an unknown
        scheme (and, until the S3 issue lands, on ``s3://``)."""
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

    # ---------------------------------------------------------------------------------------- queries

    def _info(self, key: str) -> pafs.FileInfo:
        try:
            return self.filesystem.get_file_info(self._fs_path(key))
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot stat ({_reason(e)})") from e

    def exists(self, *parts: str) -> bool:
        """Whether a file or directory exists at ``parts``."""
        return self._info(self._key(parts)).type != pafs.FileType.NotFound

    def list(self, *parts: str) -> list[str]:
        """Sorted names directly under ``parts`` ([] if it does not exist); in-flight temp files are hidden."""
        key = self._key(parts)
        selector = pafs.FileSelector(self._fs_path(key), allow_not_found=True, recursive=False)
        try:
            infos = self.filesystem.get_file_info(selector)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot list ({_reason(e)})") from e
        return sorted(n for n in (posixpath.basename(i.path) for i in infos) if not _is_tmp_name(n))

    def _walk_files(self, key: str) -> builtins.list[str]:
        """Keys of all files under ``key``, relative to it, exactly as the file system lists them."""
        base = self._fs_path(key).rstrip("/")
        selector = pafs.FileSelector(base, allow_not_found=False, recursive=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot list ({_reason(e)})") from e
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if not info.path.startswith(base + "/"):
                raise StorageError(f"storage {self._where(key)}: listing returned a foreign path")
            out.append(info.path[len(base) + 1 :])
        return out

    # ---------------------------------------------------------------------------------------- reading

    def read_bytes(self, *parts: str) -> bytes:
        """The whole content of the file at ``parts``. Raises StorageError if missing or unreadable."""
        key = self._key(parts)
        try:
            with self.filesystem.open_input_stream(self._fs_path(key)) as fh:
                return bytes(fh.read())
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot read ({_reason(e)})") from e

    def download_dir(self, local: Path, *parts: str) -> Path:
        """Copy the directory ``parts`` into ``local`` (created); returns ``local``.

        Every listed key must stay inside ``local``: a key with ``..``, an absolute path, NUL or
        encoded-dot tricks (possible in S3 listings) raises StorageError before anything is written.
        Temp files of in-flight writes are skipped. Raises StorageError if ``parts`` does not exist.
        """
        key = self._key(parts)
        local = Path(local)
        if self._info(key).type != pafs.FileType.Directory:
            raise StorageError(f"storage {self._where(key)}: no such directory")
        files = self._walk_files(key)
        safe = [(rel, safe_key(rel, what=f"key under {self._where(key)}")) for rel in files]
        root = local.resolve()
        plan = []
        for rel, clean in safe:
            if _is_tmp_name(posixpath.basename(clean)):
                continue
            target = (root / clean).resolve()
            if not target.is_relative_to(root):  # a symlink already in `local` could still redirect
                raise StorageError(f"storage {self._where(key)}: key {rel!r} escapes {local}")
            plan.append((rel, target))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{local}: cannot create directory ({_reason(e)})") from e
        for rel, target in plan:
            src = f"{key}/{rel}" if key else rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.filesystem.open_input_stream(self._fs_path(src)) as fin, open(target, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        fout.write(chunk)
            except (OSError, pa.ArrowException) as e:
                raise StorageError(
                    f"storage {self._where(src)}: cannot download to {target} ({_reason(e)})"
                ) from e
        return local

    # ---------------------------------------------------------------------------------------- writing

    def _put(self, key: str, src: IO[bytes]) -> None:
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
            self.filesystem.create_dir(parent, recursive=True)
            with self.filesystem.open_output_stream(target) as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot write ({_reason(e)})") from e

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomically create or replace the file ``parts`` with ``data`` (parents are created)."""
        self._put(self._key(parts), io.BytesIO(data))

    def delete(self, *parts: str) -> None:
        """Delete the file or directory (recursively) at ``parts``; a missing one is fine."""
        key = self._key(parts)
        path = self._fs_path(key)
        try:
            kind = self.filesystem.get_file_info(path).type
            if kind == pafs.FileType.Directory:
                self.filesystem.delete_dir(path)
            elif kind != pafs.FileType.NotFound:
                self.filesystem.delete_file(path)
        except FileNotFoundError:
            return  # deleted by someone else in the meantime: the goal is reached
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self._where(key)}: cannot delete ({_reason(e)})") from e

    def upload_dir(self, local: Path, *parts: str) -> None:
        """Copy the local directory ``local`` to ``parts``, writing every ``meta.json`` last.

        A bundle thus becomes visible only when complete. If ``parts`` already holds a ``meta.json`` it is
        removed first, so while the new files replace the old ones readers see an absent (torn) bundle,
        never new tensors with an old meta.json. Files already there and not in ``local`` are kept.
        Raises StorageError if ``local`` is not a directory, contains a symlink, or a write fails.
        """
        key = self._key(parts)
        local = Path(local)
        if not local.is_dir():
            raise StorageError(f"{local}: not a directory (upload to {self._where(key)})")
        files: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(local, followlinks=False):
            for name in sorted(dirnames) + sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink():
                    raise StorageError(f"{p}: refusing to upload a symlink (to {self._where(key)})")
            for name in sorted(filenames):
                p = Path(dirpath) / name
                files.append((p.relative_to(local).as_posix(), p))
        # Data files first; then meta.json files, deepest first, so the top-level one is the very last.
        files.sort(key=lambda f: (posixpath.basename(f[0]) == META_FILE, -f[0].count("/"), f[0]))
        if key and self.exists(key, META_FILE):
            self.delete(key, META_FILE)
        for rel, p in files:
            dest = safe_key(f"{key}/{rel}" if key else rel)
            try:
                with open(p, "rb") as fh:
                    self._put(dest, fh)
            except OSError as e:
                raise StorageError(
                    f"{p}: cannot read for upload to {self._where(dest)} ({_reason(e)})"
                ) from e

    def check_writable(self) -> None:
        """Create the root if needed, then write, read back and delete a probe file.

        Called before any Ray process starts so that a bad location fails in a second, not after the
        first trial. Raises StorageError "storage <uri>: not writable (<reason>)".
        """
        probe = _tmp_name("probe")
        try:
            self.filesystem.create_dir(self.root, recursive=True)
            payload = uuid.uuid4().bytes
            self.write_bytes(payload, probe)
            if self.read_bytes(probe) != payload:
                raise StorageError("probe read back differs")
            self.delete(probe)
        except StorageError as e:
            reason = _reason(e.__cause__) if e.__cause__ is not None else str(e)
            raise StorageError(f"storage {self.uri}: not writable ({reason})") from e
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {self.uri}: not writable ({_reason(e)})") from e


def _remove_quietly(path: str) -> None:
    # It may never have been created; the original error is what matters.
    with contextlib.suppress(OSError):
        os.unlink(path)
