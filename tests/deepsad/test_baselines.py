"""Isolation Forest and OC-SVM baselines on real data (scikit-learn's breast cancer set)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from deepsad.baselines import BaselineData, default_grid, fit_baseline
from deepsad.errors import ConfigError, DataError

# Two Isolation Forest candidates instead of six keep most tests fast; the leakage test runs full grids.
SMALL_IFOREST_GRID: list[dict[str, Any]] = [
    {"n_estimators": 50, "max_samples": "auto"},
    {"n_estimators": 50, "max_samples": 1.0},
]


@pytest.fixture(scope="module")
def data() -> BaselineData:
    """Benign tumours are normal (0), malignant ones anomalies (1); a 5% polluted training set; min-max
    scaling fitted on the training set only."""
    x, target = load_breast_cancer(return_X_y=True)
    y = (target == 0).astype(np.int64)  # sklearn: 0 = malignant
    rng = np.random.default_rng(0)
    normal, anomalous = rng.permutation(np.flatnonzero(y == 0)), rng.permutation(np.flatnonzero(y == 1))
    train = np.r_[normal[:200], anomalous[:10]]
    val = np.r_[normal[200:270], anomalous[10:40]]
    test = np.r_[normal[270:], anomalous[40:]]
    lo, hi = x[train].min(axis=0), x[train].max(axis=0)

    def scale(idx: np.ndarray) -> np.ndarray:
        return ((x[idx] - lo) / (hi - lo)).astype(np.float32)

    return BaselineData(scale(train), scale(val), y[val], scale(test), y[test])


def test_ocsvm_beats_chance_and_reports_its_choice(data: BaselineData) -> None:
    result = fit_baseline("ocsvm", data, seed=0)
    assert result.method == "ocsvm" and result.n_candidates == 40 == len(result.candidates)
    assert set(result.hyperparameters) == {"kernel", "gamma", "nu"}
    assert result.hyperparameters["gamma"] in [2.0**e for e in range(-7, 3)]
    assert result.hyperparameters["nu"] in (0.01, 0.05, 0.1, 0.2)
    assert result.val_auroc == max(auc for _, auc in result.candidates)
    assert result.val_auroc > 0.9 and result.test_auroc > 0.9 and result.test_ap > 0.8
    assert result.n_fit_samples == 210 and result.fit_seconds >= 0
    assert result.to_dict()["hp.nu"] == result.hyperparameters["nu"]


def test_isoforest_beats_chance(data: BaselineData) -> None:
    result = fit_baseline("isoforest", data, seed=0, grid=SMALL_IFOREST_GRID)
    assert result.n_candidates == 2 and result.hyperparameters in SMALL_IFOREST_GRID
    assert result.val_auroc > 0.85 and result.test_auroc > 0.85


def _corrupt_test(data: BaselineData) -> BaselineData:
    rng = np.random.default_rng(99)
    return dataclasses.replace(
        data,
        x_test=rng.random(data.x_test.shape, dtype=np.float32),
        y_test=rng.permutation(data.y_test),
    )


@pytest.mark.parametrize(("name", "grid"), [("ocsvm", None), ("isoforest", None)])
def test_test_split_never_influences_the_choice(data: BaselineData, name: str, grid: list | None) -> None:
    clean = fit_baseline(name, data, seed=0, grid=grid)  # type: ignore[arg-type]
    corrupted = fit_baseline(name, _corrupt_test(data), seed=0, grid=grid)  # type: ignore[arg-type]
    assert corrupted.hyperparameters == clean.hyperparameters
    assert (corrupted.val_auroc, corrupted.val_ap) == (clean.val_auroc, clean.val_ap)
    assert [auc for _, auc in corrupted.candidates] == [auc for _, auc in clean.candidates]
    assert corrupted.test_auroc != clean.test_auroc  # the test split was really different


def test_deterministic_given_seed_and_subsampling(data: BaselineData) -> None:
    a = fit_baseline("isoforest", data, seed=3, grid=SMALL_IFOREST_GRID)
    b = fit_baseline("isoforest", data, seed=3, grid=SMALL_IFOREST_GRID)
    assert (a.hyperparameters, a.val_auroc, a.test_auroc, a.test_ap) == (
        b.hyperparameters,
        b.val_auroc,
        b.test_auroc,
        b.test_ap,
    )
    grid: list[dict[str, Any]] = [{"kernel": "rbf", "gamma": 1.0, "nu": 0.1}]
    c = fit_baseline("ocsvm", data, seed=5, max_fit_samples=100, grid=grid)
    d = fit_baseline("ocsvm", data, seed=5, max_fit_samples=100, grid=grid)
    e = fit_baseline("ocsvm", data, seed=6, max_fit_samples=100, grid=grid)
    assert c.n_fit_samples == 100 and c.test_auroc == d.test_auroc
    assert e.test_auroc != c.test_auroc  # a different subsample


def test_images_are_flattened() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 4, 4), dtype=np.float32)
    y = np.r_[np.zeros(20, dtype=np.int64), np.ones(10, dtype=np.int64)]
    x_eval = np.concatenate([x[:20], x[:10] + 3.0])  # far-away anomalies
    data = BaselineData(x, x_eval, y, x_eval, y)
    assert data.n_features == 16
    assert (
        fit_baseline("ocsvm", data, seed=0, grid=[{"kernel": "rbf", "gamma": 0.5, "nu": 0.1}]).test_auroc
        == 1.0
    )


def test_bad_inputs(data: BaselineData) -> None:
    with pytest.raises(ConfigError, match="unknown baseline 'knn'"):
        fit_baseline("knn", data, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown baseline"):
        default_grid("knn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="grid is empty"):
        fit_baseline("ocsvm", data, seed=0, grid=[])
    with pytest.raises(DataError, match="y_val must contain both normal and anomalous"):
        dataclasses.replace(data, y_val=np.zeros_like(data.y_val))
    with pytest.raises(DataError, match="x_test has 29 features per sample, x_train 30"):
        dataclasses.replace(data, x_test=data.x_test[:, :29])
    with pytest.raises(DataError, match=r"y_test must have shape"):
        dataclasses.replace(data, y_test=data.y_test[:-1])
    with pytest.raises(DataError, match="x_train contains NaN"):
        dataclasses.replace(data, x_train=np.full_like(data.x_train, np.nan))
