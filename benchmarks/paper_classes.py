"""The statistical check of bundles: MNIST's ten normal classes at the paper's settings, as one vmap
bundle and as ten separate runs side by side (one process each), test AUROC per class both ways.

Settings (Ruff et al. 2020, MNIST, one known anomaly class): normal class c, known anomaly class
(c + 1) mod 10, γ_l = 0.05, γ_p = 0, validation fraction 0.15, seed 0; the reference's optimiser
defaults (Adam lr 1e-4, 150 + 150 epochs, Deep SAD milestone 50, AE at a constant lr, batch 128).
A bundle member and its separate run compute the same thing up to float rounding; over 300 epochs
rounding drifts, so single classes may differ by a few tenths of a point — the mean over the ten
classes should not (issue 13: within 0.5 points).

    python benchmarks/paper_classes.py --device cuda --json classes.json
    python benchmarks/paper_classes.py --device cpu --epochs 1 --classes 0,1 --slice 3000   # a smoke run

The separate runs start first (``--workers`` processes at a time), the bundle then trains in this
process while they run; the JSON is written when the bundle is done and again at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.bundle import train_bundle  # noqa: E402
from deepsad.data.dataset import Dataset  # noqa: E402
from deepsad.data.sources import load_dataset  # noqa: E402
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split  # noqa: E402
from deepsad.networks import default_net_config  # noqa: E402
from deepsad.training import OptimConfig, TrainConfig, train  # noqa: E402


def load(data_dir: str, n: int) -> Dataset:
    data = load_dataset("mnist", data_dir)
    if not n:
        return data
    assert data.x_test is not None and data.y_test is not None
    return Dataset("mnist", "image", data.x_train[:n], data.y_train[:n], data.x_test[: n // 3], data.y_test[: n // 3],
                   source=f"first {n} rows")


def split_for(data: Dataset, normal: int) -> SemiSupervisedSplit:
    return make_split(data, Protocol(normal_classes=(normal,), known_anomaly_classes=((normal + 1) % 10,),
                                     ratio_known_outlier=0.05, ratio_pollution=0.0, val_fraction=0.15, seed=0))


def config(device: str, epochs: int) -> TrainConfig:
    return TrainConfig(net=default_net_config("mnist", (1, 28, 28)), sad=OptimConfig(epochs=epochs),
                       ae=OptimConfig(epochs=epochs, weight_decay=0.5e-3, milestones=()), seed=0, device=device)


def one(args: argparse.Namespace) -> None:
    """A child: one class's separate run; prints its test AUROC and seconds as JSON."""
    t0 = time.perf_counter()
    fit = train(split_for(load(args.data_dir, args.slice), args.one), config(args.device, args.epochs))
    print(json.dumps({"auroc": fit.test_auroc, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=150, help="epochs of each phase (the paper: 150)")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--slice", type=int, default=0, help="use the first N training rows only (smoke runs)")
    ap.add_argument("--workers", type=int, default=10, help="separate runs at a time")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        one(args)
        return
    classes = [int(c) for c in args.classes.split(",")]
    data = load(args.data_dir, args.slice)
    splits = [split_for(data, c) for c in classes]
    cfgs = [config(args.device, args.epochs)] * len(classes)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = list(classes)
    running: dict[int, subprocess.Popen[str]] = {}
    t0 = time.perf_counter()

    def launch() -> None:
        while pending and len(running) < args.workers:
            c = pending.pop(0)
            running[c] = subprocess.Popen(
                [sys.executable, __file__, "--one", str(c), "--data-dir", args.data_dir, "--device", args.device,
                 "--epochs", str(args.epochs), "--slice", str(args.slice)],
                stdout=subprocess.PIPE, text=True, env=env)

    launch()
    tb = time.perf_counter()
    members = train_bundle(splits, cfgs, val_every=max(1, args.epochs), strategy="vmap")
    bundle_seconds = time.perf_counter() - tb
    out: dict[str, Any] = {"settings": {"gamma_l": 0.05, "gamma_p": 0.0, "known": "(c + 1) mod 10", "seed": 0,
                                        "epochs": args.epochs, "device": args.device, "slice": args.slice},
                           "bundle_seconds": bundle_seconds, "classes": {}}
    for c, m in zip(classes, members, strict=True):
        out["classes"][str(c)] = {"bundle": m.fit.test_auroc if m.fit is not None else None,
                                  "failure": m.failure}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    separate: dict[int, float] = {}
    while running or pending:
        for c, proc in list(running.items()):
            if proc.poll() is None:
                continue
            text = proc.stdout.read() if proc.stdout else ""
            del running[c]
            if proc.returncode == 0:
                separate[c] = float(json.loads(text.strip().splitlines()[-1])["auroc"])
            launch()
        time.sleep(0.2)
    out["separate_seconds"] = time.perf_counter() - t0
    diffs = []
    for c in classes:
        row = out["classes"][str(c)]
        row["separate"] = separate.get(c)
        if row["bundle"] is not None and row["separate"] is not None:
            row["difference"] = row["bundle"] - row["separate"]
            diffs.append(row["difference"])
    out["mean_difference"] = statistics.mean(diffs) if diffs else None
    out["mean_abs_difference"] = statistics.mean(abs(d) for d in diffs) if diffs else None
    print(f"MNIST, γ_l = 0.05, γ_p = 0, {args.epochs} + {args.epochs} epochs, seed 0, {args.device}: test AUROC")
    print(f"{'class':>5}  {'bundle':>7}  {'separate':>8}  {'difference':>10}")
    for c in classes:
        row = out["classes"][str(c)]
        fmt = [f"{v:.4f}" if isinstance(v, float) else "failed" for v in (row["bundle"], row["separate"])]
        print(f"{c:>5}  {fmt[0]:>7}  {fmt[1]:>8}  {row.get('difference', float('nan')):+10.4f}")
    if diffs:
        print(f"mean difference {out['mean_difference']:+.4f} ({100 * out['mean_difference']:+.2f} points), "
              f"mean |difference| {out['mean_abs_difference']:.4f}; bundle {bundle_seconds:.0f} s, separate "
              f"runs {out['separate_seconds']:.0f} s ({args.workers} at a time)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
