"""Shallow baselines — Isolation Forest and OC-SVM — with hyperparameters chosen on the validation split.

Both are unsupervised: they are fitted on *all* training samples and ignore any labels, exactly as the
reference Deep-SAD-PyTorch ``baselines/isoforest.py`` and ``baselines/ocsvm.py`` fit on the whole
``train_set`` (labelled anomalies and polluted samples included, their labels unused).

Where we deliberately differ from the reference: its OC-SVM picks ``gamma`` by AUROC on a 10% slice of
the *test* set, which leaks test labels into model selection. Here every candidate is scored on the
validation split only; the test split is scored once, with the chosen model, and cannot change the choice.

Grids (candidates are tried in this order; ties keep the first):

- ``ocsvm``: RBF kernel, ``gamma`` in ``np.logspace(-7, 2, num=10, base=2)`` (absolute values, as in the
  reference — not divided by the feature count) × ``nu`` in ``(0.01, 0.05, 0.1, 0.2)``: 40 fits. The fit
  set is a seeded random subset of at most ``max_fit_samples`` (default 10 000) training samples, because
  kernel SVM training is quadratic-to-cubic in N (MNIST's ~6 000 normals per class fit whole).
- ``isoforest``: ``n_estimators`` in ``(100, 200)`` × ``max_samples`` in ``("auto", 0.5, 1.0)``: 6 fits,
  ``random_state=seed``. ``contamination`` only moves ``predict``'s cut-off, not the ranking, so it is
  left at its default.

Anomaly scores are ``-decision_function`` (OC-SVM) and ``-score_samples`` (Isolation Forest): higher means
more anomalous, as for Deep SAD.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from deepsad.errors import ConfigError, DataError
from deepsad.metrics import auroc, average_precision

BaselineName = Literal["isoforest", "ocsvm"]
Hyperparameters = dict[str, Any]

OCSVM_GAMMAS: tuple[float, ...] = tuple(float(g) for g in np.logspace(-7, 2, num=10, base=2))
OCSVM_NUS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
IFOREST_N_ESTIMATORS: tuple[int, ...] = (100, 200)
IFOREST_MAX_SAMPLES: tuple[str | float, ...] = ("auto", 0.5, 1.0)


@dataclass(frozen=True, eq=False)
class BaselineData:
    """Preprocessed splits for a baseline.

    Attributes:
        x_train: ``(N_train, ...)`` float32 — labels, if any, are deliberately not part of the input.
        x_val, y_val: ``(N_val, ...)`` and ``(N_val,)`` with 0 normal / 1 anomaly; used to choose
            hyperparameters, so both classes must be present.
        x_test, y_test: ``(N_test, ...)`` and ``(N_test,)``; scored once with the chosen model.

    Samples are flattened to ``(N, D)`` inside. Raises DataError on shape mismatches, non-0/1 labels,
    non-finite features, or a split without both classes.
    """

    x_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray  # the labels selection ranks on (a sweep passes those a user has: metrics.known_labels)
    x_test: np.ndarray
    y_test: np.ndarray
    y_val_oracle: np.ndarray | None = None  # the validation part's true labels: reported, never chosen on

    def __post_init__(self) -> None:
        n_features = None
        for part, x in (("train", self.x_train), ("val", self.x_val), ("test", self.x_test)):
            if not isinstance(x, np.ndarray) or x.ndim < 2 or x.shape[0] == 0:
                shape = getattr(x, "shape", type(x).__name__)
                raise DataError(f"baseline data: x_{part} must be a non-empty (N, ...) array, got {shape}")
            d = int(np.prod(x.shape[1:]))
            if n_features is not None and d != n_features:
                raise DataError(f"baseline data: x_{part} has {d} features per sample, x_train {n_features}")
            n_features = d
            if not np.isfinite(x).all():
                raise DataError(f"baseline data: x_{part} contains NaN or inf")
        for part, x, y in (("val", self.x_val, self.y_val), ("test", self.x_test, self.y_test),
                           ("val_oracle", self.x_val, self.y_val_oracle)):
            if y is None and part == "val_oracle":
                continue
            if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],):
                shape = getattr(y, "shape", type(y).__name__)
                raise DataError(f"baseline data: y_{part} must have shape ({x.shape[0]},), got {shape}")
            if not np.isin(y, (0, 1)).all():
                raise DataError(f"baseline data: y_{part} must hold 0 (normal) / 1 (anomaly) only")
            if np.unique(y).size != 2 and part != "val_oracle":
                raise DataError(f"baseline data: y_{part} must contain both normal and anomalous samples")

    @property
    def n_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


@dataclass(frozen=True)
class BaselineResult:
    """Outcome of :func:`fit_baseline`.

    ``hyperparameters`` are the chosen ones (JSON-able); ``fit_seconds`` is the chosen model's fit time and
    ``search_seconds`` the wall time of the whole search; ``n_fit_samples`` is the size of the fit set
    after subsampling; ``candidates`` lists every ``(hyperparameters, val_auroc)`` in grid order.
    """

    method: BaselineName
    hyperparameters: Hyperparameters
    val_auroc: float
    val_ap: float
    test_auroc: float
    test_ap: float
    fit_seconds: float
    n_candidates: int
    search_seconds: float = 0.0
    n_fit_samples: int = 0
    candidates: tuple[tuple[Hyperparameters, float], ...] = field(default=(), repr=False)
    val_auroc_oracle: float | None = None  # on BaselineData.y_val_oracle, if given (both classes)
    val_ap_oracle: float | None = None
    scorer: Scorer | None = field(default=None, repr=False, compare=False)  # the chosen model's

    def score(self, x: np.ndarray) -> np.ndarray:
        """The chosen model's anomaly scores of ``x`` (N, ...)."""
        if self.scorer is None:
            raise ConfigError("baseline result: no model kept to score with")
        return self.scorer(_flat(x))

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able dict for result tables (``candidates`` omitted)."""
        return {
            "method": self.method,
            **{f"hp.{k}": v for k, v in self.hyperparameters.items()},
            "val_auroc": self.val_auroc,
            "val_ap": self.val_ap,
            "val_auroc_oracle": self.val_auroc_oracle,
            "val_ap_oracle": self.val_ap_oracle,
            "test_auroc": self.test_auroc,
            "test_ap": self.test_ap,
            "fit_seconds": self.fit_seconds,
            "search_seconds": self.search_seconds,
            "n_candidates": self.n_candidates,
            "n_fit_samples": self.n_fit_samples,
        }


def default_grid(name: BaselineName) -> list[Hyperparameters]:
    """The candidate list searched for ``name`` (see the module docstring). Raises ConfigError."""
    if name == "ocsvm":
        return [
            {"kernel": "rbf", "gamma": g, "nu": nu} for g, nu in itertools.product(OCSVM_GAMMAS, OCSVM_NUS)
        ]
    if name == "isoforest":
        return [
            {"n_estimators": n, "max_samples": m}
            for n, m in itertools.product(IFOREST_N_ESTIMATORS, IFOREST_MAX_SAMPLES)
        ]
    raise ConfigError(f"unknown baseline {name!r} (known: isoforest, ocsvm)")


# Each maker fits a model on x and returns a scorer: (M, D) -> (M,) anomaly scores.
Scorer = Callable[[np.ndarray], np.ndarray]


def _fit_ocsvm(x: np.ndarray, hp: Hyperparameters, seed: int) -> Scorer:
    model = OneClassSVM(**hp).fit(x)
    return lambda z: -model.decision_function(z)


def _fit_isoforest(x: np.ndarray, hp: Hyperparameters, seed: int) -> Scorer:
    model = IsolationForest(**hp, random_state=seed).fit(x)
    return lambda z: -model.score_samples(z)


_FITTERS: dict[str, Callable[[np.ndarray, Hyperparameters, int], Scorer]] = {
    "ocsvm": _fit_ocsvm,
    "isoforest": _fit_isoforest,
}


def fit_baseline(
    name: BaselineName,
    data: BaselineData,
    *,
    seed: int,
    max_fit_samples: int = 10_000,
    grid: Sequence[Mapping[str, Any]] | None = None,
) -> BaselineResult:
    """Fit every candidate of ``grid`` (default: :func:`default_grid`) on the training samples, choose
    the one with the best validation AUROC (first wins ties), and score it on validation and test.

    ``max_fit_samples`` caps the OC-SVM fit set (seeded subsample); Isolation Forest uses all samples and
    subsamples per tree itself. Deterministic for a given ``seed``. The test split is only scored after
    the choice is made.

    Raises ConfigError for an unknown ``name``, an empty grid or ``max_fit_samples < 1``; DataError if a
    candidate yields NaN scores.
    """
    candidates = _candidates(name, grid, max_fit_samples)
    x_train = _fit_samples(name, _flat(data.x_train), max_fit_samples, seed)
    x_val = _flat(data.x_val)

    fitter = _FITTERS[name]
    best: tuple[float, int, Scorer, float] | None = None
    table: list[tuple[Hyperparameters, float]] = []
    start = time.perf_counter()
    for i, hp in enumerate(candidates):
        t0 = time.perf_counter()
        scorer = fitter(x_train, hp, seed)
        fit_seconds = time.perf_counter() - t0
        val_auroc = auroc(data.y_val, scorer(x_val))
        table.append((hp, val_auroc))
        if best is None or val_auroc > best[0]:
            best = (val_auroc, i, scorer, fit_seconds)
    search_seconds = time.perf_counter() - start
    assert best is not None
    val_auroc, i, scorer, fit_seconds = best

    # Only now does the test split enter.
    val_scores = scorer(x_val)
    test_scores = scorer(_flat(data.x_test))
    oracle = data.y_val_oracle
    defined = oracle is not None and np.unique(oracle).size == 2
    return BaselineResult(
        method=name,
        hyperparameters=candidates[i],
        val_auroc=val_auroc,
        val_ap=average_precision(data.y_val, val_scores),
        test_auroc=auroc(data.y_test, test_scores),
        test_ap=average_precision(data.y_test, test_scores),
        fit_seconds=fit_seconds,
        n_candidates=len(candidates),
        search_seconds=search_seconds,
        n_fit_samples=int(x_train.shape[0]),
        candidates=tuple(table),
        scorer=scorer,
        val_auroc_oracle=auroc(oracle, val_scores) if defined else None,
        val_ap_oracle=average_precision(oracle, val_scores) if defined else None,
    )


def _candidates(name: BaselineName, grid: Sequence[Mapping[str, Any]] | None,
                max_fit_samples: int) -> list[Hyperparameters]:
    """The hyperparameter candidates of ``name`` (``grid`` or :func:`default_grid`), after checking
    the arguments of :func:`fit_baseline`."""
    if name not in _FITTERS:
        raise ConfigError(f"unknown baseline {name!r} (known: {', '.join(sorted(_FITTERS))})")
    if max_fit_samples < 1:
        raise ConfigError(f"max_fit_samples must be >= 1, got {max_fit_samples}")
    candidates = [dict(hp) for hp in (default_grid(name) if grid is None else grid)]
    if not candidates:
        raise ConfigError(f"{name}: the hyperparameter grid is empty")
    return candidates


def _fit_samples(name: BaselineName, x_train: np.ndarray, max_fit_samples: int, seed: int) -> np.ndarray:
    """The rows every candidate is fitted on: for OC-SVM a seeded subsample of at most
    ``max_fit_samples`` (in their original order), else all of ``x_train``."""
    if name == "ocsvm" and x_train.shape[0] > max_fit_samples:
        keep = np.random.default_rng(seed).choice(x_train.shape[0], max_fit_samples, replace=False)
        x_train = x_train[np.sort(keep)]
    return x_train


def _flat(x: np.ndarray) -> np.ndarray:
    # float64: libsvm works in double anyway, and one conversion here avoids one per candidate.
    return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
