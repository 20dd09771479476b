"""Unpacking a downloaded ``.tar.gz`` without letting it write outside its target directory.

``tarfile.extractall`` trusts member names and links, so a crafted archive can overwrite any file
the user can write (``../../.bashrc``, ``/etc/...``, a symlink followed by a file through it). Here
every member is checked before anything is written: only regular files and directories, relative
names without ``..``, resolving inside the target. Files are written to a temporary name and
renamed into place, so an interrupted unpack leaves no half-written file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from deepsad.errors import DataError


def _check_member(member: tarfile.TarInfo, root: Path, label: str) -> Path:
    """The resolved destination of ``member``, or DataError if it is unsafe."""
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{label}: refusing archive member {member.name!r}: not a regular file or directory")
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts or "\\" in member.name:
        raise DataError(f"{label}: refusing archive member {member.name!r}: path leaves the target directory")
    dest = (root / name).resolve()
    if dest != root and not dest.is_relative_to(root):
        raise DataError(f"{label}: refusing archive member {member.name!r}: resolves outside {root}")
    return dest


def extract_tar_safely(archive: Path, to: Path, *, label: str) -> list[Path]:
    """Unpack the (optionally gzip-compressed) tar ``archive`` into ``to``.

    Args:
        archive: the tar file.
        to: the target directory (must exist).
        label: how messages name the archive (``"cifar10: cifar-10-binary.tar.gz"``).

    Returns:
        the regular files written.

    Raises:
        DataError: the archive is unreadable, or a member is a link, device or other special
            file, has an absolute name or ``..``, or would land outside ``to``; in that case
            nothing is written.
    """
    root = to.resolve()
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            plan = [(m, _check_member(m, root, label)) for m in members]  # all checks before any write
            written: list[Path] = []
            for member, dest in plan:
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(member)
                if src is None:  # cannot happen for a regular file; guard for the type checker
                    raise DataError(f"{label}: cannot read archive member {member.name!r}")
                fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".extract-", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp_name, dest)
                except BaseException:
                    Path(tmp_name).unlink(missing_ok=True)
                    raise
                written.append(dest)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{label}: cannot unpack: {e}") from e
    return written
