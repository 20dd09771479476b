"""The stacked view of K networks equals torch's modules: masked BatchNorm and StackedAdam."""

from __future__ import annotations

import copy

import torch
from torch.func import vmap

from deepsad.networks import NetConfig, build_autoencoder
from deepsad.stacked import StackedAdam, StackedNet


def test_masked_batchnorm_matches_torch_in_training_and_eval() -> None:
    torch.manual_seed(0)
    nets = [build_autoencoder(NetConfig("mnist_lenet", 32, (1, 28, 28))) for _ in range(3)]
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, torch.device("cpu"))
    x = torch.rand(3, 12, 1, 28, 28)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False  # member 1: a batch of 9 padded to 12
    out, stats = vmap(view.train_forward)(flat, x, mask)
    accept = torch.tensor([True, True, False])  # member 2 takes no step
    before = {n: v.clone() for n, v in buffers.items()}
    view.update_running_stats(buffers, stats, accept)
    for k in range(2):
        ref = copy.deepcopy(nets[k]).train()
        torch.testing.assert_close(out[k][mask[k]], ref(x[k][mask[k]]), rtol=1e-5, atol=1e-5)
        for name, value in ref.state_dict().items():  # running mean, unbiased var, batch count
            torch.testing.assert_close(view.state_dict(flat, buffers, k)[name], value, rtol=1e-5, atol=1e-7)
        ref.eval()
        evaluated = vmap(view.eval_forward)(flat, buffers, x)[k]
        torch.testing.assert_close(evaluated, ref(x[k]), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(buffers[n][2], before[n][2]) for n in buffers)


def test_stacked_adam_matches_torch_adam_and_skips_rejected_members() -> None:
    torch.manual_seed(0)
    lrs, wds = [1e-3, 5e-2, 1e-2], [0.0, 1e-2, 0.5]
    params = [torch.randn(7, requires_grad=True) for _ in range(3)]
    opts = [torch.optim.Adam([p], lr=lr, weight_decay=wd) for p, lr, wd in zip(params, lrs, wds, strict=True)]
    flat = torch.stack([p.detach().clone() for p in params])
    adam = StackedAdam(flat, lrs, wds)
    for step in range(6):
        grads = torch.randn(3, 7)
        accept = torch.tensor([True, step % 2 == 0, True])
        flat = torch.where(accept.view(-1, 1), adam.propose(flat, grads), flat)
        adam.commit(accept)
        for k, (p, opt) in enumerate(zip(params, opts, strict=True)):
            if accept[k]:
                p.grad = grads[k].clone()
                opt.step()
    for k, p in enumerate(params):
        torch.testing.assert_close(flat[k], p.detach(), rtol=1e-6, atol=1e-7)
    assert adam.step_count.tolist() == [6, 3, 6]


def test_a_member_stepped_alone_equals_the_vectorised_step_bit_for_bit() -> None:
    """propose_row/commit_row (the loop strategy, one member per thread) do StackedAdam's arithmetic."""
    torch.manual_seed(1)
    flat = torch.randn(3, 50)
    vectorised = StackedAdam(flat, [1e-3, 5e-2, 1e-2], [0.0, 1e-2, 0.5])
    rows = StackedAdam(flat, [1e-3, 5e-2, 1e-2], [0.0, 1e-2, 0.5])
    rows.own()
    by_rows = flat.clone()
    for step in range(4):
        grads = torch.randn(3, 50)
        accept = torch.tensor([True, step % 2 == 0, True])
        flat = torch.where(accept.view(-1, 1), vectorised.propose(flat, grads), flat)
        vectorised.commit(accept)
        for k in range(3):
            new, moments = rows.propose_row(k, by_rows[k], grads[k])
            if accept[k]:
                by_rows[k] = new
                rows.commit_row(k, moments)
    assert torch.equal(by_rows, flat)
    assert torch.equal(rows.exp_avg, vectorised.exp_avg) and torch.equal(rows.exp_avg_sq, vectorised.exp_avg_sq)
    assert torch.equal(rows.step_count, vectorised.step_count)
