"""Where a data set's files may sit under a data directory, and how to find them.

A data set can be stored in one or more *layouts* (e.g. ODDS ``arrhythmia.mat`` or the raw UCI
``arrhythmia.data``). A layout names the files it needs, the sub-directories each file may sit in,
and the reader that turns the found files into a :class:`~deepsad.data.dataset.Dataset`.
Finding is separate from reading so that ``deepsad data check`` can report what is there without
loading anything.

A search may be given a *judge* (:func:`deepsad.data.official.identify` for the sets whose official
files are known by checksum): a file it calls ``foreign`` — another data set's official file — is
passed over as if absent, and the search goes on in the next directory; the found files keep their
:class:`~deepsad.data.official.Identity` so that callers can report or refuse them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deepsad.data.dataset import Dataset
from deepsad.data.official import Identity
from deepsad.errors import DataError


@dataclass(frozen=True)
class FileSpec:
    """One file a layout needs.

    Attributes:
        key: the name the reader gets the file under (e.g. ``"train-images-idx3-ubyte"``).
        names: the accepted file names, most preferred first (e.g. raw before ``.gz``).
    """

    key: str
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"FileSpec {self.key!r} needs at least one accepted name")

    @property
    def label(self) -> str:
        """How messages name the file: ``train-images-idx3-ubyte(.gz)`` for a raw-or-gzip pair."""
        if len(self.names) == 2 and self.names[1] == self.names[0] + ".gz":
            return f"{self.names[0]}(.gz)"
        return " or ".join(self.names)


Reader = Callable[[Mapping[str, Path]], Dataset]
# (FileSpec.key, candidate path) -> what the file is.
Judge = Callable[[str, Path], Identity]


@dataclass(frozen=True)
class Layout:
    """One way a data set can be stored.

    Attributes:
        label: short description for messages (``"ODDS .mat"``, ``"UCI raw"``).
        files: the files needed; all must be found for the layout to be usable.
        subdirs: directories relative to the data directory to look in, in order (``""`` is the
            data directory itself; ``"MNIST/raw"`` is the torchvision layout).
        read: the reader; it gets ``{FileSpec.key: path}`` for every file in ``files``.
    """

    label: str
    files: tuple[FileSpec, ...]
    subdirs: tuple[str, ...]
    read: Reader = field(repr=False)

    def __post_init__(self) -> None:
        if not self.files or not self.subdirs:
            raise ValueError(f"layout {self.label!r} needs at least one file and one directory")

    def looked_in(self, data_dir: Path) -> tuple[Path, ...]:
        """The directories searched under ``data_dir``, in order."""
        return tuple(data_dir / s if s else data_dir for s in self.subdirs)


@dataclass(frozen=True)
class Located:
    """The result of searching one layout under one data directory.

    Attributes:
        layout: the layout searched.
        found: ``{FileSpec.key: path}`` of the files found (and admitted by the judge, if any).
        missing: the files not found.
        looked_in: the directories searched.
        identities: ``{FileSpec.key: Identity}`` of the found files when a judge was given.
        rejected: the candidates the judge refused (another data set's files), in search order.
    """

    layout: Layout
    found: dict[str, Path]
    missing: tuple[FileSpec, ...]
    looked_in: tuple[Path, ...]
    identities: dict[str, Identity] = field(default_factory=dict)
    rejected: tuple[Identity, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe_missing(self) -> str:
        """E.g. ``arrhythmia.mat (ODDS .mat; looked in /d, /d/odds)``."""
        files = ", ".join(f.label for f in self.missing)
        dirs = ", ".join(str(d) for d in self.looked_in)
        return f"{files} ({self.layout.label}; looked in {dirs})"


def locate(layout: Layout, data_dir: Path, judge: Judge | None = None) -> Located:
    """Find every file of ``layout`` under ``data_dir``; the first directory, then name, wins.

    With a ``judge``, each candidate is judged before it is taken; one it does not admit is
    recorded in ``rejected`` and the search for that file goes on.
    """
    dirs = layout.looked_in(data_dir)
    found: dict[str, Path] = {}
    identities: dict[str, Identity] = {}
    missing: list[FileSpec] = []
    rejected: list[Identity] = []
    for spec in layout.files:
        for path in (d / n for d in dirs for n in spec.names):
            if not path.is_file():
                continue
            if judge is not None:
                identity = judge(spec.key, path)
                if not identity.admitted:
                    rejected.append(identity)
                    continue
                identities[spec.key] = identity
            found[spec.key] = path
            break
        else:
            missing.append(spec)
    return Located(
        layout=layout,
        found=found,
        missing=tuple(missing),
        looked_in=dirs,
        identities=identities,
        rejected=tuple(rejected),
    )


def missing_error(name: str, data_dir: Path, searched: list[Located], how_to_get: str) -> DataError:
    """The one-line error for a data set none of whose layouts is complete.

    If a file was passed over as another data set's, that is the message (it names the file and
    what it is), since it explains why the set is missing where the user put it.
    """
    if not data_dir.is_dir():
        return DataError(f"{name}: data directory {data_dir} does not exist; {how_to_get}")
    rejected = [r for loc in searched for r in loc.rejected]
    if rejected:
        more = f" (and {len(rejected) - 1} more such file(s))" if len(rejected) > 1 else ""
        return DataError(f"{name}: {rejected[0].reason}{more}; {how_to_get}")
    what = " or ".join(loc.describe_missing() for loc in searched)
    return DataError(f"{name}: missing {what}; {how_to_get}")
