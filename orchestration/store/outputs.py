"""Where a command writes: one output rule for every command that writes files (``train``, ``export``,
``score``, ``report``, ``checkpoint pull``).

- An empty path is refused (a shell variable that expanded to nothing must not mean "here").
- A path that does not exist, or an empty directory, is simply written.
- Anything else is replaced only with ``--force``, and ``--force`` only ever replaces what that command
  writes itself: every entry of an output *directory* must be one of the command's own files (its
  ``owns`` patterns, e.g. ``report.md``, ``figures/*.png``); an output *file* must be recognised as the
  command's own output by its content (a score table by its columns). Anything else there — a user's
  notes, a sub-directory of data — makes even ``--force`` refuse, and nothing is touched.
- The output is built in a hidden sibling and appears whole at the end (a directory swapped in by
  rename, a file by ``os.replace``). A command that fails, before or during its work, leaves nothing
  behind: no half-written output, no directories it created on the way.

The checks run twice: :meth:`OutputDir.check` before any work starts (so a bad ``--out`` costs nothing),
and again just before the swap (the directory may have changed during a long run).

Raises :class:`deepsad.errors.ConfigError` (an empty path) or :class:`~deepsad.errors.StorageError`
(everything else), each one line naming the flag and the path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deepsad.errors import ConfigError, StorageError

#: How many foreign entries an error names before "and N more".
_SHOWN = 3


def output_path(raw: str | os.PathLike[str] | None, flag: str) -> Path:
    """``raw`` as a path, refusing an empty one (``--out ""`` must not mean the working directory).

    Raises:
        ConfigError: ``raw`` is empty or only blanks.
    """
    text = "" if raw is None else os.fspath(raw)
    if not text.strip():
        raise ConfigError(f"{flag}: an empty path; name the output explicitly (e.g. {flag} ./out)")
    return Path(text).expanduser()


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, flag: str, what: str) -> None:
    """The nearest existing ancestor of ``path`` is a directory we can create entries in (a probe file is
    created and removed there: ``os.access`` is always true for root)."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise StorageError(f"{flag} {path}: cannot write {what} ({anchor} is not a directory)")
    try:
        with tempfile.NamedTemporaryFile(dir=anchor, prefix=".deepsad-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"{flag} {path}: cannot write {what} ({anchor}: {_reason(e)})") from e


@contextlib.contextmanager
def _made_parents(directory: Path) -> Iterator[None]:
    """Create ``directory`` and its missing parents; on an error, remove those of them still empty."""
    missing = []
    p = directory.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        for d in reversed(missing):
            d.mkdir()
        yield
    except BaseException:
        for d in missing:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@dataclass(frozen=True)
class OutputDir:
    """A directory that one command writes whole (see the module docstring).

    Attributes:
        path: the output directory.
        command: the command's name as typed (``export``, ``checkpoint pull``), for messages.
        flag: the option that named it (``--out``, ``--to``).
        owns: glob patterns of the paths (relative, ``/``-separated) the command writes; a pattern ending
            in ``/**`` owns everything under that directory.
        force: ``--force`` was given.
        what: what is written, for messages ("the report", "the model").
    """

    path: Path
    command: str
    flag: str
    owns: tuple[str, ...]
    force: bool = False
    what: str = "the output"

    def owned(self, rel: str) -> bool:
        """Whether the relative path ``rel`` (a file or a directory) is one the command writes."""
        for pattern in self.owns:
            if pattern.endswith("/**"):
                root = pattern[:-3]
                if rel == root or rel.startswith(root + "/"):
                    return True
            elif fnmatch.fnmatchcase(rel, pattern):
                return True
            elif "/" in pattern and pattern.startswith(rel + "/"):
                return True  # a directory on the way to an owned file (figures/ for figures/*.png)
        return False

    def foreign(self) -> list[str]:
        """The entries of an existing :attr:`path` that the command does not own (links always)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            base = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                full = base / name
                rel = full.relative_to(self.path).as_posix()
                if full.is_symlink() or not self.owned(rel):
                    out.append(rel)
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
        return sorted(out)

    def check(self) -> None:
        """Refuse, before any work, an output this command may not write (see the module docstring).

        Raises:
            StorageError: one line naming the flag, the path and why.
        """
        p = self.path
        if p.is_symlink():
            raise StorageError(f"{self.flag} {p}: is a symbolic link; name the directory itself")
        if p.exists():
            if not p.is_dir():
                raise StorageError(f"{self.flag} {p}: cannot write {self.what} (exists and is not a directory)")
            if any(p.iterdir()):
                if not self.force:
                    raise StorageError(
                        f"{self.flag} {p}: exists and is not empty; refusing to overwrite it (use --force to "
                        f"replace an earlier output of `deepsad {self.command}`)"
                    )
                alien = self.foreign()
                if alien:
                    shown = ", ".join(alien[:_SHOWN]) + (f" and {len(alien) - _SHOWN} more" if len(alien) > _SHOWN else "")
                    raise StorageError(
                        f"{self.flag} {p}: holds {shown}, which `deepsad {self.command}` did not write; --force "
                        f"only replaces its own output: choose another {self.flag} or move those away"
                    )
        _check_creatable(p, self.flag, self.what)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh hidden directory beside :attr:`path` to build the output in; on a normal exit it replaces
        :attr:`path` (checked again first), on an error it is removed with any parents made for it.

        Raises:
            StorageError: the output may no longer be written, or a write failed.
        """
        self.check()
        parent = self.path.absolute().parent
        tmp = parent / f".{self.path.name}.{self.command.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"
        with _made_parents(parent):
            try:
                tmp.mkdir()
            except OSError as e:
                raise StorageError(f"{self.flag} {self.path}: cannot write {self.what} ({_reason(e)})") from e
            try:
                yield tmp
                self.check()
                self._swap(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # a no-op once renamed into place

    def _swap(self, tmp: Path) -> None:
        final = self.path
        try:
            if final.exists():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(final, old)
                try:
                    os.rename(tmp, final)
                except OSError:
                    os.rename(old, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)  # only our own files, as check() proved
            else:
                os.rename(tmp, final)
        except OSError as e:
            raise StorageError(f"{self.flag} {final}: cannot write {self.what} ({_reason(e)})") from e


@dataclass(frozen=True)
class OutputFile:
    """A single file one command writes (``score --out``), replaced only with ``--force`` and only when
    ``is_own`` recognises the existing file as this command's output."""

    path: Path
    command: str
    flag: str
    is_own: Callable[[Path], bool]
    force: bool = False
    what: str = "the output"

    def check(self) -> None:
        """Refuse, before any work, a file this command may not write.

        Raises:
            StorageError: one line naming the flag, the path and why.
        """
        p = self.path
        if p.is_symlink():
            raise StorageError(f"{self.flag} {p}: is a symbolic link; name the file itself")
        if p.is_dir():
            raise StorageError(f"{self.flag} {p}: is a directory; name a file (e.g. {p / 'scores.csv'})")
        if p.exists():
            if not self.force:
                raise StorageError(f"{self.flag} {p}: exists; refusing to overwrite it (use --force)")
            if not self.is_own(p):
                raise StorageError(
                    f"{self.flag} {p}: exists and is not an output of `deepsad {self.command}`; --force only "
                    "replaces its own output"
                )
        _check_creatable(p, self.flag, self.what)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden temporary path beside :attr:`path` to write; on a normal exit it replaces :attr:`path`,
        on an error it is removed with any parents made for it."""
        self.check()
        parent = self.path.absolute().parent
        tmp = parent / f".{self.path.name}.{self.command.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"
        with _made_parents(parent):
            try:
                yield tmp
                self.check()
                os.replace(tmp, self.path)
            except OSError as e:
                raise StorageError(f"{self.flag} {self.path}: cannot write {self.what} ({_reason(e)})") from e
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
