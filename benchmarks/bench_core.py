"""Training throughput of the Deep SAD core: median samples/s per epoch of the AE and Deep SAD phases.

MNIST, normal class 0, known anomaly class 1, γ_l = 0.01, γ_p = 0.1 (≈ 6.6k training samples per
epoch), batch 128, the paper's LeNet. The reference implementation (Deep-SAD-PyTorch with its
DataLoader pipeline) was measured at ≈ 5.5k (AE) / 10.3k (Deep SAD) samples/s on 2 CPU cores and
≈ 9k / 10k samples/s on an H200.

    python benchmarks/bench_core.py [--data-dir ../shared/data] [--device cpu] [--epochs 5] [--precisions fp32,bf16]

bf16 autocast is measured to learn whether it earns its place; it has not so far (an H200, issue 13:
0.68x / 0.79x of fp32 in AE / Deep SAD). It is not a speed option for these networks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepsad.data.sources import load_dataset  # noqa: E402
from deepsad.data.splits import Protocol, make_split  # noqa: E402
from deepsad.networks import default_net_config  # noqa: E402
from deepsad.training import EpochReport, OptimConfig, TrainConfig, train  # noqa: E402


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads) · {gpu}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fmnist"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per phase (the first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast only (same as --precisions bf16)")
    ap.add_argument("--precisions", default=None, help="comma-separated fp32,bf16: measure each in this process")
    ap.add_argument("--json", help="also write the figures to this file (rewritten after every precision)")
    args = ap.parse_args()
    precisions = (args.precisions or ("bf16" if args.bf16 else "fp32")).split(",")

    data = load_dataset(args.dataset, args.data_dir)
    split = make_split(data, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), ratio_known_outlier=0.01,
                                      ratio_pollution=0.1, seed=0))
    print(f"machine: {machine()}")
    print(f"{args.dataset}: {split.counts()['n_train']} training samples/epoch, batch {args.batch_size}, "
          f"device {args.device}, {args.epochs} epochs per phase")
    out: dict[str, object] = {"machine": machine(), "reference": REFERENCE_H200}
    for precision in precisions:
        figures = measure(split, args, precision == "bf16")
        ratios = {phase: figures[phase] / REFERENCE_H200[phase] for phase in figures}
        print(f"{precision}: median samples/s  AE: {figures['ae']:,.0f}   Deep SAD: {figures['sad']:,.0f}   "
              f"(vs the reference on an H200: {ratios['ae']:.2f}x / {ratios['sad']:.2f}x)")
        out[precision] = {**figures, "x_reference": ratios}
        if len(precisions) == 1:
            out.update(figures)  # the flat layout of one precision, as before
        if args.json:
            Path(args.json).write_text(json.dumps(out))


#: The reference Deep-SAD-PyTorch's samples/s on one H200 (issue 13): AE 9.0k, Deep SAD 10.0k.
REFERENCE_H200 = {"ae": 9_000.0, "sad": 10_000.0}


def measure(split: Any, args: argparse.Namespace, bf16: bool) -> dict[str, float]:
    """Median samples/s per phase of one :func:`deepsad.training.train` run (first epoch dropped)."""
    phase_cfg = OptimConfig(epochs=args.epochs, batch_size=args.batch_size)
    cfg = TrainConfig(
        net=default_net_config(args.dataset, tuple(split.train.x.shape[1:])),
        sad=phase_cfg,
        ae=OptimConfig(epochs=args.epochs, batch_size=args.batch_size, weight_decay=0.5e-3),
        device=args.device,
        bf16=bf16,
    )
    reports: list[EpochReport] = []
    train(split, cfg, on_epoch=lambda r, _s: reports.append(r))
    figures = {}
    for phase in ("ae", "sad"):
        rates = [r.samples_per_s for r in reports if r.phase == phase]
        figures[phase] = statistics.median(rates[1:] if len(rates) > 1 else rates)  # drop the warm-up epoch
    return figures


if __name__ == "__main__":
    main()
