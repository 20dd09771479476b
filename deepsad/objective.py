"""The Deep SAD objective: centre c, the semi-supervised loss with η, and the anomaly score.

Paper (Ruff et al., 2020, eq. 3), per sample with embedding z = φ(x; W):

    unlabeled (ỹ = 0):        ||z - c||²
    labeled   (ỹ = ±1):       η · (||z - c||² + ε)^ỹ

so labeled normals (+1) are pulled to c and labeled anomalies (−1) are pushed away through the
inverse distance. With no labeled samples η has no effect and the loss is Deep SVDD's.

Training has two phases (:data:`Phase`): autoencoder pretraining (``"ae"``, per-sample reconstruction
error) and Deep SAD fine-tuning (``"sad"``, the loss above); :func:`phase_losses` is the one place
that chooses between them.
"""

from __future__ import annotations

from typing import Literal

import torch

#: A training phase: autoencoder pretraining or Deep SAD fine-tuning.
Phase = Literal["ae", "sad"]

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
    """||z - c||² over the last axis. This is the anomaly score.

    z: (..., rep_dim), c broadcastable to z -> (...): e.g. z (B, rep_dim), c (rep_dim,) -> (B,);
    z (K, B, rep_dim), c (K, 1, rep_dim) -> (K, B).
    """
    return ((z - c) ** 2).sum(dim=-1)


def deep_sad_losses(dist: torch.Tensor, semi_targets: torch.Tensor, eta: float | torch.Tensor,
                    eps: float = EPS) -> torch.Tensor:
    """Per-sample Deep SAD loss.

    dist: (B,) squared distances; semi_targets: (B,) in {+1, -1, 0}; eta: a float or a 0-d tensor -> (B,).
    """
    labeled = eta * (dist + eps) ** semi_targets.to(dist.dtype)
    return torch.where(semi_targets == 0, dist, labeled)


def reconstruction_errors(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squared reconstruction errors. x_hat, x: (B, ...) -> (B,)."""
    return ((x_hat - x) ** 2).flatten(1).sum(dim=1)


def phase_losses(
    phase: Phase, out: torch.Tensor, *, x: torch.Tensor | None = None, c: torch.Tensor | None = None,
    semi_targets: torch.Tensor | None = None, eta: float | torch.Tensor = 1.0, eps: float = EPS,
) -> torch.Tensor:
    """Per-sample training loss of ``phase`` for one batch, computed in float32.

    ``"ae"``: reconstruction errors of the autoencoder's output ``out`` (B, ...) against its input
    ``x`` (B, ...). ``"sad"``: Deep SAD losses of the embeddings ``out`` (B, rep_dim) around ``c``
    (rep_dim,) with ``semi_targets`` (B,) and η ``eta`` (float or 0-d tensor). Returns (B,).
    Arguments the phase does not use are ignored.
    """
    if phase == "ae":
        assert x is not None, "the reconstruction loss needs the input x"
        return reconstruction_errors(out.float(), x)
    assert c is not None and semi_targets is not None, "the Deep SAD loss needs c and semi_targets"
    return deep_sad_losses(squared_distance(out.float(), c), semi_targets, eta, eps)
