"""The registry of data sets Deep SAD is evaluated on, and :func:`load_dataset`.

Each entry says what the set is, which files it needs and where under a data directory they may
sit (its :class:`~deepsad.data.layout.Layout` s), whether it has a standard test split, and whether
``deepsad data fetch`` can download it. Readers live in the format modules (:mod:`.idx`,
:mod:`.cifar`, :mod:`.odds`, :mod:`.tabular`); this module only finds files and dispatches.
Everything here is numpy-only: no torch import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from deepsad.data import cifar, idx, odds, official, tabular
from deepsad.data.dataset import Dataset, Kind
from deepsad.data.layout import FileSpec, Judge, Layout, Located, locate, missing_error
from deepsad.data.tabular import load_file
from deepsad.errors import ConfigError, DataError

__all__ = ["ALIASES", "DATASETS", "DatasetInfo", "load_dataset", "load_file", "resolve_name"]

ODDS_URL = "https://odds.cs.stonybrook.edu/"


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry.

    Attributes:
        name: the registry name (``"mnist"``).
        kind: ``"image"`` or ``"tabular"``.
        description: one line for ``deepsad data check`` and error messages.
        layouts: the ways the files may be stored, preferred first; empty for sets that need no
            files (scikit-learn's).
        builtin: the loader of a set that needs no files (``None`` for file-based sets).
        has_test_split: whether the set comes with a standard test split (MNIST, CIFAR-10).
        fetchable: whether ``deepsad data fetch`` can download and verify it.
        obtain: for sets that cannot be fetched, where to get the files; ``{dir}`` is replaced by
            the data directory.

    The loader is :meth:`load`.
    """

    name: str
    kind: Kind
    description: str
    layouts: tuple[Layout, ...]
    has_test_split: bool
    fetchable: bool
    obtain: str = ""
    builtin: Callable[[], Dataset] | None = None

    def __post_init__(self) -> None:
        if (self.builtin is None) == (not self.layouts):
            raise ValueError(f"{self.name}: give either layouts or a builtin loader")
        if not self.fetchable and self.layouts and not self.obtain:
            raise ValueError(f"{self.name}: a set that cannot be fetched needs an `obtain` hint")

    @property
    def files(self) -> tuple[str, ...]:
        """The files of the preferred layout, as messages name them."""
        return tuple(f.label for f in self.layouts[0].files) if self.layouts else ()

    def how_to_get(self, data_dir: Path) -> str:
        """The remedy a missing-file message ends with."""
        if self.fetchable:
            return f"run `deepsad data fetch {self.name} --to {data_dir}`"
        return self.obtain.format(dir=data_dir)

    @property
    def judge(self) -> Judge | None:
        """How found files are recognised: by checksum for the sets with known official files."""
        return partial(official.identify, self.name) if self.name in official.TITLES else None

    def locate(self, data_dir: Path) -> list[Located]:
        """Search every layout under ``data_dir``; a complete one, if any, is first in the list.

        For MNIST, Fashion-MNIST and CIFAR-10 every candidate file is checksummed (see
        :mod:`deepsad.data.official`): another data set's official file is passed over.
        """
        found = [locate(layout, data_dir, self.judge) for layout in self.layouts]
        return sorted(found, key=lambda loc: not loc.complete)

    def load(self, data_dir: str | Path | None) -> Dataset:
        """Load the set from ``data_dir`` (ignored for sets that need no files).

        Raises:
            ConfigError: a file-based set was asked for without a data directory.
            DataError: no layout is complete (the message names every missing file, every
                directory searched, and how to get the files, or the file that was found but is
                another data set's official file, and which), a file is corrupt, or a file has the
                size of the official one but not its checksum.
        """
        if self.builtin is not None:
            return self.builtin()
        if data_dir is None:
            raise ConfigError(f"{self.name}: needs a data directory (its files: {', '.join(self.files)})")
        root = Path(data_dir).expanduser()
        searched = self.locate(root)
        if not searched[0].complete:
            raise missing_error(self.name, root, searched, self.how_to_get(root))
        best = searched[0]
        data = best.layout.read(best.found)  # format errors first: they say more than a checksum
        damaged = [i for i in best.identities.values() if i.status == "damaged"]
        if damaged:
            raise DataError(
                f"{self.name}: {damaged[0].reason}: a damaged copy (replace it with the official file: "
                f"{self.how_to_get(root)}) or other data of that shape (load your own data as an .npz file with "
                "X, y, X_test, y_test instead)"
            )
        return data


def _gz(name: str) -> FileSpec:
    return FileSpec(key=name, names=(name, name + ".gz"))


def _mnist_like(name: str, subdirs: tuple[str, ...], description: str) -> DatasetInfo:
    layout = Layout(
        label="IDX",
        files=tuple(_gz(f) for f in idx.MNIST_FILES),
        subdirs=subdirs,
        read=partial(idx.read_mnist_like, name),
    )
    return DatasetInfo(name, "image", description, (layout,), has_test_split=True, fetchable=True)


def _one_file(read: Callable[[Path], Dataset], key: str) -> Callable[[Mapping[str, Path]], Dataset]:
    def reader(files: Mapping[str, Path]) -> Dataset:
        return read(files[key])

    return reader


def _odds_mat(name: str) -> Layout:
    return Layout(
        label="ODDS .mat",
        files=(FileSpec(f"{name}.mat", (f"{name}.mat",)),),
        subdirs=("", "odds"),
        read=_one_file(partial(odds.read_odds_mat, name), f"{name}.mat"),
    )


def _odds(name: str, description: str) -> DatasetInfo:
    """An ODDS set that exists only as the ODDS .mat file."""
    return DatasetInfo(
        name,
        "tabular",
        description,
        (_odds_mat(name),),
        has_test_split=False,
        fetchable=False,
        obtain=f"download {name}.mat from {ODDS_URL} and put it in {{dir}}/odds/",
    )


_CIFAR_BIN = Layout(
    label="CIFAR-10 binary",
    files=tuple(FileSpec(f, (f,)) for f in (*cifar.BIN_TRAIN, cifar.BIN_TEST)),
    subdirs=("cifar-10-batches-bin", ""),
    read=cifar.read_cifar_binary,
)
_CIFAR_PY = Layout(
    label="CIFAR-10 python",
    files=tuple(FileSpec(f, (f,)) for f in (*cifar.PY_TRAIN, cifar.PY_TEST)),
    subdirs=("cifar-10-batches-py", ""),
    read=cifar.read_cifar_python,
)
_UCI_ARRHYTHMIA = Layout(
    label="UCI raw",
    files=(FileSpec("arrhythmia.data", ("arrhythmia.data",)),),
    subdirs=("", "uci"),
    read=_one_file(odds.rebuild_arrhythmia, "arrhythmia.data"),
)
_UCI_CARDIO = Layout(
    label="UCI raw",
    files=(FileSpec("ctg.csv", ("ctg.csv",)),),
    subdirs=("", "uci"),
    read=_one_file(odds.rebuild_cardio, "ctg.csv"),
)

_ENTRIES: tuple[DatasetInfo, ...] = (
    _mnist_like("mnist", ("", "mnist", "MNIST", "MNIST/raw"), "MNIST handwritten digits, 60k/10k, 1×28×28"),
    _mnist_like(
        "fmnist",
        ("", "fashion-mnist", "FashionMNIST", "fmnist", "FashionMNIST/raw"),
        "Fashion-MNIST clothing images, 60k/10k, 1×28×28",
    ),
    DatasetInfo(
        "cifar10",
        "image",
        "CIFAR-10 natural images, 50k/10k, 3×32×32",
        (_CIFAR_BIN, _CIFAR_PY),
        has_test_split=True,
        fetchable=True,
    ),
    # Fetchable through its raw UCI file, which has a published checksum.
    DatasetInfo(
        "arrhythmia",
        "tabular",
        "ODDS arrhythmia (UCI Arrhythmia), 452×274, 66 outliers",
        (_odds_mat("arrhythmia"), _UCI_ARRHYTHMIA),
        has_test_split=False,
        fetchable=True,
    ),
    DatasetInfo(
        "cardio",
        "tabular",
        "ODDS cardio (UCI Cardiotocography), 1831×21, 176 outliers",
        (_odds_mat("cardio"), _UCI_CARDIO),
        has_test_split=False,
        fetchable=False,
        obtain=(
            f"download cardio.mat from {ODDS_URL} into {{dir}}/odds/, or save the 'Raw Data' sheet of "
            "UCI Cardiotocography CTG.xls (https://archive.ics.uci.edu/dataset/193/cardiotocography) "
            "as {dir}/uci/ctg.csv"
        ),
    ),
    _odds("satellite", "ODDS satellite (UCI Statlog Landsat), 6435×36, 2036 outliers"),
    _odds("satimage-2", "ODDS satimage-2 (UCI Statlog Landsat), 5803×36, 71 outliers"),
    _odds("shuttle", "ODDS shuttle (UCI Statlog Shuttle), 49097×9, 3511 outliers"),
    _odds("thyroid", "ODDS thyroid (UCI Thyroid Disease), 3772×6, 93 outliers"),
    DatasetInfo(
        "digits",
        "tabular",
        "scikit-learn 8×8 digits, 1797×64, classes 0..9",
        (),
        has_test_split=False,
        fetchable=False,
        builtin=tabular.load_digits,
    ),
    DatasetInfo(
        "breast_cancer",
        "tabular",
        "scikit-learn breast cancer, 569×30, 0 = benign (normal), 1 = malignant (outlier)",
        (),
        has_test_split=False,
        fetchable=False,
        builtin=tabular.load_breast_cancer,
    ),
)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _ENTRIES}
ALIASES: dict[str, str] = {"fashion-mnist": "fmnist", "fashion_mnist": "fmnist", "cifar-10": "cifar10"}


def resolve_name(name: str, *, files_ok: bool = False) -> str:
    """The registry name for ``name`` or one of its aliases.

    ``files_ok`` only adds to the error message that a ``.npz``/``.csv`` path is accepted too.

    Raises:
        ConfigError: the name is unknown; the message lists the known names.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        known = ", ".join([*DATASETS, *(f"{a} (= {t})" for a, t in ALIASES.items())])
        also = ", or a .npz/.csv file path" if files_ok else ""
        raise ConfigError(f"unknown data set {name!r}; known: {known}{also}")
    return key


def load_dataset(name: str, data_dir: str | Path | None) -> Dataset:
    """Load a registry data set, or a user's ``.npz``/``.csv`` file, as a :class:`Dataset`.

    Args:
        name: a registry name (see :data:`DATASETS`; aliases in :data:`ALIASES`), or a path ending
            in ``.npz``/``.csv`` (see :func:`~deepsad.data.tabular.load_file`). A relative path is
            taken relative to the working directory if it exists there, else to ``data_dir``.
        data_dir: the directory holding the files; ignored for scikit-learn sets.

    Returns:
        image sets: ``x`` uint8 ``(N, C, H, W)``; tabular sets: ``x`` float64 ``(N, D)``;
        ``y`` int64 ``(N,)``. ODDS and breast_cancer labels: 0 = normal, 1 = outlier.

    Raises:
        ConfigError: unknown name, or no ``data_dir`` for a set that needs files.
        DataError: files missing (the message says where it looked and how to get them) or corrupt.
    """
    if name.lower().endswith((".npz", ".csv")):
        path = Path(name).expanduser()
        if not path.is_absolute() and not path.exists() and data_dir is not None:
            path = Path(data_dir).expanduser() / path
        return load_file(path)
    return DATASETS[resolve_name(name, files_ok=True)].load(data_dir)
