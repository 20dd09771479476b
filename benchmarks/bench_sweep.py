"""Orchestration overhead of a sweep: N small trials back to back in one process vs. the same trials as
a sweep through the real CLI (local Ray, Tune, the Parquet store, checkpoints).

The trials are the digits grid of ``tests/orchestration/sweeps_helpers.small_spec`` with N values of
η, no pretraining and ``--epochs`` Deep SAD epochs (150 by default: about a second of compute each on
one core). Figures, all medians over trials unless they are a single wall time:

* back to back: ``deepsad.training.train`` on every trial's config, one after the other;
* trainable without Ray: ``orchestration.jobs.kinds.execute`` on every trial in this process (result
  and epoch rows, model bundle: the bookkeeping a sweep adds before Ray adds its own);
* sweep: ``deepsad sweep submit`` in a subprocess (``--concurrency`` trials of 1 CPU each), from
  process start to exit, split with the times the sweep records (``submission.json``,
  ``driver.json`` and each row's ``started_at``/``finished_at``) into CLI start-up and validation,
  Ray start (import + ``ray.init``), Tune set-up until the first trial starts, per-trial compute
  (the row's ``total_seconds``), per-trial start-up cost (a trial's ``started_at`` minus the
  ``finished_at`` of the trial before it in the same slot) and shutdown.

    python benchmarks/bench_sweep.py [--trials 8] [--epochs 150] [--concurrency 2] [--threads 1] [--keep DIR]

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.data.sources import load_dataset  # noqa: E402
from deepsad.data.splits import make_split  # noqa: E402
from deepsad.training import train  # noqa: E402
from orchestration.jobs.base import RunContext  # noqa: E402
from orchestration.jobs.kinds import execute  # noqa: E402
from orchestration.plan.cells import enumerate_cells  # noqa: E402
from orchestration.spec.load import parse_spec  # noqa: E402
from tests.orchestration.sweeps_helpers import TEST_ENV, rows, small_spec  # noqa: E402

NAME = "bench-sweep"


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
        f"load average {load} · torch {torch.__version__} ({torch.get_num_threads()} threads back to back; "
        f"a 1-CPU Ray trial runs with OMP_NUM_THREADS=1)"
    )


def spec_dict(n: int, epochs: int, concurrency: int) -> dict[str, Any]:
    etas = [float(f"{v:.4g}") for v in np.geomspace(0.25, 32.0, n)]
    return small_spec(
        NAME, pretrain=None, train__epochs=epochs, train__milestones=[max(1, epochs * 2 // 3)],
        search__space={"eta": {"distribution": "choice", "values": etas}},
        resources__max_concurrent_trials=concurrency, resources__cpus_per_trial=1,
        # the engine's default: checkpoint at the end of each phase, otherwise at most every 10 s
        resources__checkpoint_interval_s=10,
    )  # fmt: skip


def back_to_back(text: str) -> tuple[float, list[float]]:
    """Wall time of training every cell in this process, and each cell's time."""
    cells = enumerate_cells(parse_spec(text, f"{NAME}.yaml"))
    t0 = time.perf_counter()
    data = load_dataset(cells[0].dataset, cells[0].data_dir)
    times = []
    for cell in cells:
        t = time.perf_counter()
        train(make_split(data, cell.protocol), replace(cell.train, device="cpu"))
        times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, times


class _NullReporter:
    """Reports go nowhere: what the trainable costs without Ray."""

    rank = 0
    world_size = 1

    def restored(self) -> None:
        return None

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        return None


def in_process_trainable(text: str, storage: Path) -> list[float]:
    """Each cell run by ``orchestration.jobs.kinds.execute`` in this process (its result rows, epoch
    rows and model bundle written to ``storage``, no Ray): the trainable's own bookkeeping."""
    cells = enumerate_cells(parse_spec(text, f"{NAME}.yaml"))
    ctx = RunContext(sweep=NAME, storage_uri=str(storage), checkpoint_interval_s=10.0)
    times = []
    for cell in cells:
        t = time.perf_counter()
        execute([cell], _NullReporter(), ctx)
        times.append(time.perf_counter() - t)
    return times


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def slot_gaps(trials: list[dict[str, Any]], slots: int) -> tuple[list[float], list[float]]:
    """Per-trial start-up costs: ``started_at`` minus the ``finished_at`` of the trial that freed its
    slot (the latest one to finish before it started), and the start times of the first ``slots``
    trials (they had no predecessor)."""
    order = sorted(trials, key=lambda r: r["started_at"])
    free: list[float] = []  # finish times of trials whose slot has not been taken again
    gaps: list[float] = []
    firsts: list[float] = []
    for r in order:
        start = r["started_at"].timestamp()
        done = [f for f in free if f <= start]
        if done and len(firsts) >= slots:
            prev = max(done)
            free.remove(prev)
            gaps.append(start - prev)
        else:
            firsts.append(start)
        free.append(r["finished_at"].timestamp())
    return gaps, firsts


def sweep(spec_path: Path, storage: Path) -> dict[str, Any]:
    """Run the sweep through the CLI; the times of its phases (epoch seconds)."""
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.cli.app",
            "sweep",
            "submit",
            str(spec_path),
            "--storage",
            str(storage),
        ],
        cwd=spec_path.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    t_end = time.time()
    if run.returncode != 0:
        sys.exit(f"the sweep failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}")
    sweep_dir = storage / NAME
    submitted = _ts(json.loads((sweep_dir / "submission.json").read_text())["submitted_at"])
    ray_up = _ts(json.loads((sweep_dir / "driver.json").read_text())["started_at"])
    trials = rows(storage, NAME)
    if {r["status"] for r in trials} != {"finished"}:
        sys.exit(f"not every trial finished: {[(r['trial_key'], r['status'], r['error']) for r in trials]}")
    return {"t0": t0, "end": t_end, "submitted": submitted, "ray_up": ray_up, "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="grid cells (values of eta)")
    ap.add_argument("--epochs", type=int, default=150, help="Deep SAD epochs per trial (no pretraining)")
    ap.add_argument("--concurrency", type=int, default=2, help="max_concurrent_trials of the sweep")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the back-to-back run (1: as a 1-CPU Ray trial has)",
    )
    ap.add_argument("--keep", help="write the sweep here and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec_dict(args.trials, args.epochs, args.concurrency), sort_keys=False)
    spec_path = work / f"{NAME}.yaml"
    spec_path.write_text(text)
    try:
        b2b_wall, b2b = back_to_back(text)
        glue = in_process_trainable(text, work / "in-process" / NAME)
        s = sweep(spec_path, work / "store")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    trials = s["trials"]
    compute = [float(r["total_seconds"]) for r in trials]
    gaps, firsts = slot_gaps(trials, args.concurrency)
    first_start = min(firsts)
    last_finish = max(r["finished_at"].timestamp() for r in trials)
    wall = s["end"] - s["t0"]
    med = statistics.median

    print(f"machine: {machine()}")
    print(f"trials: {len(trials)} × digits (MLP), {args.epochs} Deep SAD epochs, no pretraining, seed 0")
    print(
        f"back to back, one process:   wall {b2b_wall:6.2f} s · per trial median {med(b2b):.2f} s "
        f"(min {min(b2b):.2f}, max {max(b2b):.2f})"
    )
    print(
        f"trainable without Ray:       per trial median {med(glue):.2f} s (execute(): + result and epoch rows, "
        f"model bundle; min {min(glue):.2f}, max {max(glue):.2f})"
    )
    print(f"sweep via CLI, {args.concurrency} × 1 CPU:   wall {wall:6.2f} s end to end")
    print(
        f"  CLI start-up + validation   {s['submitted'] - s['t0']:6.2f} s  (process start → submission.json)"
    )
    print(
        f"  Ray start (import + init)   {s['ray_up'] - s['submitted']:6.2f} s  (submission.json → driver.json)"
    )
    print(
        f"  Tune set-up → first trial   {first_start - s['ray_up']:6.2f} s  (driver.json → first started_at)"
    )
    print(
        f"  trials running              {last_finish - first_start:6.2f} s  (first started_at → last finished_at)"
    )
    print(f"  shutdown + summary          {s['end'] - last_finish:6.2f} s  (last finished_at → exit)")
    print(
        f"  per-trial compute, median   {med(compute):6.2f} s  (row total_seconds; min {min(compute):.2f}, "
        f"max {max(compute):.2f})"
    )
    if gaps:
        print(
            f"  per-trial start-up, median  {med(gaps):6.2f} s  (started_at − previous finished_at in the "
            f"slot; min {min(gaps):.2f}, max {max(gaps):.2f}, n={len(gaps)})"
        )
    ideal = sum(compute) / args.concurrency
    print(
        f"  trial time / ideal          {(last_finish - first_start) / ideal:6.2f} ×  "
        f"(ideal = Σ compute / {args.concurrency} = {ideal:.2f} s)"
    )
    print(f"overhead vs back to back: {wall - b2b_wall:+.2f} s ({wall / b2b_wall:.1f} × the wall time)")
    print(f"measured at {datetime.now(UTC).isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
