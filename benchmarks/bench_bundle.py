"""Throughput of the bundled trainer: K Deep SAD trials in one process vs one trial at a time.

MNIST, normal class 0, known anomaly class 1, γ_l = 0.01, γ_p = 0.1 (≈ 5.7k training samples per
epoch and member), batch 128, the paper's LeNet, AE pretraining + Deep SAD. Member k of a bundle
has seed k and η = 1 + k mod 4 (a sweep); with ``--distinct-splits`` every member also gets its own
split seed (different training sets, one shared sample pool).

Three ways to train the same trials are compared, each ``--repeats`` times; within a repetition the
configurations run in an order rotated by one per repetition, so that load from other work on the
machine hits all of them alike. Printed are medians over repetitions (and their range):

* ``K=k`` — one :func:`deepsad.bundle.train_bundle` call with k members (``--strategy``);
* ``separate`` — :func:`deepsad.training.train` for ``--baseline-trials`` trials back to back in this
  process (data loaded once);
* ``process`` — one ``python -c`` subprocess per trial that imports torch, loads MNIST and trains one
  trial: what a sweep without bundles pays per trial.

Figures: aggregate samples/s — all members' training samples over an epoch's wall time (validation
included), the median over a run's epochs, dropping each phase's first epoch when it has more; the
same for the Deep SAD phase alone (``SAD samples/s``, the figure the issue's reference of ~10,000/s
for Deep-SAD-PyTorch on an H200 is about); and trials/hour — trials over the wall time of the whole
run (pretraining, centres, test metrics included; for ``process`` also start-up, imports and data
loading). A trial's cost does not depend on K, so the baselines are measured once per repetition and
every K is compared with them.

Projection (``--grid-epochs``, default 150): what the paper's MNIST labeled-anomaly grid — 10 normal
× 9 known-anomaly classes × 5 γ_l ∈ {0, .01, .05, .1, .2}, γ_p = 0, validation fraction 0.15, seed
0: 450 runs of AE pretraining + Deep SAD — would cost at each measured K. The 450 training-set sizes
come from :func:`deepsad.data.splits.make_split` itself; the runs are cut into bundles of K in the
order the ablation planner packs them (γ_l innermost). A bundle costs its measured fixed part (wall
time outside the epochs: pool, centres, test metrics) plus ``grid_epochs`` × the measured median
epoch time of each phase, scaled by its training-set size over the benchmark's — the largest
member's for ``vmap`` (members step in lockstep on padded batches), the members' mean for ``loop``.

    python benchmarks/bench_bundle.py --k 1,2,4,8 --epochs 1 --repeats 3
    python benchmarks/bench_bundle.py --k 1,64,512 --device cuda --strategy vmap --epochs 3 --val-every 3

``--bf16`` measures bf16 autocast, which has not been faster than fp32 for these networks where it was
measured (one model on an H200: 0.68x / 0.79x of fp32, issue 13); it is not offered as a speed option.

Needs torch and the deepsad package only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.bundle import BundleProgress, train_bundle  # noqa: E402
from deepsad.bundle_packing import pack_by_size  # noqa: E402
from deepsad.bundle_strategies import resolve_strategy  # noqa: E402
from deepsad.data.dataset import Dataset  # noqa: E402
from deepsad.data.sources import load_dataset  # noqa: E402
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split  # noqa: E402
from deepsad.networks import default_net_config  # noqa: E402
from deepsad.training import EpochReport, OptimConfig, TrainConfig, train  # noqa: E402

Figures = dict[str, float]


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads) · {gpu}")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# --------------------------------------------------------------------------- the trials


def make_split_for(data: Dataset, split_seed: int) -> SemiSupervisedSplit:
    return make_split(data, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), ratio_known_outlier=0.01,
                                     ratio_pollution=0.1, seed=split_seed))


def make_config(args: dict[str, Any], member: int, sample_shape: tuple[int, ...]) -> TrainConfig:
    """Member ``member``'s configuration (also built in the ``process`` children from the same args)."""
    epochs = int(args["epochs"])
    phase = OptimConfig(epochs=epochs, milestones=(max(1, epochs - 1),), batch_size=int(args["batch_size"]))
    return TrainConfig(net=default_net_config("mnist", sample_shape), sad=phase, ae=replace(phase, weight_decay=0.5e-3),
                       device=args["device"], bf16=bool(args["bf16"]), seed=member, eta=1.0 + member % 4)


def _epoch_median(rates_by_phase: dict[str, list[float]]) -> float:
    """Median (of rates or seconds) over the phases' epochs, each phase's first epoch dropped when it has more."""
    kept = [r for rates in rates_by_phase.values() for r in (rates[1:] if len(rates) > 1 else rates)]
    return statistics.median(kept)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_bundle(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig], args: dict[str, Any]) -> Figures:
    rates: dict[str, list[float]] = {"ae": [], "sad": []}
    seconds: dict[str, list[float]] = {"ae": [], "sad": []}

    def on_epoch(p: BundleProgress, _state: object) -> None:
        live = [r for r in p.reports if r is not None]
        if live:
            rates[p.phase].append(sum(r.samples_per_s for r in live))  # all members, one wall time
            seconds[p.phase].append(live[0].seconds)

    _sync(args["device"])
    t0 = time.perf_counter()
    out = train_bundle(splits, cfgs, on_epoch=on_epoch, val_every=args["val_every"], strategy=args["strategy"])
    _sync(args["device"])
    wall = time.perf_counter() - t0
    failed = [m.failure for m in out if m.failure is not None]
    if failed:
        print(f"  warning: {len(failed)} member(s) failed, e.g. {failed[0]}")
    return {"samples_per_s": _epoch_median(rates), "sad_samples_per_s": _epoch_median({"sad": rates["sad"]}),
            "trials_per_hour": len(cfgs) * 3600 / wall,
            "ae_epoch_s": _epoch_median({"ae": seconds["ae"]}), "sad_epoch_s": _epoch_median({"sad": seconds["sad"]}),
            "fixed_s": wall - sum(seconds["ae"]) - sum(seconds["sad"]),
            "member_samples": statistics.mean(len(s.train) for s in splits)}


def run_separate(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig], args: dict[str, Any]) -> Figures:
    rates: dict[str, list[float]] = {"ae": [], "sad": []}
    wall = 0.0
    for split, cfg in zip(splits, cfgs, strict=True):
        reports: list[EpochReport] = []
        _sync(cfg.device)
        t0 = time.perf_counter()
        train(split, cfg, on_epoch=lambda r, _s, reports=reports: reports.append(r))  # type: ignore[misc]
        _sync(cfg.device)
        wall += time.perf_counter() - t0
        for phase in rates:
            mine = [r.samples_per_s for r in reports if r.phase == phase]
            rates[phase] += mine[1:] if len(mine) > 1 else mine
    return {"samples_per_s": statistics.median(rates["ae"] + rates["sad"]),
            "sad_samples_per_s": statistics.median(rates["sad"]), "trials_per_hour": len(cfgs) * 3600 / wall}


#: A ``process`` child: import torch, load the data, train one trial, print its epoch rates as JSON.
CHILD = """
import json, sys
sys.path.insert(0, {bench_dir!r})
import bench_bundle
print(json.dumps(bench_bundle.one_trial(json.loads(sys.argv[1]))))
"""


def one_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """The body of a ``process`` child (see :data:`CHILD`)."""
    data = load_dataset("mnist", spec["data_dir"])
    split = make_split_for(data, spec["split_seed"])
    reports: list[EpochReport] = []
    train(split, make_config(spec, spec["member"], data.sample_shape), on_epoch=lambda r, _s: reports.append(r))
    return {"rates": [[r.phase, r.samples_per_s] for r in reports]}


def run_processes(n: int, args: dict[str, Any]) -> Figures:
    rates: dict[str, list[float]] = {"ae": [], "sad": []}
    wall = 0.0
    code = CHILD.format(bench_dir=str(Path(__file__).resolve().parent))
    for member in range(n):
        spec = {**args, "member": member, "split_seed": member if args["distinct_splits"] else 0}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=REPO, capture_output=True,
                              text=True, check=False)
        wall += time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"process baseline failed:\n{done.stderr[-2000:]}")
        reports = json.loads(done.stdout.strip().splitlines()[-1])["rates"]
        for phase in rates:
            mine = [r for p, r in reports if p == phase]
            rates[phase] += mine[1:] if len(mine) > 1 else mine
    return {"samples_per_s": statistics.median(rates["ae"] + rates["sad"]),
            "sad_samples_per_s": statistics.median(rates["sad"]), "trials_per_hour": n * 3600 / wall}


# --------------------------------------------------------------------------- the paper's grid

#: The paper's MNIST scenario (i) grid in the ablation planner's order (γ_l innermost): (normal, known, γ_l).
GRID = [(normal, known, gamma) for normal in range(10) for known in range(10) if known != normal
        for gamma in (0.0, 0.01, 0.05, 0.1, 0.2)]


def grid_sizes(data: Dataset) -> list[int]:
    """Training-set size of each of the 450 runs of :data:`GRID` (γ_p = 0, validation 0.15, seed 0)."""
    return [len(make_split(data, Protocol(normal_classes=(normal,), known_anomaly_classes=(known,),
                                          ratio_known_outlier=gamma, ratio_pollution=0.0, val_fraction=0.15,
                                          seed=0)).train)
            for normal, known, gamma in GRID]


def project_grid(fig: Figures, k: int, sizes: list[int], strategy: str, epochs: int, by_size: bool = False) -> float:
    """Seconds the grid would take in bundles of ``k`` from one run's measured figures (module docstring).

    ``by_size``: bundles cut by :func:`deepsad.bundle_packing.pack_by_size` (neighbours in training-set
    size) instead of in the planner's order.
    """
    total = 0.0
    chunks = ([[sizes[i] for i in b] for b in pack_by_size(sizes, k)] if by_size
              else [sizes[a:a + k] for a in range(0, len(sizes), k)])
    for chunk in chunks:
        size = max(chunk) if strategy == "vmap" else statistics.mean(chunk) * len(chunk) / k
        scale = size / fig["member_samples"]
        total += fig["fixed_s"] + epochs * scale * (fig["ae_epoch_s"] + fig["sad_epoch_s"])
    return total


# --------------------------------------------------------------------------- main


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):9,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--k", default="1,2,4,8", help="comma-separated bundle sizes")
    ap.add_argument("--strategy", default="auto", choices=["auto", "vmap", "loop"], help="bundle strategy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (measured, not a speed option)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per phase (the first is a warm-up when > 1)")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions of every configuration (medians)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--val-every", type=int, default=1, help="validate every n-th Deep SAD epoch")
    ap.add_argument("--baseline-trials", type=int, default=2, help="trials per baseline run (0: no baselines)")
    ap.add_argument("--no-process", action="store_true", help="skip the one-process-per-trial baseline")
    ap.add_argument("--distinct-splits", action="store_true", help="every member gets its own split seed")
    ap.add_argument("--grid-epochs", type=int, default=150,
                    help="epochs per phase of the projected paper grid (0: no projection)")
    ap.add_argument("--json", help="also write the figures to this file")
    ns = ap.parse_args()
    ks = [int(v) for v in ns.k.split(",") if v.strip()]
    if ns.repeats < 1 or ns.epochs < 1 or not ks or min(ks) < 1:
        raise SystemExit("--repeats, --epochs and every --k must be >= 1")
    args = vars(ns)

    data = load_dataset("mnist", ns.data_dir)
    n_splits = max([*ks, ns.baseline_trials]) if ns.distinct_splits else 1
    splits = [make_split_for(data, s) for s in range(n_splits)]

    def members(k: int) -> tuple[list[SemiSupervisedSplit], list[TrainConfig]]:
        return ([splits[i % n_splits] for i in range(k)], [make_config(args, i, data.sample_shape) for i in range(k)])

    runs: dict[str, Any] = {f"K={k}": (lambda k=k: run_bundle(*members(k), args)) for k in ks}
    if ns.baseline_trials:
        runs["separate"] = lambda: run_separate(*members(ns.baseline_trials), args)
        if not ns.no_process:
            runs["process"] = lambda: run_processes(ns.baseline_trials, args)

    print(f"machine: {machine()}")
    print(f"load average before: {load_average()}")
    strategy = resolve_strategy(ns.strategy, torch.device(ns.device))
    print(f"mnist LeNet: {len(splits[0].train)} training samples/epoch per member, batch {ns.batch_size}, "
          f"device {ns.device}{' bf16' if ns.bf16 else ''}, strategy {ns.strategy} -> {strategy}, {ns.epochs} "
          f"epoch(s) per phase, validation every {ns.val_every}, "
          f"{'distinct splits' if ns.distinct_splits else 'one split'}, {ns.repeats} repeats, "
          f"baselines of {ns.baseline_trials} trials")
    # warm-up (kernel selection, allocator): the first measured run must not pay it
    assert data.x_test is not None and data.y_test is not None
    warm = make_split_for(Dataset("mnist", "image", data.x_train[:2000], data.y_train[:2000], data.x_test[:200],
                                  data.y_test[:200], source="warm-up slice"), 0)
    warm_cfgs = [replace(make_config(args, i, data.sample_shape), sad=OptimConfig(epochs=1, batch_size=ns.batch_size),
                         ae=OptimConfig(epochs=1, batch_size=ns.batch_size)) for i in range(2)]
    train(warm, warm_cfgs[0])
    train_bundle([warm, warm], warm_cfgs, strategy=ns.strategy)

    results: dict[str, list[Figures]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(ns.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            results[name].append(runs[name]())
            if ns.json:  # after every run: a run cut short by a time limit keeps what it measured
                Path(ns.json).write_text(json.dumps({"machine": machine(), "args": args, "runs": results,
                                                     "partial": True}, indent=1))
            if ns.device.startswith("cuda"):
                torch.cuda.empty_cache()
        print(f"  repeat {rep + 1}/{ns.repeats} done (order {', '.join(order)}; load average {load_average()})",
              flush=True)
    print(f"load average after: {load_average()}")

    med = {name: {m: statistics.median(f[m] for f in figs) for m in figs[0]} for name, figs in results.items()}
    report(results, med)
    projection: dict[str, dict[str, float]] = {"planner": {}, "by_size": {}}
    if ns.grid_epochs:
        projection = report_grid(data, results, ns.grid_epochs, strategy)
    if ns.json:
        Path(ns.json).write_text(json.dumps({"machine": machine(), "args": args, "runs": results, "medians": med,
                                             "grid_seconds": projection["planner"],
                                             "grid_seconds_by_size": projection["by_size"]}, indent=1))


#: Deep SAD samples/s of the reference Deep-SAD-PyTorch (batch 128, its DataLoader) on one H200, as
#: measured in this project's issue 7 — the yardstick of its ≥100× target; not measured by this script.
REFERENCE_SAD_PER_S_H200 = 10_000


def report(results: dict[str, list[Figures]], med: dict[str, Figures]) -> None:
    print(f"{'run':>9}  {'samples/s median [range]':>30}  {'SAD samples/s':>13}  {'trials/h median [range]':>30}  "
          f"{'vs separate':>11}  {'vs process':>10}  {'SAD vs ref':>10}")
    for name, figs in results.items():
        line = (f"{name:>9}  {_summary([f['samples_per_s'] for f in figs]):>30}  {med[name]['sad_samples_per_s']:13,.0f}"
                f"  {_summary([f['trials_per_hour'] for f in figs]):>30}")
        for base in ("separate", "process"):
            if base in med:
                r = med[name]["samples_per_s"] / med[base]["samples_per_s"]
                t = med[name]["trials_per_hour"] / med[base]["trials_per_hour"]
                line += f"  {r:5.2f}x/{t:5.2f}x"
            else:
                line += f"  {'':>11}"
        line += f"  {med[name]['sad_samples_per_s'] / REFERENCE_SAD_PER_S_H200:9.1f}x"
        print(line)
    print("(vs: ratio of medians, samples/s / trials/h; SAD vs ref: median Deep SAD samples/s over "
          f"{REFERENCE_SAD_PER_S_H200:,}/s, the reference code's on one H200 as measured in issue 7)")


def report_grid(data: Dataset, results: dict[str, list[Figures]], epochs: int, strategy: str
                ) -> dict[str, dict[str, float]]:
    """Print and return the projected cost of the paper's MNIST grid at every measured K (median over
    repeats), with bundles cut in the planner's order and by training-set size."""
    sizes = grid_sizes(data)
    print(f"paper MNIST γ_l grid: {len(GRID)} runs × ({epochs} AE + {epochs} Deep SAD epochs), "
          f"{min(sizes):,}–{max(sizes):,} training samples per run (mean {statistics.mean(sizes):,.0f}); "
          f"projected from each K's measured epoch times and fixed cost ({strategy}):")
    out: dict[str, dict[str, float]] = {"planner": {}, "by_size": {}}
    for name, figs in results.items():
        if not name.startswith("K="):
            continue
        k = int(name[2:])
        for how, by_size in (("planner", False), ("by_size", True)):
            out[how][name] = statistics.median(project_grid(f, k, sizes, strategy, epochs, by_size) for f in figs)
        bundles = len(pack_by_size(sizes, k))
        print(f"  {name:>6}: {-(-len(sizes) // k):4d} bundles in planner order {out['planner'][name] / 60:10,.1f} "
              f"device-minutes; {bundles:4d} by size {out['by_size'][name] / 60:10,.1f}")
    return out

if __name__ == "__main__":
    main()
