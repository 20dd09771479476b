"""TPE in bundles against one-at-a-time TPE, and seeds raced against every seed (issue 17).

**Search** (``--bundle-sizes 1,8``): runs a sweep file's TPE search through the real command
(``deepsad sweep submit``, a local Ray, a fresh storage each time) once per bundle size and search
seed, with the same number of trainings (``num_trials`` × seeds), and reports the wall time and the
best configuration found — its mean validation metric over seeds (what the search optimises) and its
mean test AUROC — with medians over the search seeds. Bundle size 1 is today's one configuration per
Tune trial (``--single-concurrency`` trials at once, one CPU each); K > 1 asks K ÷ seeds
configurations per batch (one bundle on every CPU).

**Racing** (``--race SWEEP``): replays the race of :mod:`orchestration.plan.racing` on a finished
sweep that ran *every* seed: each round reveals only the rows the race asks for, so the count of
trainings it would have run, and whether its leader is the configuration that wins on every seed,
come from real rows without training anything again.

    python benchmarks/bench_search.py --spec sweeps/quickstart.yaml --num-trials 24 --search-seeds 0,1,2,3,4
    python benchmarks/bench_search.py --race digits_polluted --storage runs/sweeps --start 3
    python benchmarks/bench_search.py --dry-run        # CI: a tiny search and race

Prints the machine, a table, and with ``--json FILE`` the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _spec(base: dict[str, Any], name: str, *, seed: int, num_trials: int, bundle: int, single: int,
          seeds: list[int] | None, epochs: int | None) -> dict[str, Any]:  # fmt: skip
    d = json.loads(json.dumps(base))
    d["name"] = name
    d["search"].update(algorithm="tpe", seed=seed, num_trials=num_trials)
    if seeds is not None:
        d["seeds"] = seeds
    if epochs is not None:
        for section in ("train", "pretrain"):
            if d.get(section):
                d[section].update(epochs=epochs, milestones=[m for m in d[section].get("milestones", []) if m < epochs])
    cpus = os.cpu_count() or 1
    d["resources"] = {**d.get("resources", {}), "gpus_per_trial": 0, "bundle_size": bundle,
                      "cpus_per_trial": min(cpus, bundle) if bundle > 1 else 1,
                      "max_concurrent_trials": 1 if bundle > 1 else single, "workers_per_trial": 1}  # fmt: skip
    d.get("train", {})["device"] = "cpu"
    return d


def search_run(spec: dict[str, Any], storage: Path, workdir: Path) -> dict[str, Any]:
    """Run one search through the CLI; its wall time and the best configuration it found."""
    from orchestration.deploy.registry import rank_configurations
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestration.cli.app", "sweep", "submit", str(path), "--storage",
                           str(storage), "--base-dir", str(REPO)], capture_output=True, text=True, env=env,
                          cwd=REPO, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"bench_search.py: {spec['name']} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = ResultStore(Storage.from_uri(str(storage)).child(spec["name"])).trials().to_pylist()
    metric = spec["search"].get("objective", {}).get("metric", "val_auroc")
    best = rank_configurations(rows, metric)[0]
    tests = {r["trial_key"]: r["test_auroc"] for r in rows}
    return {"wall_s": round(wall, 1), "trainings": sum(r["status"] == "finished" for r in rows),
            "best_val": round(best.mean, 4), "best_test_auroc": round(statistics.fmean(tests[s.trial_key]
                                                                                     for s in best.seeds), 4),
            "best_params": best.params}  # fmt: skip


def compare_search(args: argparse.Namespace) -> dict[str, Any]:
    base = yaml.safe_load(Path(args.spec).read_text())
    out: dict[str, Any] = {"spec": args.spec, "num_trials": args.num_trials, "runs": {}}
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    where = contextlib.nullcontext(tempfile.mkdtemp(dir=args.keep)) if args.keep else tempfile.TemporaryDirectory()
    with where as tmp:
        if args.keep:
            print(f"  sweeps kept in {tmp}/sweeps (replay a race on one with --race NAME --storage {tmp}/sweeps)")
        for size in args.bundle_sizes:
            for seed in args.search_seeds:
                name = f"{base['name']}-b{size}-s{seed}"
                spec = _spec(base, name, seed=seed, num_trials=args.num_trials, bundle=size,
                             single=args.single_concurrency, seeds=args.seeds, epochs=args.epochs)  # fmt: skip
                got = search_run(spec, Path(tmp) / "sweeps", Path(tmp))
                out["runs"].setdefault(str(size), []).append({"search_seed": seed, **got})
                print(f"  bundle_size {size:>2} search seed {seed}: {got['wall_s']:7.1f} s, "
                      f"{got['trainings']} trainings, best val {got['best_val']:.4f}, its test AUROC "
                      f"{got['best_test_auroc']:.4f}", flush=True)  # fmt: skip
    print(f"\n{'bundle_size':>11}  {'wall s (median)':>15}  {'best val (median, mean)':>24}  "
          f"{'its test AUROC (median)':>23}")
    for size, runs in out["runs"].items():
        walls, vals, tests = ([r[k] for r in runs] for k in ("wall_s", "best_val", "best_test_auroc"))
        out.setdefault("summary", {})[size] = {"wall_s_median": statistics.median(walls),
                                               "best_val_median": statistics.median(vals),
                                               "best_val_mean": round(statistics.fmean(vals), 4),
                                               "best_test_auroc_median": statistics.median(tests)}  # fmt: skip
        print(f"{size:>11}  {statistics.median(walls):>15.1f}  {statistics.median(vals):>15.4f}, "
              f"{statistics.fmean(vals):.4f}  {statistics.median(tests):>23.4f}")
    return out


def replay_race(rows: list[dict[str, Any]], metric: str, seeds: list[int], start: int,
                confidence: float) -> dict[str, Any]:  # fmt: skip
    """The race on a finished every-seed sweep's rows, revealing only the rows it asks for."""
    from orchestration.deploy.registry import rank_configurations
    from orchestration.plan.racing import race, standings

    by = {(r["params_json"], r["seed"]): r for r in rows}
    shown = [r for r in rows if r["seed"] in seeds[:start]]
    rounds = 0
    while (rnd := race(standings(shown, metric), seeds, confidence, start)).runs:
        for params, seed in rnd.runs:
            key = (json.dumps(params, sort_keys=True), seed)
            hit = next((r for (p, s), r in by.items() if s == seed and json.loads(p) == params), None)
            shown.append(hit if hit is not None else {"params_json": key[0], "seed": seed, "status": "failed"})
        rounds += 1
    full_winner = rank_configurations(rows, metric)[0].params
    raced = rank_configurations([r for r in shown if r.get("trial_key")], metric, by="lcb")[0].params
    return {"configurations": len({r["params_json"] for r in rows}), "seeds": len(seeds), "start": start,
            "confidence": confidence, "every_seed": rnd.every_seed, "raced": rnd.trainings, "rounds": rounds,
            "saved": rnd.every_seed - rnd.trainings, "saved_fraction": round(1 - rnd.trainings / rnd.every_seed, 3),
            "settled": rnd.settled, "leader": rnd.leader, "winner_on_every_seed": full_winner,
            "same_winner": rnd.leader == full_winner, "raced_winner_by_lcb": raced}  # fmt: skip


def race_report(args: argparse.Namespace) -> dict[str, Any]:
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    sweep = Storage.from_uri(args.storage).child(args.race)
    rows = ResultStore(sweep).trials().to_pylist()
    spec = yaml.safe_load(sweep.read_bytes("spec.yaml"))
    metric = spec["search"].get("objective", {}).get("metric", "val_auroc")
    out = replay_race(rows, metric, list(spec["seeds"]), args.start, args.confidence)
    print(f"{args.race}: {out['configurations']} configurations × {out['seeds']} seeds = {out['every_seed']} trainings "
          f"for every seed; raced from {out['start']} at {out['confidence']:.0%}: {out['raced']} "
          f"({out['saved']} saved, {out['saved_fraction']:.0%}) in {out['rounds']} rounds, "
          f"{'settled' if out['settled'] else 'not settled'}; leader {out['leader']}, the winner on every seed "
          f"{out['winner_on_every_seed']} ({'same' if out['same_winner'] else 'different'})")  # fmt: skip
    return out


def _dry_run() -> dict[str, Any]:
    """A tiny search (2 configurations, 2 seeds, 2 epochs) in both modes, and a race on its rows."""
    base = {"name": "dry", "data": {"dataset": "digits"},
            "protocol": {"normal_classes": [0, 1, 2, 3, 4], "known_anomaly_classes": [5], "n_labeled_anomalies": 20,
                         "ratio_pollution": 0.1, "val_fraction": 0.2},
            "train": {"lr": 1e-3, "epochs": 2, "batch_size": 64, "device": "cpu"},
            "pretrain": {"lr": 1e-3, "epochs": 1, "batch_size": 64},
            "search": {"algorithm": "tpe", "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}},
            "seeds": [0, 1, 2]}  # fmt: skip
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (1, 6):
            spec = _spec(base, f"dry-b{size}", seed=0, num_trials=2, bundle=size, single=2, seeds=None, epochs=None)
            out[str(size)] = search_run(spec, Path(tmp) / "sweeps", Path(tmp))
            print(f"  bundle_size {size}: {out[str(size)]}")
        from orchestration.store.results import ResultStore
        from orchestration.store.storage import Storage

        rows = ResultStore(Storage.from_uri(str(Path(tmp) / "sweeps")).child("dry-b6")).trials().to_pylist()
        out["race"] = replay_race(rows, "val_auroc", [0, 1, 2], 2, 0.95)
        print(f"  race: {out['race']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "sweeps" / "quickstart.yaml"))
    ap.add_argument("--num-trials", type=int, default=24)
    ap.add_argument("--search-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--bundle-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="the sweep's seeds (default: the file's)")
    ap.add_argument("--epochs", type=int, default=None, help="Deep SAD and AE epochs (default: the file's)")
    ap.add_argument("--single-concurrency", type=int, default=os.cpu_count() or 1,
                    help="bundle_size 1: trials at once (one CPU each)")
    ap.add_argument("--race", help="replay the race on this finished every-seed sweep")
    ap.add_argument("--storage", default=str(REPO / "runs" / "sweeps"))
    ap.add_argument("--start", type=int, default=3)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--keep", help="search mode: keep the sweeps in a new directory under this one")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
          f"Python {platform.python_version()}")
    if args.dry_run:
        out = _dry_run()
    elif args.race:
        out = race_report(args)
    else:
        out = compare_search(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
