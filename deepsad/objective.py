"""The Deep SAD objective: centre c, the semi-supervised loss with η, and the anomaly score.

Paper (Ruff et al., 2020, eq. 3), per sample with embedding z = φ(x; W):

    unlabeled (ỹ = 0):        ||z - c||²
    labeled   (ỹ = ±1):       η · (||z - c||² + ε)^ỹ

so labeled normals (+1) are pulled to c and labeled anomalies (−1) are pushed away through the
inverse distance. With no labeled samples η has no effect and the loss is Deep SVDD's.
"""

from __future__ import annotations

import torch

#: Numerical stabiliser of the inverse distance for labeled anomalies (reference value).
EPS = 1e-6

#: Centre coordinates closer to 0 than this are pushed to ±C_MIN (the reference's trick against the
#: trivial solution of mapping everything to a zero centre with zero weights).
C_MIN = 0.1


def adjust_center(c: torch.Tensor, c_min: float = C_MIN) -> torch.Tensor:
    """Push coordinates with ``|c_i| < c_min`` to ``±c_min`` (sign kept; an exact 0 goes to +c_min).

    c: (rep_dim,) -> (rep_dim,)
    """
    small = c.abs() < c_min
    pushed = torch.where(c < 0, torch.full_like(c, -c_min), torch.full_like(c, c_min))
    return torch.where(small, pushed, c)


def squared_distance(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||z - c||² per sample. z: (B, rep_dim), c: (rep_dim,) -> (B,). This is the anomaly score."""
    return ((z - c) ** 2).sum(dim=1)


def deep_sad_losses(dist: torch.Tensor, semi_targets: torch.Tensor, eta: float, eps: float = EPS) -> torch.Tensor:
    """Per-sample Deep SAD loss.

    dist: (B,) squared distances; semi_targets: (B,) in {+1, -1, 0} -> (B,).
    """
    labeled = eta * (dist + eps) ** semi_targets.to(dist.dtype)
    return torch.where(semi_targets == 0, dist, labeled)


def reconstruction_errors(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squared reconstruction errors. x_hat, x: (B, ...) -> (B,)."""
    return ((x_hat - x) ** 2).flatten(1).sum(dim=1)
