"""AUROC / AP wrappers, TPR at FPR, and FPR-calibrated thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from deepsad.errors import ConfigError, DataError
from deepsad.metrics import auroc, average_precision, threshold_at_fpr, tpr_at_fpr


@pytest.fixture(scope="module")
def labelled_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, dtype=np.int64), np.ones(50, dtype=np.int64)]
    scores = np.r_[rng.normal(0, 1, 200), rng.normal(1.5, 1, 50)]
    return labels, scores


def test_auroc_and_ap_match_sklearn_for_numpy_and_torch(
    labelled_scores: tuple[np.ndarray, np.ndarray],
) -> None:
    y, s = labelled_scores
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert auroc(torch.from_numpy(y), torch.from_numpy(s).float()) == pytest.approx(
        roc_auc_score(y, s), abs=1e-6
    )
    assert isinstance(auroc(y.astype(bool), s), float)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


@pytest.mark.parametrize("metric", [auroc, average_precision])
def test_one_class_is_a_data_error(metric: object) -> None:
    with pytest.raises(
        DataError, match=r"needs both normal \(0\) and anomalous \(1\) samples; got only label 0"
    ):
        metric(np.zeros(5), np.arange(5.0))  # type: ignore[operator]


@pytest.mark.parametrize("metric", [auroc, average_precision])
def test_nan_scores_mean_divergence(metric: object) -> None:
    with pytest.raises(DataError, match="scores contain NaN: the model diverged"):
        metric([0, 1, 0], [0.1, float("nan"), 0.2])  # type: ignore[operator]


def test_other_bad_inputs() -> None:
    with pytest.raises(DataError, match="scores contain inf"):
        auroc([0, 1], [0.0, float("inf")])
    with pytest.raises(DataError, match="2 labels but 3 scores"):
        auroc([0, 1], [0.0, 1.0, 2.0])
    with pytest.raises(DataError, match=r"labels must be 0 \(normal\) or 1 \(anomaly\), got \[2\]"):
        auroc([0, 1, 2], [0.0, 1.0, 2.0])
    with pytest.raises(DataError, match="must be 1-D"):
        auroc(np.zeros((2, 2)), np.zeros((2, 2)))


def test_threshold_at_fpr_bounds_false_positives() -> None:
    rng = np.random.default_rng(1)
    normal = rng.normal(size=1000)
    for fpr in (0.0, 0.01, 0.05, 0.1, 0.29, 0.5):
        t = threshold_at_fpr(normal, fpr)
        assert np.mean(normal > t) <= fpr
        # the lowest such threshold: the next lower score would exceed the budget
        lower = np.max(normal[normal < t])
        assert np.mean(normal > lower) > fpr
    assert threshold_at_fpr(normal, 0.0) == normal.max()
    assert threshold_at_fpr(np.arange(100.0), 0.29) == 70.0  # 29 scores (71..99) above it


def test_threshold_with_ties_and_torch_input() -> None:
    normal = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    assert threshold_at_fpr(normal, 0.5) == 1.0  # flagging the tied 1.0s would give FPR 0.8


def test_threshold_errors() -> None:
    with pytest.raises(ConfigError, match=r"fpr must be in \[0, 1\), got 1.0"):
        threshold_at_fpr([0.0, 1.0], 1.0)
    with pytest.raises(ConfigError):
        threshold_at_fpr([0.0, 1.0], -0.1)
    with pytest.raises(DataError, match="no normal scores"):
        threshold_at_fpr([], 0.1)
    with pytest.raises(DataError, match="normal scores contain NaN"):
        threshold_at_fpr([0.0, float("nan")], 0.1)


def test_tpr_at_fpr(labelled_scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = labelled_scores
    t = threshold_at_fpr(s[y == 0], 0.05)
    assert tpr_at_fpr(y, s, 0.05) == pytest.approx(np.mean(s[y == 1] > t))
    assert tpr_at_fpr([0, 0, 1, 1], [0.0, 0.1, 0.5, 0.6], 0.0) == 1.0
    assert 0.0 <= tpr_at_fpr(y, s, 0.01) <= tpr_at_fpr(y, s, 0.1) <= 1.0


def test_batched_auroc_ap_equals_the_per_row_metrics_including_ties() -> None:
    from deepsad.metrics import batched_auroc_ap

    rng = np.random.default_rng(1)
    for trial in range(40):
        k, width = 5, 50
        lengths = rng.integers(4, width + 1, k)
        labels = (rng.random((k, width)) < 0.3).astype(np.int64)
        # half the trials draw from a few values, so that tied scores span both classes
        scores = (rng.integers(0, 6, (k, width)) if trial % 2 else rng.normal(size=(k, width))).astype(np.float32)
        valid = np.arange(width)[None, :] < lengths[:, None]
        a, p = batched_auroc_ap(torch.tensor(labels), torch.tensor(scores), torch.tensor(valid))
        for row in range(k):
            y, s = labels[row, : lengths[row]], scores[row, : lengths[row]]
            if 0 < y.sum() < y.size:
                assert a[row].item() == pytest.approx(auroc(y, s), abs=1e-12)
                assert p[row].item() == pytest.approx(average_precision(y, s), abs=1e-12)
            else:
                assert np.isnan(a[row].item()) and np.isnan(p[row].item())
    diverged = torch.tensor([[0.1, float("nan"), 0.3], [0.1, 0.2, 0.3]])
    a, _ = batched_auroc_ap(torch.tensor([[0, 1, 1], [0, 1, 1]]), diverged, torch.ones(2, 3, dtype=torch.bool))
    assert np.isnan(a[0].item()) and a[1].item() == 1.0
