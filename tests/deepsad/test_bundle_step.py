"""The vmap strategy's step: torch's BatchNorm on unpadded steps equals the masked one, batch plans
say which steps are unpadded and how wide they are, and a step never waits for the host."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.func import vmap

from deepsad.bundle_phase import BundlePhase
from deepsad.networks import NetConfig, build_autoencoder, build_encoder
from deepsad.pool import PooledPart, SamplePool, epoch_plan
from deepsad.stacked import StackedNet
from deepsad.training import OptimConfig

NET = NetConfig("mnist_lenet", 32, (1, 28, 28))


def test_unpadded_steps_use_torchs_batchnorm_with_the_same_numbers() -> None:
    """``full`` (torch's kernel, statistics from its saved inverse std) against the masked path and
    torch's own modules: outputs, running mean, unbiased running variance, gradients."""
    torch.manual_seed(0)
    nets = [build_autoencoder(NET) for _ in range(3)]
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, torch.device("cpu"))
    x = torch.rand(3, 10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.bool)

    def loss(full: bool) -> Callable[..., tuple[torch.Tensor, Any]]:
        def f(flat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
            out, stats = view.train_forward(flat, x, mask, full)
            return (out - x).square().sum(), (out.detach(), stats)
        return f

    results = {}
    for full in (False, True):
        g, (out, stats) = vmap(torch.func.grad(loss(full), has_aux=True))(flat, x, mask)
        bufs = dict(buffers)
        view.update_running_stats(bufs, stats, torch.ones(3, dtype=torch.bool))
        results[full] = (g, out, bufs)
    (g0, out0, b0), (g1, out1, b1) = results[False], results[True]
    torch.testing.assert_close(out1, out0, rtol=0, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-5 * float(g0.abs().max()))
    for name in b0:
        torch.testing.assert_close(b1[name], b0[name], rtol=1e-5, atol=1e-7, msg=name)
    for k in range(3):  # and torch's modules, one member at a time
        ref = copy.deepcopy(nets[k]).train()
        torch.testing.assert_close(out1[k], ref(x[k]), rtol=1e-5, atol=1e-5)
        for name, value in ref.state_dict().items():
            torch.testing.assert_close(view.state_dict(flat, b1, k)[name], value, rtol=1e-5, atol=1e-7)


def _parts(sizes: list[int]) -> list[PooledPart]:
    out = []
    for n in sizes:
        rows = torch.arange(n)
        semi = torch.zeros(n, dtype=torch.int64)
        out.append(PooledPart(rows, rows, semi, semi.numpy()))
    return out


def test_batch_plans_give_each_steps_width_and_whether_it_is_padded() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    plan = epoch_plan(_parts([257, 300, 100]), gens, 128, [True] * 3, torch.device("cpu"))
    # batches: 257 -> 128, 129 (merged); 300 -> 128, 128, 44; 100 -> 100
    assert plan.rows.shape == (3, 3, 129)
    assert plan.widths == (128, 129, 44)
    assert plan.full == (False, False, True)  # step 0: 100 < 128; step 1: 128 < 129; step 2: others sit out
    for s, w in enumerate(plan.widths):  # past a step's width no active member has a row
        assert not (plan.valid[s, :, w:] & plan.active[s].view(-1, 1)).any()
    same = epoch_plan(_parts([256, 256]), gens[:2], 128, [True, True], torch.device("cpu"))
    assert same.widths == (128, 128) and same.full == (True, True)


@contextlib.contextmanager
def host_syncs() -> Iterator[list[str]]:
    """Record calls of the tensor methods that make a GPU wait for the host (here on a CPU)."""
    seen: list[str] = []
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counting(self: torch.Tensor, *a: Any, **kw: Any) -> Any:
            seen.append(name)
            return original(self, *a, **kw)
        return counting

    for n, f in originals.items():
        setattr(torch.Tensor, n, wrap(n, f))
    try:
        yield seen
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("phase", ["ae", "sad"])
def test_a_vmap_step_never_waits_for_the_host(phase: str) -> None:
    """Whole run_steps calls (two steps, one padded) make no host synchronisation: the plan's widths and
    padding flags were decided on the host when it was drawn."""
    k, n = 3, 40
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    nets = [build_autoencoder(NET) if phase == "ae" else build_encoder(NET) for _ in range(k)]
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, torch.device("cpu"))
    parts = _parts([n, n, 30])
    optim = OptimConfig(lr=1e-3, epochs=1, batch_size=16)
    ph = BundlePhase(phase=phase, net=view, template=nets[0], flat=flat, buffers=buffers,  # type: ignore[arg-type]
                     pool=SamplePool(x), parts=parts, optims=[optim] * k, seeds=[0, 1, 2], alive=[True] * k,
                     bf16=False, strategy="vmap", c=torch.full((k, 32), 0.1), eta=torch.ones(k))
    plan = epoch_plan(parts, ph.generators, 16, [True] * k, torch.device("cpu"))
    assert False in plan.full and True in plan.full  # both kinds of step are exercised
    with host_syncs() as seen:
        totals = ph.strategy.run_steps(ph, plan)
    assert seen == []
    assert bool(torch.isfinite(totals).all()) and bool(ph.alive.all())
    assert ph.adam.step_count.tolist() == [3.0, 3.0, 2.0]
