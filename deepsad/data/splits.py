"""The semi-supervised protocol of Deep SAD: test, validation and training parts, and their fingerprint.

The setting follows the paper and the reference ``create_semisupervised_setting`` (Deep-SAD-PyTorch):
the normal classes are normal, every other class is anomalous; a training part holds all normals of its
pool, a fraction ``γ_n`` of the part labelled normal, a fraction ``γ_l`` of the part labelled anomalies
drawn from the *known* anomaly classes, and unlabelled data polluted with a fraction ``γ_p`` of
anomalies drawn from *all* anomaly classes. Unlike the reference, labelled and pollution anomalies are
disjoint (the reference draws them independently and can use one sample twice), a validation part is
carved first (stratified, per class) and given the same setting, and every random step has its own
seeded stream so that changing one setting (say ``γ_l``) never reshuffles another step (the
validation carve).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.data.preprocessing import Preprocessing, PreprocessingKind, fit_preprocessing
from deepsad.errors import ConfigError, DataError

# Bump when the algorithm changes in a way that changes which samples land where.
FINGERPRINT_VERSION = "deepsad-split-v1"

Source = Literal["train", "test"]

# One independent random stream per step (SeedSequence([seed, step])).
_STREAM_VAL_CARVE = 1
_STREAM_KNOWN_CLASSES = 2
_STREAM_TRAIN_SETTING = 3
_STREAM_VAL_SETTING = 4

# Solutions of the linear system are truncated as the reference does (int(x)); the tolerance only
# keeps float error (5922.9999999 for 5923) from losing a sample.
_FLOOR_TOL = 1e-6


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class Protocol:
    """The semi-supervised setting of one experiment (see the module docstring).

    Attributes:
        normal_classes: class labels treated as normal; non-empty.
        known_anomaly_classes: anomaly classes labelled anomalies are drawn from; ``None`` draws
            ``n_known_outlier_classes`` of the anomaly classes at random (seeded). When given,
            ``n_known_outlier_classes`` is ignored.
        n_known_outlier_classes: how many known anomaly classes to draw when none are given.
        n_labeled_anomalies: number of labelled anomalies in the training part (count mode);
            exclusive with ``ratio_known_outlier > 0``.
        ratio_known_outlier: ``γ_l``, fraction of the training part that is labelled anomalies.
        ratio_pollution: ``γ_p``, fraction of the unlabelled training data that is anomalies.
        ratio_known_normal: ``γ_n``, fraction of the training part that is labelled normals.
        val_fraction: fraction of each class of the training pool carved out for validation.
        test_fraction: fraction of each class carved out for testing, only for data sets without a
            standard test split.
        seed: seeds every random step.

    Raises:
        ConfigError: one line listing every invalid field with its value.
    """

    normal_classes: tuple[int, ...] = (0,)
    known_anomaly_classes: tuple[int, ...] | None = None
    n_known_outlier_classes: int = 1
    n_labeled_anomalies: int | None = None
    ratio_known_outlier: float = 0.0
    ratio_pollution: float = 0.0
    ratio_known_normal: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        problems: list[str] = []
        normal = _class_tuple("normal_classes", self.normal_classes, problems)
        if normal is not None and not normal:
            problems.append("protocol.normal_classes: must not be empty")
        known = None
        if self.known_anomaly_classes is not None:
            known = _class_tuple("known_anomaly_classes", self.known_anomaly_classes, problems)
            both = sorted(set(known or ()) & set(normal or ()))
            if both:
                problems.append(
                    f"protocol.known_anomaly_classes: class {both[0]} is also a normal class "
                    f"(normal_classes={list(normal or ())})"
                )
        if not _is_int(self.n_known_outlier_classes) or self.n_known_outlier_classes < 0:
            problems.append(
                f"protocol.n_known_outlier_classes: must be an integer >= 0 (got {self.n_known_outlier_classes!r})"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            # numpy's and scikit-learn's seeds are 32-bit: a larger one would fail deep inside the split
            problems.append(f"protocol.seed: must be an integer in [0, 2**32) (got {self.seed!r})")
        count = self.n_labeled_anomalies
        if count is not None and (not _is_int(count) or count < 0):
            problems.append(f"protocol.n_labeled_anomalies: must be an integer >= 0 (got {count!r})")
        ratios_ok = True
        for name in ("ratio_known_outlier", "ratio_pollution", "ratio_known_normal"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                problems.append(f"protocol.{name}: must be in [0, 1) (got {value!r})")
                ratios_ok = False
        if ratios_ok and self.ratio_known_outlier + self.ratio_known_normal >= 1.0:
            problems.append(
                "protocol.ratio_known_outlier + ratio_known_normal: must be < 1 so that some data stays "
                f"unlabelled (got {self.ratio_known_outlier} + {self.ratio_known_normal})"
            )
        if ratios_ok and count is not None and self.ratio_known_outlier > 0:
            problems.append(
                f"protocol.n_labeled_anomalies={count!r} and ratio_known_outlier="
                f"{self.ratio_known_outlier!r} are exclusive; give one of them"
            )
        if not _is_real(self.val_fraction) or not 0.0 < self.val_fraction <= 0.5:
            problems.append(f"protocol.val_fraction: must be in (0, 0.5] (got {self.val_fraction!r})")
        if not _is_real(self.test_fraction) or not 0.0 < self.test_fraction < 1.0:
            problems.append(f"protocol.test_fraction: must be in (0, 1) (got {self.test_fraction!r})")
        wants_labeled = (ratios_ok and self.ratio_known_outlier > 0) or (_is_int(count) and bool(count))
        if wants_labeled and (known == () or (known is None and self.n_known_outlier_classes == 0)):
            problems.append(
                "protocol.known_anomaly_classes: labelled anomalies are asked for but there are no known "
                "anomaly classes to draw them from"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        # Normalise lists and numpy integers to tuples of int, so protocols compare and hash by value.
        object.__setattr__(self, "normal_classes", normal)
        object.__setattr__(self, "known_anomaly_classes", known)
        for name in ("ratio_known_outlier", "ratio_pollution", "ratio_known_normal"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("val_fraction", "test_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def count_mode(self) -> bool:
        """Whether labelled anomalies are given as a count rather than as ``γ_l``."""
        return self.n_labeled_anomalies is not None


def _class_tuple(name: str, value: object, problems: list[str]) -> tuple[int, ...] | None:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        problems.append(f"protocol.{name}: must be a tuple of integer class labels (got {value!r})")
        return None
    items = list(value)
    if not all(_is_int(c) for c in items):
        problems.append(f"protocol.{name}: must be a tuple of integer class labels (got {value!r})")
        return None
    classes = tuple(int(c) for c in items)
    if len(set(classes)) != len(classes):
        problems.append(f"protocol.{name}: has a repeated class (got {list(classes)})")
    return classes


@dataclass(frozen=True, eq=False)
class Part:
    """One part (train, validation or test) of a split.

    Attributes:
        x: float32, preprocessed, ``(N, C, H, W)`` or ``(N, D)``.
        labels: int64 ``(N,)`` ground truth, 0 normal / 1 anomaly.
        semi_targets: int64 ``(N,)`` +1 labelled normal / -1 labelled anomaly / 0 unlabelled (all 0
            in the test part).
        classes: int64 ``(N,)`` original class labels.
        indices: int64 ``(N,)`` row indices into the source arrays, sorted ascending.
        source: which arrays of the :class:`Dataset` ``indices`` point into (``x_train`` or ``x_test``).

    Raises:
        DataError: if the arrays disagree in length or ``source`` is unknown.
    """

    x: np.ndarray
    labels: np.ndarray
    semi_targets: np.ndarray
    classes: np.ndarray
    indices: np.ndarray
    source: Source

    def __post_init__(self) -> None:
        if self.source not in ("train", "test"):
            raise DataError(f"part: source must be 'train' or 'test', got {self.source!r}")
        n = self.x.shape[0]
        for name in ("labels", "semi_targets", "classes", "indices"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise DataError(f"part: {name} has shape {arr.shape}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class SemiSupervisedSplit:
    """The result of :func:`make_split`: three parts, the fitted preprocessing and a fingerprint.

    ``fingerprint`` is a hex sha256 over the source arrays' bytes, the data set name, the protocol
    and every part's indices and semi-targets: equal fingerprints mean identical parts.
    """

    dataset: str
    protocol: Protocol
    known_anomaly_classes: tuple[int, ...]
    train: Part
    val: Part
    test: Part
    preprocessing: Preprocessing
    fingerprint: str

    def counts(self) -> dict[str, int]:
        """Sample counts of every group, e.g. for logging and for results tables."""
        tr, va, te = self.train, self.val, self.test
        unlabeled = tr.semi_targets == 0
        return {
            "n_train": len(tr),
            "n_labeled_normal": int((tr.semi_targets == 1).sum()),
            "n_labeled_anomaly": int((tr.semi_targets == -1).sum()),
            "n_unlabeled_normal": int((unlabeled & (tr.labels == 0)).sum()),
            "n_unlabeled_anomaly": int((unlabeled & (tr.labels == 1)).sum()),
            "n_val": len(va),
            "n_val_anomaly": int((va.labels == 1).sum()),
            "n_val_labeled_anomaly": int((va.semi_targets == -1).sum()),
            "n_test": len(te),
            "n_test_anomaly": int((te.labels == 1).sum()),
        }


@dataclass(frozen=True)
class SettingCounts:
    """How many samples of each group one part holds."""

    n_known_normal: int
    n_unlabeled_normal: int
    n_unlabeled_outlier: int
    n_known_outlier: int


def solve_setting_counts(
    n_normal: int,
    ratio_known_normal: float,
    ratio_known_outlier: float,
    ratio_pollution: float,
    n_known_outlier: int | None = None,
    *,
    strict: bool = True,
) -> SettingCounts:
    """Solve the reference's linear system for the group sizes of one part.

    With ``x = (n_known_normal, n_unlabeled_normal, n_unlabeled_outlier, n_known_outlier)`` the rows
    say: all ``n_normal`` normals are used; labelled normals are ``γ_n`` of the part; labelled
    anomalies are ``γ_l`` of the part (or, when ``n_known_outlier`` is given, exactly that many);
    unlabelled anomalies are ``γ_p`` of the unlabelled data. Each solution is truncated to an integer.

    Raises:
        DataError: if ``strict`` and the ratios cannot be met (a negative solution: in count mode, more
            labelled normals would be needed than there are normals); otherwise negatives become 0.
    """
    gn, gl, gp = ratio_known_normal, ratio_known_outlier, ratio_pollution
    a = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],
            [1.0 - gn, -gn, -gn, -gn],
            [-gl, -gl, -gl, 1.0 - gl],
            [0.0, -gp, 1.0 - gp, 0.0],
        ]
    )
    b = np.array([float(n_normal), 0.0, 0.0, 0.0])
    if n_known_outlier is not None:
        a[2] = [0.0, 0.0, 0.0, 1.0]
        b[2] = float(n_known_outlier)
    x = np.linalg.solve(a, b)
    if strict and (x < -_FLOOR_TOL).any():
        raise DataError(
            f"cannot reach ratio_known_normal={gn} with {n_normal} normals and {n_known_outlier} labelled "
            "anomalies: there are too few normals"
        )
    n = np.maximum(np.floor(x + _FLOOR_TOL), 0).astype(np.int64)
    return SettingCounts(*(int(v) for v in n))


def make_split(data: Dataset, protocol: Protocol) -> SemiSupervisedSplit:
    """Apply ``protocol`` to ``data``: carve test and validation parts, draw the semi-supervised
    setting of the training and validation parts, fit the preprocessing on the training part.

    Args:
        data: the loaded data set (``x`` ``(N, C, H, W)`` uint8 images or ``(N, D)`` tabular).
        protocol: the semi-supervised setting.

    Returns:
        The :class:`SemiSupervisedSplit`; its parts' indices are pairwise disjoint.

    Raises:
        ConfigError: a class in the protocol is not a class of the data, or more known anomaly
            classes are asked for than there are anomaly classes.
        DataError: the data cannot satisfy the protocol (too few anomalies for the asked labelled
            or pollution counts, no normal samples, no anomaly class, a class too small to stratify).
    """
    known = _check_protocol(data, protocol)
    normal = np.asarray(protocol.normal_classes, dtype=np.int64)
    y_train = np.asarray(data.y_train).astype(np.int64, copy=False)
    train_pool, val_pool, test_idx, test_source = _carve_parts(data, y_train, protocol)
    train_counts, val_counts = _setting_counts(data.name, y_train, train_pool, val_pool, normal, protocol)

    gl, gp, count = protocol.ratio_known_outlier, protocol.ratio_pollution, protocol.n_labeled_anomalies
    what = f"ratio_known_outlier={gl}" if count is None else f"n_labeled_anomalies={count}"
    errors = (data.name, what, f"ratio_pollution={gp}")
    known_arr = np.asarray(known, dtype=np.int64)
    train_rng, val_rng = _stream(protocol, _STREAM_TRAIN_SETTING), _stream(protocol, _STREAM_VAL_SETTING)
    train_idx, train_st = _draw_setting(
        y_train, train_pool, normal, known_arr, train_counts, train_rng, errors
    )
    val_idx, val_st = _draw_setting(y_train, val_pool, normal, known_arr, val_counts, val_rng, None)

    kind: PreprocessingKind = "scale255" if data.kind == "image" else "standard_minmax"
    preprocessing = fit_preprocessing(kind, data.x_train[train_idx])
    train = _part(data, y_train, normal, preprocessing, train_idx, train_st, "train")
    val = _part(data, y_train, normal, preprocessing, val_idx, val_st, "train")
    test_st = np.zeros(test_idx.size, np.int64)
    test = _part(data, y_train, normal, preprocessing, test_idx, test_st, test_source)
    fingerprint = _fingerprint(data, protocol, known, (train, val, test), kind)
    return SemiSupervisedSplit(data.name, protocol, known, train, val, test, preprocessing, fingerprint)


def _check_protocol(data: Dataset, protocol: Protocol) -> tuple[int, ...]:
    """Check that ``protocol`` fits ``data``; returns the known anomaly classes (drawn if not given)."""
    classes = data.classes
    _check_classes(data.name, protocol, classes)
    if data.kind == "image" and data.x_train.dtype != np.uint8:
        raise DataError(f"{data.name}: image data must be uint8 (0..255), got {data.x_train.dtype}")
    anomaly_classes = tuple(c for c in classes if c not in protocol.normal_classes)
    if not anomaly_classes:
        raise DataError(f"{data.name}: every class is normal; the protocol needs at least one anomaly class")
    return _known_classes(data.name, protocol, anomaly_classes)


def _carve_parts(
    data: Dataset, y_train: np.ndarray, protocol: Protocol
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Source]:
    """``(train_pool, val_pool, test, test_source)`` row indices: the test part is the data set's test
    split, or carved from its training split when it has none; validation is carved from the rest."""
    test_source: Source
    if data.y_test is None:
        test_source = "train"
        pool, test_idx = _carve_test(data.name, y_train, protocol.test_fraction, protocol.seed)
    else:
        test_source = "test"
        pool, test_idx = np.arange(y_train.size), np.arange(data.y_test.shape[0])
    train_pool, val_pool = _carve_val(
        y_train, pool, protocol.val_fraction, _stream(protocol, _STREAM_VAL_CARVE)
    )
    return train_pool, val_pool, test_idx, test_source


def _setting_counts(
    name: str, y_train: np.ndarray, train_pool: np.ndarray, val_pool: np.ndarray, normal: np.ndarray,
    protocol: Protocol,
) -> tuple[SettingCounts, SettingCounts]:
    """The training and validation parts' sample counts (see :func:`solve_setting_counts`)."""
    n_normal_train = int(np.isin(y_train[train_pool], normal).sum())
    if n_normal_train == 0:
        raise DataError(f"{name}: the training pool has no sample of the normal classes {list(normal)}")
    n_normal_val = int(np.isin(y_train[val_pool], normal).sum())
    gn, gl, gp = protocol.ratio_known_normal, protocol.ratio_known_outlier, protocol.ratio_pollution
    count, val_count = protocol.n_labeled_anomalies, None
    if count is not None:
        vf = protocol.val_fraction
        val_count = max(1, round(count * vf / (1 - vf))) if count > 0 else 0
    try:
        train_counts = solve_setting_counts(n_normal_train, gn, gl, gp, count)
    except DataError as e:
        raise DataError(f"{name}: {e}") from e
    # The validation part's counts are derived, not asked for, so they are clipped (here and in the
    # draw) rather than failing a run that the training part can serve.
    val_counts = solve_setting_counts(n_normal_val, gn, gl, gp, val_count, strict=False)
    if train_counts.n_known_outlier > 0 and val_counts.n_known_outlier == 0:
        # Model selection needs labelled anomalies in validation whenever training has them.
        val_counts = replace(val_counts, n_known_outlier=1)
    return train_counts, val_counts


def _part(data: Dataset, y_train: np.ndarray, normal: np.ndarray, preprocessing: Preprocessing,
          idx: np.ndarray, semi_targets: np.ndarray, source: Source) -> Part:
    """The part of rows ``idx`` of the data set's ``source`` split (``y_train``: the training labels
    as int64), preprocessed."""
    x, y = (data.x_train, y_train) if source == "train" else (data.x_test, data.y_test)
    assert x is not None and y is not None  # source "test" only when the Dataset has a test split
    cls = np.asarray(y[idx]).astype(np.int64)
    return Part(
        x=preprocessing.apply(x[idx]),
        labels=(~np.isin(cls, normal)).astype(np.int64),
        semi_targets=semi_targets.astype(np.int64),
        classes=cls,
        indices=idx.astype(np.int64),
        source=source,
    )


def _stream(protocol: Protocol, step: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([protocol.seed, step]))


def _describe_classes(classes: tuple[int, ...]) -> str:
    if classes and list(classes) == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"classes {classes[0]}..{classes[-1]}"
    return f"classes {', '.join(str(c) for c in classes)}"


def _check_classes(name: str, protocol: Protocol, classes: tuple[int, ...]) -> None:
    groups = [
        ("normal class", protocol.normal_classes),
        ("known anomaly class", protocol.known_anomaly_classes),
    ]
    for label, wanted in groups:
        for c in wanted or ():
            if c not in classes:
                raise ConfigError(f"{label} {c} is not a class of {name} ({_describe_classes(classes)})")


def _known_classes(name: str, protocol: Protocol, anomaly_classes: tuple[int, ...]) -> tuple[int, ...]:
    if protocol.known_anomaly_classes is not None:
        return protocol.known_anomaly_classes
    n = protocol.n_known_outlier_classes
    if n > len(anomaly_classes):
        raise ConfigError(
            f"protocol.n_known_outlier_classes: {n} asked but {name} has only {len(anomaly_classes)} "
            f"anomaly classes ({', '.join(str(c) for c in anomaly_classes)})"
        )
    drawn = _stream(protocol, _STREAM_KNOWN_CLASSES).choice(np.asarray(anomaly_classes), n, replace=False)
    return tuple(sorted(int(c) for c in drawn))


def _carve_test(name: str, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(pool, test)`` row indices, both sorted; scikit-learn with ``random_state=seed``
    as the reference's ODDS 60/40 split."""
    from sklearn.model_selection import train_test_split  # here: importing sklearn costs ~0.9 s

    try:
        pool, test = train_test_split(
            np.arange(y.size), test_size=test_fraction, random_state=seed, stratify=y
        )
    except ValueError as e:
        raise DataError(
            f"{name}: cannot carve a stratified test split of test_fraction={test_fraction}: {e}"
        ) from e
    return np.sort(pool), np.sort(test)


def _carve_val(
    y: np.ndarray, pool: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into sorted ``(train_pool, val_pool)``, taking ``round(val_fraction * n_c)`` of
    each class ``c`` (at least one of any class with two or more samples) at random."""
    perm = pool[rng.permutation(pool.size)]
    order = np.argsort(y[perm], kind="stable")  # group by class, random order within a class
    perm = perm[order]
    cls = y[perm]
    _, start, count = np.unique(cls, return_index=True, return_counts=True)
    k = np.floor(val_fraction * count + 0.5).astype(np.int64)
    k = np.where((k == 0) & (count >= 2), 1, k)
    group = np.repeat(np.arange(count.size), count)
    is_val = (np.arange(cls.size) - start[group]) < k[group]
    return np.sort(perm[~is_val]), np.sort(perm[is_val])


def _draw_setting(
    y: np.ndarray,
    pool: np.ndarray,
    normal: np.ndarray,
    known: np.ndarray,
    counts: SettingCounts,
    rng: np.random.Generator,
    errors: tuple[str, str, str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the groups of ``counts`` from ``pool``; return ``(indices, semi_targets)`` sorted by index.

    ``errors`` is ``(dataset name, labelled setting, pollution setting)`` for the messages of the
    DataError raised when the pool is too small; ``None`` clips the counts instead.
    """
    is_normal = np.isin(y[pool], normal)
    normals, anomalies = pool[is_normal], pool[~is_normal]
    # All permutations are drawn whatever the counts, so a count never shifts the random stream.
    normals = normals[rng.permutation(normals.size)]
    anomalies = anomalies[rng.permutation(anomalies.size)]
    # Pollution gets its own order: taking it from the order the labelled anomalies came from would
    # skip the known classes in just the prefix it reads, and under-represent them.
    pollution_order = rng.permutation(anomalies.size)

    known_pos = np.flatnonzero(np.isin(y[anomalies], known))
    n_ko = counts.n_known_outlier
    if n_ko > known_pos.size:
        if errors is not None:
            name, what, _ = errors
            noun = "class" if known.size == 1 else "classes"
            raise DataError(
                f"{name}: asked for {n_ko} labeled anomalies of {noun} {', '.join(str(c) for c in known)} "
                f"({what}) but the training pool has only {known_pos.size} (after the validation split)"
            )
        n_ko = known_pos.size
    is_labeled = np.zeros(anomalies.size, dtype=bool)
    is_labeled[known_pos[:n_ko]] = True
    # Pollution comes from every anomaly class but never reuses a labelled anomaly.
    rest = anomalies[pollution_order][~is_labeled[pollution_order]]
    n_uo = counts.n_unlabeled_outlier
    if n_uo > rest.size:
        if errors is not None:
            name, _, what = errors
            raise DataError(
                f"{name}: asked for {n_uo} unlabeled anomalies ({what}) but the training pool has only "
                f"{rest.size} anomalies besides the {n_ko} labeled ones (after the validation split)"
            )
        n_uo = rest.size

    n_kn, n_un = counts.n_known_normal, counts.n_unlabeled_normal
    groups = [
        (normals[:n_kn], 1),
        (normals[n_kn : n_kn + n_un], 0),
        (rest[:n_uo], 0),
        (anomalies[is_labeled], -1),
    ]
    idx = np.concatenate([g for g, _ in groups])
    st = np.concatenate([np.full(g.size, t, dtype=np.int64) for g, t in groups])
    order = np.argsort(idx)
    return idx[order].astype(np.int64), st[order]


# Content digests of source arrays, per Dataset object: hashing MNIST's 47 MB on every split would
# dominate the split's cost. Keyed weakly so datasets are freed; assumes arrays are not mutated.
_DATA_DIGESTS: weakref.WeakKeyDictionary[Dataset, str] = weakref.WeakKeyDictionary()


def data_digest(data: Dataset) -> str:
    """Hex sha256 of the raw bytes, dtypes and shapes of ``data``'s train and test arrays (cached)."""
    cached = _DATA_DIGESTS.get(data)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        arr = getattr(data, name)
        if arr is None:
            h.update(json.dumps([name, None]).encode())
            continue
        a = np.ascontiguousarray(arr)
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    digest = h.hexdigest()
    _DATA_DIGESTS[data] = digest
    return digest


def _fingerprint(
    data: Dataset, protocol: Protocol, known: tuple[int, ...], parts: tuple[Part, Part, Part], kind: str
) -> str:
    header = {
        "version": FINGERPRINT_VERSION,
        "dataset": data.name,
        "kind": data.kind,
        "data": data_digest(data),
        "protocol": asdict(protocol),
        "known_anomaly_classes": list(known),
        "preprocessing": kind,
    }
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name, p in zip(("train", "val", "test"), parts, strict=True):
        h.update(f"|{name}:{p.source}:{len(p)}|".encode())
        h.update(np.ascontiguousarray(p.indices, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(p.semi_targets, dtype="<i8").tobytes())
    return h.hexdigest()
