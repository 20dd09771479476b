"""Small real splits shared by the bundle, pool and stacked-network tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepsad.data.dataset import Dataset
from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split


def _digits_split(normal: tuple[int, ...], known: int, seed: int, pollution: float) -> SemiSupervisedSplit:
    return make_split(load_dataset("digits", None), Protocol(
        normal_classes=normal, known_anomaly_classes=(known,), n_labeled_anomalies=8, ratio_pollution=pollution,
        seed=seed))


@pytest.fixture(scope="module")
def digits_splits() -> list[SemiSupervisedSplit]:
    """Three splits of different sizes (103, 121, ~215 training samples) and protocols."""
    return [_digits_split((0,), 1, 0, 0.05), _digits_split((0,), 1, 1, 0.2), _digits_split((2, 3), 4, 0, 0.1)]


@pytest.fixture(scope="module")
def mnist_splits(shared_data: Path) -> list[SemiSupervisedSplit]:
    full = load_dataset("mnist", shared_data)
    assert full.x_test is not None and full.y_test is not None
    small = Dataset("mnist", "image", full.x_train[:1200], full.y_train[:1200], full.x_test[:300],
                    full.y_test[:300], source="test slice")
    return [make_split(small, Protocol(normal_classes=n, known_anomaly_classes=(a,), n_labeled_anomalies=m,
                                       ratio_pollution=0.05, seed=s))
            for n, a, m, s in [((0,), 1, 5, 0), ((0,), 1, 3, 1), ((2, 3), 4, 5, 0)]]
