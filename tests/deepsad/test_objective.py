from __future__ import annotations

import torch

from deepsad.objective import adjust_center, deep_sad_losses, reconstruction_errors, squared_distance


def test_adjust_center_pushes_small_coordinates_to_plus_minus_0_1() -> None:
    c = torch.tensor([0.05, -0.05, 0.0, 0.5, -0.2, 0.1, -0.0999])
    assert torch.allclose(adjust_center(c), torch.tensor([0.1, -0.1, 0.1, 0.5, -0.2, 0.1, -0.1]))


def test_deep_sad_loss_per_semi_target() -> None:
    dist = torch.tensor([4.0, 4.0, 4.0])
    targets = torch.tensor([0, 1, -1])
    eta, eps = 2.0, 1e-6
    losses = deep_sad_losses(dist, targets, eta, eps)
    assert torch.allclose(losses, torch.tensor([4.0, eta * (4.0 + eps), eta / (4.0 + eps)]))


def test_without_labels_eta_is_irrelevant_deep_svdd() -> None:
    dist = torch.rand(10)
    zeros = torch.zeros(10, dtype=torch.int64)
    assert torch.equal(deep_sad_losses(dist, zeros, 0.1), deep_sad_losses(dist, zeros, 10.0))
    assert torch.equal(deep_sad_losses(dist, zeros, 1.0), dist)


def test_labeled_anomalies_are_pushed_away() -> None:
    dist = torch.tensor([0.5], requires_grad=True)
    deep_sad_losses(dist, torch.tensor([-1]), 1.0).sum().backward()
    assert dist.grad is not None and float(dist.grad) < 0  # loss falls as the distance grows


def test_score_and_reconstruction() -> None:
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    c = torch.tensor([1.0, 0.0])
    assert torch.equal(squared_distance(z, c), torch.tensor([4.0, 1.0]))
    x = torch.zeros(2, 1, 2, 2)
    assert torch.equal(reconstruction_errors(torch.ones_like(x), x), torch.tensor([4.0, 4.0]))
