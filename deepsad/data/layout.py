"""Where a data set's files may sit under a data directory, and how to find them.

A data set can be stored in one or more *layouts* (e.g. ODDS ``arrhythmia.mat`` or the raw UCI
``arrhythmia.data``). A layout names the files it needs, the sub-directories each file may sit in,
and the reader that turns the found files into a :class:`~deepsad.data.dataset.Dataset`.
Finding is separate from reading so that ``deepsad data check`` can report what is there without
loading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deepsad.data.dataset import Dataset
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
    """The result of searching one layout under one data directory."""

    layout: Layout
    found: dict[str, Path]
    missing: tuple[FileSpec, ...]
    looked_in: tuple[Path, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe_missing(self) -> str:
        """E.g. ``arrhythmia.mat (ODDS .mat; looked in /d, /d/odds)``."""
        files = ", ".join(f.label for f in self.missing)
        dirs = ", ".join(str(d) for d in self.looked_in)
        return f"{files} ({self.layout.label}; looked in {dirs})"


def locate(layout: Layout, data_dir: Path) -> Located:
    """Find every file of ``layout`` under ``data_dir``; the first directory, then name, wins."""
    dirs = layout.looked_in(data_dir)
    found: dict[str, Path] = {}
    missing: list[FileSpec] = []
    for spec in layout.files:
        hit = next((d / n for d in dirs for n in spec.names if (d / n).is_file()), None)
        if hit is None:
            missing.append(spec)
        else:
            found[spec.key] = hit
    return Located(layout=layout, found=found, missing=tuple(missing), looked_in=dirs)


def missing_error(name: str, data_dir: Path, searched: list[Located], how_to_get: str) -> DataError:
    """The one-line error for a data set none of whose layouts is complete."""
    if not data_dir.is_dir():
        return DataError(f"{name}: data directory {data_dir} does not exist; {how_to_get}")
    what = " or ".join(loc.describe_missing() for loc in searched)
    return DataError(f"{name}: missing {what}; {how_to_get}")
