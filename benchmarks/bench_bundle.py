"""Throughput of the bundled trainer: K Deep SAD trials in one process vs one trial at a time.

MNIST, normal class 0, known anomaly class 1, γ_l = 0.01, γ_p = 0.1 (≈ 6.6k training samples per
epoch and member), batch 128, the paper's LeNet, AE pretraining + Deep SAD. Member k of a bundle
has seed k and η = 1 + k mod 4 (a sweep); with ``--distinct-splits`` every member also gets its own
split seed (different training sets, one shared sample pool).

For every K the figures are the median over epochs (the first epoch of each phase is a warm-up and
dropped when there are more) of the aggregate samples/s — all members' training samples over the
epoch's wall time, validation included — and trials/hour = K / (wall time of the whole bundle,
pretraining, centres and test metrics included). The baseline runs ``training.train`` for the same
configurations one after another, as one trial per process would. The reference implementation
runs ≈ 10k samples/s per GPU (see benchmarks/bench_core.py).

    python benchmarks/bench_bundle.py [--k 1,2,4,8] [--device cpu] [--epochs 2] [--bf16]
    python benchmarks/bench_bundle.py --k 1,8,64,256,512 --device cuda --bf16 --epochs 3 --val-every 3

Needs torch and the deepsad package only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.bundle import BundleProgress, train_bundle  # noqa: E402
from deepsad.data.sources import load_dataset  # noqa: E402
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split  # noqa: E402
from deepsad.networks import default_net_config  # noqa: E402
from deepsad.training import EpochReport, OptimConfig, TrainConfig, train  # noqa: E402


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads) · {gpu}")


def _median_rate(rates_by_phase: dict[str, list[float]]) -> float:
    """Median over both phases' epochs, each phase's first epoch dropped when it has more than one."""
    kept = [r for rates in rates_by_phase.values() for r in (rates[1:] if len(rates) > 1 else rates)]
    return statistics.median(kept)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_bundle(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig], val_every: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {"ae": [], "sad": []}

    def on_epoch(p: BundleProgress, _state: object) -> None:
        live = [r for r in p.reports if r is not None]
        if live:
            rates[p.phase].append(sum(r.samples_per_s for r in live))  # all members, one wall time

    _sync(cfgs[0].device)
    t0 = time.perf_counter()
    out = train_bundle(splits, cfgs, on_epoch=on_epoch, val_every=val_every)
    _sync(cfgs[0].device)
    wall = time.perf_counter() - t0
    failed = [m.failure for m in out if m.failure is not None]
    if failed:
        print(f"  warning: {len(failed)} member(s) failed, e.g. {failed[0]}")
    return {"samples_per_s": _median_rate(rates), "trials_per_hour": len(cfgs) * 3600 / wall, "wall_s": wall}


def run_sequential(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig]) -> dict[str, float]:
    rates: dict[str, list[float]] = {"ae": [], "sad": []}
    walls = []
    for split, cfg in zip(splits, cfgs, strict=True):
        reports: list[EpochReport] = []
        _sync(cfg.device)
        t0 = time.perf_counter()
        train(split, cfg, on_epoch=lambda r, _s, reports=reports: reports.append(r))  # type: ignore[misc]
        _sync(cfg.device)
        walls.append(time.perf_counter() - t0)
        for phase in rates:
            rates[phase] += [r.samples_per_s for r in reports if r.phase == phase][1:] or \
                [r.samples_per_s for r in reports if r.phase == phase]
    return {"samples_per_s": statistics.median(rates["ae"] + rates["sad"]),
            "trials_per_hour": 3600 / statistics.median(walls), "wall_s": sum(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--k", default="1,2,4,8", help="comma-separated bundle sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per phase (the first is a warm-up when > 1)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--val-every", type=int, default=1, help="validate every n-th Deep SAD epoch")
    ap.add_argument("--baseline-trials", type=int, default=2, help="sequential training.train runs (0: none)")
    ap.add_argument("--distinct-splits", action="store_true", help="every member gets its own split seed")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    ks = [int(v) for v in args.k.split(",") if v.strip()]

    data = load_dataset("mnist", args.data_dir)
    n_splits = max([*ks, args.baseline_trials]) if args.distinct_splits else 1
    splits = [make_split(data, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), ratio_known_outlier=0.01,
                                        ratio_pollution=0.1, seed=s)) for s in range(n_splits)]
    phase = OptimConfig(epochs=args.epochs, milestones=(max(1, args.epochs - 1),), batch_size=args.batch_size)
    base = TrainConfig(net=default_net_config("mnist", data.sample_shape), sad=phase,
                       ae=replace(phase, weight_decay=0.5e-3), device=args.device, bf16=args.bf16)

    def members(k: int) -> tuple[list[SemiSupervisedSplit], list[TrainConfig]]:
        return ([splits[i % n_splits] for i in range(k)],
                [replace(base, seed=i, eta=1.0 + i % 4) for i in range(k)])

    print(f"machine: {machine()}")
    print(f"mnist LeNet: {len(splits[0].train)} training samples/epoch per member, batch {args.batch_size}, "
          f"device {args.device}{' bf16' if args.bf16 else ''}, {args.epochs} epoch(s) per phase, "
          f"validation every {args.val_every} epoch(s), {'distinct splits' if args.distinct_splits else 'one split'}")
    figures: dict[str, dict[str, float]] = {}
    if args.baseline_trials:
        figures["sequential"] = run_sequential(*members(args.baseline_trials))
    for k in ks:
        figures[f"K={k}"] = run_bundle(*members(k), args.val_every)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    base_rate = figures.get("sequential", {}).get("samples_per_s")
    print(f"{'run':>12} {'samples/s':>12} {'trials/h':>10} {'wall s':>8} {'vs seq':>7}")
    for name, f in figures.items():
        speedup = f"{f['samples_per_s'] / base_rate:6.1f}x" if base_rate else ""
        print(f"{name:>12} {f['samples_per_s']:12,.0f} {f['trials_per_hour']:10,.1f} {f['wall_s']:8.1f} {speedup:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), **figures}, indent=1))


if __name__ == "__main__":
    main()
