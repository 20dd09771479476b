"""Where one bundled training step's time goes: the vmap strategy's step against a bare vmap(grad) probe.

For each K (members), phase (``ae``: MNIST LeNet autoencoder, ``sad``: its encoder with the Deep SAD
loss) and decoder formulation (``--deconv``, :data:`deepsad.networks.DeconvFormulation`), on random
MNIST-shaped data at batch 128, the median over ``--steps`` timed steps (after warm-up) of:

* ``probe_ms`` — a bare ``vmap(grad(loss))`` of the same network: torch's BatchNorm on batch
  statistics (no mask, no running statistics), no optimiser — the issue's yardstick;
* ``grad_ms`` — :meth:`deepsad.bundle_strategies.VmapStrategy.gradients`: masked BatchNorm and its
  statistics, the row mask, the loss;
* ``step_ms`` — :meth:`~deepsad.bundle_strategies.VmapStrategy.run_steps` per step: the gradient plus
  the batch gather, StackedAdam, the finiteness checks, masked acceptance and running statistics;

and, per step of ``run_steps``: ``syncs`` — host synchronisations (CPU: calls of ``item``, ``tolist``,
``__bool__``, ``__float__``, ``__int__``, ``cpu``, ``numpy`` on tensors; CUDA: warnings of
``torch.cuda.set_sync_debug_mode``), ``ops`` — aten operators the profiler records, and with
``--profile N`` the top N operators (CPU) or kernels (CUDA) by self time: name, calls, ms.

    python benchmarks/bench_step.py --k 8 --phase ae,sad --deconv transpose,phase --steps 5
    python benchmarks/bench_step.py --device cuda --k 64,512 --profile 15 --json step.json

Needs torch and the deepsad package only. The JSON is rewritten after every measured case.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.bundle_phase import BundlePhase  # noqa: E402
from deepsad.networks import NetConfig, build_autoencoder, build_encoder, set_deconv_formulation  # noqa: E402
from deepsad.objective import reconstruction_errors, squared_distance  # noqa: E402
from deepsad.pool import EpochPlan, PooledPart, SamplePool, epoch_plan  # noqa: E402
from deepsad.stacked import StackedNet  # noqa: E402
from deepsad.training import OptimConfig  # noqa: E402

BATCH = 128
NET = NetConfig("mnist_lenet", 32, (1, 28, 28))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], object], device: torch.device, steps: int) -> float:
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


#: Tensor methods that wait for the device (on a CPU they mark where a GPU would wait).
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


@contextlib.contextmanager
def count_host_syncs(device: torch.device) -> Iterator[list[int]]:
    """Count host synchronisations inside the block (see the module docstring); yields a 1-list."""
    count = [0]
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count[0] = sum("synchroniz" in str(w.message) for w in caught)
        return
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counting(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *a: Any, **kw: Any) -> Any:
            count[0] += 1
            return original(self, *a, **kw)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _probe(template: nn.Module, phase: str, net: StackedNet) -> Callable[..., torch.Tensor]:
    """vmap(grad(loss)) of ``template`` with torch's BatchNorm on batch statistics (no buffers)."""
    module = copy.deepcopy(template)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    module.train()

    def loss(flat: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, net.params(flat), (x,))
        losses = reconstruction_errors(out, x) if phase == "ae" else squared_distance(out, c)
        return losses.mean()

    return vmap(grad(loss))


def build(k: int, phase: str, deconv: str, device: torch.device, n_samples: int, batch: int = BATCH,
          bf16: bool = False) -> tuple[BundlePhase, nn.Module]:
    """K members of one phase on random data of ``n_samples`` rows per member (one shared pool)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_samples, 1, 28, 28, generator=gen)
    semi = torch.zeros(n_samples, dtype=torch.int64)
    semi[: n_samples // 100] = -1
    rows = torch.arange(n_samples)
    part = PooledPart(rows.to(device), rows, semi, semi.neg().numpy())
    nets: list[nn.Module] = []
    for m in range(k):
        torch.manual_seed(m)
        nets.append(set_deconv_formulation(build_autoencoder(NET), deconv)  # type: ignore[arg-type]
                    if phase == "ae" else build_encoder(NET))
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, device)
    optim = OptimConfig(lr=1e-4, epochs=1, batch_size=batch, weight_decay=0.5e-6)
    c = torch.full((k, NET.rep_dim), 0.1, device=device) if phase == "sad" else None
    ph = BundlePhase(phase=phase, net=view, template=nets[0], flat=flat, buffers=buffers,  # type: ignore[arg-type]
                     pool=SamplePool(x.to(device)), parts=[part] * k, optims=[optim] * k, seeds=list(range(k)),
                     alive=[True] * k, bf16=bf16, strategy="vmap", c=c,
                     eta=torch.ones(k, device=device) if phase == "sad" else None)
    return ph, nets[0]


def _cut(plan: EpochPlan, steps: int) -> EpochPlan:
    return EpochPlan(plan.rows[:steps], plan.semi_targets[:steps], plan.valid[:steps], plan.active[:steps],
                     plan.widths[:steps], plan.full[:steps])


def profile_step(fn: Callable[[], object], device: torch.device, top: int) -> tuple[int, list[dict[str, Any]]]:
    """(aten operators recorded in one call of ``fn``, the top operators/kernels by self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    if device.type == "cuda":
        kernels = [e for e in events if getattr(e, "self_device_time_total", 0) > 0 and not e.key.startswith("aten::")]
        kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
        rows = [{"name": e.key[:120], "calls": e.count, "ms": e.self_device_time_total / 1e3} for e in kernels[:top]]
    else:
        aten = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                      reverse=True)
        rows = [{"name": e.key, "calls": e.count, "ms": e.self_cpu_time_total / 1e3} for e in aten[:top]]
    return ops, rows


def measure(k: int, phase: str, deconv: str, device: torch.device, steps: int, top: int, batch: int = BATCH,
            bf16: bool = False) -> dict[str, Any]:
    ph, template = build(k, phase, deconv, device, batch * 4, batch, bf16)
    plan = epoch_plan(ph.parts, ph.generators, batch, [True] * k, device)
    strategy = ph.strategy
    x0 = ph.pool.x[plan.rows[0]]
    full0 = plan.full[0]
    probe = _probe(template, phase, ph.net)
    c = ph.c

    def grad_only() -> object:
        return strategy.gradients(ph.flat, x0, plan.semi_targets[0], plan.valid[0], c, full0)  # type: ignore[attr-defined]

    def probe_only() -> object:
        return probe(ph.flat, x0, c)

    one = _cut(plan, 1)

    def full_step() -> object:
        return strategy.run_steps(ph, one)

    for fn in (grad_only, probe_only, full_step, full_step):
        fn()
    out: dict[str, Any] = {"k": k, "phase": phase, "deconv": deconv if phase == "ae" else None,
                           "precision": "bf16" if bf16 else "fp32",
                           "probe_ms": _median_ms(probe_only, device, steps),
                           "grad_ms": _median_ms(grad_only, device, steps),
                           "step_ms": _median_ms(full_step, device, steps)}
    with count_host_syncs(device) as syncs:
        strategy.run_steps(ph, _cut(plan, 2))
    out["syncs_per_step"] = syncs[0] / 2
    out["ops_per_step"], out["top"] = profile_step(full_step, device, top)
    out["probe_ops"], _ = profile_step(probe_only, device, 0)
    out["samples_per_s"] = k * batch / (out["step_ms"] / 1e3)
    ph.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--k", default="8", help="comma-separated bundle sizes")
    ap.add_argument("--phase", default="ae,sad")
    ap.add_argument("--deconv", default="transpose,phase", help="decoder formulations (AE phase)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per figure (medians)")
    ap.add_argument("--batch", type=int, default=BATCH, help="rows per member and step")
    ap.add_argument("--profile", type=int, default=10, help="top-N operators/kernels by self time")
    ap.add_argument("--bf16-at", default="", help="bundle sizes at which bf16 autocast is measured too "
                    "(the first --deconv formulation and the Deep SAD phase; the probe stays fp32)")
    ap.add_argument("--json", help="write the figures here (rewritten after every case)")
    ns = ap.parse_args()
    device = torch.device(ns.device)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, batch {ns.batch}")
    results: list[dict[str, Any]] = []
    deconvs = ns.deconv.split(",")
    bf16_at = {int(v) for v in ns.bf16_at.split(",") if v.strip()}
    cases = []
    for k in (int(v) for v in ns.k.split(",")):
        for phase in ns.phase.split(","):
            cases += [(k, phase, d, False) for d in (deconvs if phase == "ae" else ["-"])]
        cases += [(k, phase, deconvs[0] if phase == "ae" else "-", True) for phase in ns.phase.split(",")
                  if k in bf16_at]
    for k, phase, deconv, bf16 in cases:
        r = measure(k, phase, deconv, device, ns.steps, ns.profile, ns.batch, bf16)
        results.append(r)
        print(f"K={k:4d} {phase:3s} {deconv:9s} {r['precision']}  probe {r['probe_ms']:8.2f} ms  grad "
              f"{r['grad_ms']:8.2f} ms  step {r['step_ms']:8.2f} ms  ({r['samples_per_s']:,.0f} samples/s)  "
              f"{r['ops_per_step']} ops/step (probe {r['probe_ops']}), {r['syncs_per_step']:g} syncs/step", flush=True)
        for row in r["top"]:
            print(f"      {row['ms']:9.2f} ms  {row['calls']:5d}x  {row['name']}")
        if ns.json:
            Path(ns.json).write_text(json.dumps({"device": str(device), "batch": ns.batch, "results": results},
                                                indent=1))
        if device.type == "cuda":
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
