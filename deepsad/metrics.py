"""Detection metrics: AUROC, average precision, TPR at a fixed FPR, and FPR-calibrated thresholds.

Conventions everywhere: labels are 0 (normal) / 1 (anomaly), a higher score means more anomalous, and a
sample is flagged as an anomaly when ``score > threshold``. Inputs may be numpy arrays, torch tensors or
sequences; all are 1-D ``(N,)``. Errors a diverged model or a bad split can cause are DataError (never a
scikit-learn ValueError), so a sweep records them as a failed trial with a readable reason.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsad.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

# torch and scikit-learn are imported where a metric is computed: the names and label rules below are read
# by sweep-file checks that must stay quick


def _as_1d(x: Any, name: str) -> np.ndarray:
    torch_ = sys.modules.get("torch")  # a tensor exists only if torch is imported
    if torch_ is not None and isinstance(x, torch_.Tensor):
        x = x.detach().to("cpu", torch_.float64).numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    return arr


def _scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = _as_1d(scores, name)
    if s.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise DataError(f"{name} contain NaN: the model diverged ({int(np.isnan(s).sum())} of {s.size})")
    if np.isinf(s).any():
        raise DataError(f"{name} contain inf: the model diverged ({int(np.isinf(s).sum())} of {s.size})")
    return s


def _labels_and_scores(labels: Any, scores: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y = _as_1d(labels, "labels")
    s = _scores(scores)
    if y.shape != s.shape:
        raise DataError(f"{metric}: {y.shape[0]} labels but {s.shape[0]} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise DataError(f"{metric}: labels must be 0 (normal) or 1 (anomaly), got {bad.tolist()}")
    y = y.astype(np.int64)
    n_anomalous = int(y.sum())
    if n_anomalous == 0 or n_anomalous == y.size:
        present = "no samples" if y.size == 0 else f"only label {int(y[0])} ({y.size} samples)"
        raise DataError(f"{metric} needs both normal (0) and anomalous (1) samples; got {present}")
    return y, s


#: Every run's validation metrics. ``val_auroc`` / ``val_ap`` use only the labels a user has: the labelled
#: anomalies of the validation part (semi-target -1) are the positives, everything else (labelled normals
#: and every unlabelled sample, polluted or not) counts as normal. ``*_oracle`` use the true labels, which
#: no user has for the unlabelled samples: reported for comparison with published protocols only.
VALIDATION_METRICS = ("val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle")


def known_labels(semi_targets: Any) -> np.ndarray:
    """The validation labels a user has: 1 for a labelled anomaly (semi-target -1), else 0 (labelled
    normals and the unlabelled rest, treated as normal). Depends on ``semi_targets`` alone, never on the
    true labels."""
    return (np.asarray(semi_targets) == -1).astype(np.int64)


def validation_labels(metric: str, *, semi_targets: Any, labels: Any) -> np.ndarray:
    """The 0/1 labels that validation metric ``metric`` (one of :data:`VALIDATION_METRICS`) ranks on:
    :func:`known_labels` for ``val_auroc`` / ``val_ap``, the true ``labels`` for the ``_oracle`` ones.

    Raises:
        ConfigError: an unknown metric.
    """
    if metric not in VALIDATION_METRICS:
        raise ConfigError(f"validation metric: must be one of {', '.join(VALIDATION_METRICS)} (got {metric!r})")
    return np.asarray(labels).astype(np.int64) if metric.endswith("_oracle") else known_labels(semi_targets)


def rankable(labels: Any) -> bool:
    """Whether ``labels`` hold both classes (else AUROC and AP are undefined: the metric is None)."""
    return len(np.unique(np.asarray(labels))) == 2


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve. ``labels``, ``scores``: ``(N,)``.

    Raises DataError if only one class is present, lengths differ, labels are not 0/1, or scores contain
    NaN/inf.
    """
    y, s = _labels_and_scores(labels, scores, "AUROC")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision (area under the precision-recall curve, anomalies as positives). Same errors as
    :func:`auroc`."""
    y, s = _labels_and_scores(labels, scores, "average precision")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def _check_fpr(fpr: float) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr must be in [0, 1), got {fpr!r}")
    return float(fpr)


def threshold_at_fpr(normal_scores: Any, fpr: float) -> float:
    """The lowest threshold ``t`` (among the given scores) with ``mean(normal_scores > t) <= fpr``.

    ``normal_scores``: ``(N,)`` scores of normal validation samples. With ``m = floor(fpr * N)`` allowed
    false positives this is the ``(m+1)``-th largest normal score, so at most ``m`` normal scores lie
    strictly above it (ties at ``t`` are not flagged). ``fpr=0`` gives ``max(normal_scores)``.

    Raises ConfigError if ``fpr`` is outside ``[0, 1)``, DataError if ``normal_scores`` is empty or holds
    NaN/inf.
    """
    fpr = _check_fpr(fpr)
    s = _scores(normal_scores, "normal scores")
    if s.size == 0:
        raise DataError("threshold_at_fpr: no normal scores given")
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing one allowed false positive.
    m = min(math.floor(fpr * s.size + 1e-9), s.size - 1)
    return float(np.sort(s)[::-1][m])


def tpr_at_fpr(labels: Any, scores: Any, fpr: float) -> float:
    """True-positive rate at the threshold :func:`threshold_at_fpr` picks on the normal samples' scores.

    ``labels``, ``scores``: ``(N,)``. Same errors as :func:`auroc` and :func:`threshold_at_fpr`.
    """
    fpr = _check_fpr(fpr)
    y, s = _labels_and_scores(labels, scores, "TPR at FPR")
    t = threshold_at_fpr(s[y == 0], fpr)
    return float(np.mean(s[y == 1] > t))


def batched_auroc_ap(labels: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC and average precision of K score vectors at once, on their device.

    ``labels``: (K, L) 0/1, ``scores``: (K, L), ``valid``: (K, L) bool — row k's samples are the valid
    entries (rows may have different lengths, padded to L). Returns two (K,) float64 tensors equal to
    :func:`auroc` and :func:`average_precision` of each row (ties count as scikit-learn counts them:
    one threshold per distinct score), NaN for a row without both classes or with a non-finite score.
    """
    import torch

    s = torch.where(valid, scores.double(), torch.full_like(scores, -math.inf, dtype=torch.float64))
    bad = (valid & ~torch.isfinite(scores.double())).any(1)
    s = torch.where(bad.view(-1, 1) & valid, torch.zeros_like(s), s)  # keep the sort well-defined
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    s = s.gather(1, order)
    pos = (labels.gather(1, order) == 1) & valid.gather(1, order)
    neg = (labels.gather(1, order) != 1) & valid.gather(1, order)
    tps, fps = pos.double().cumsum(1), neg.double().cumsum(1)
    # A threshold per distinct score: the points of the curves are the ends of runs of equal scores.
    end = torch.ones_like(pos)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    idx = torch.arange(s.shape[1], device=s.device).expand_as(s)
    last_end = torch.where(end, idx, torch.full_like(idx, -1)).cummax(1).values
    prev = torch.cat([torch.full_like(last_end[:, :1], -1), last_end[:, :-1]], 1)  # previous point, -1: origin
    zero = torch.zeros_like(tps)
    tps_prev = torch.where(prev >= 0, tps.gather(1, prev.clamp(min=0)), zero)
    fps_prev = torch.where(prev >= 0, fps.gather(1, prev.clamp(min=0)), zero)
    n_pos, n_neg = tps[:, -1], fps[:, -1]
    area = torch.where(end, (fps - fps_prev) * (tps + tps_prev) / 2, zero).sum(1)
    precision = tps / (tps + fps).clamp(min=1)
    ap = torch.where(end, (tps - tps_prev) * precision, zero).sum(1)
    undefined = bad | (n_pos == 0) | (n_neg == 0)
    nan = torch.full_like(area, math.nan)
    return (torch.where(undefined, nan, area / (n_pos * n_neg).clamp(min=1)),
            torch.where(undefined, nan, ap / n_pos.clamp(min=1)))
