"""The staged comparison of a bundle member with its separate run (deepsad.bundle_fidelity) on the CPU:
the same logic the GPU test (test_gpu.py) and the GPU check apply on CUDA."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from deepsad.bundle_fidelity import FACTOR, STAGES, fidelity_report, relative_deviation, verdict
from deepsad.data.splits import SemiSupervisedSplit
from deepsad.networks import default_net_config
from deepsad.training import OptimConfig, TrainConfig


def test_the_verdict_names_the_first_stage_beyond_kernel_drift() -> None:
    rows = [{"stage": "a", "bundle": 1e-7, "allowed": 1e-5}, {"stage": "b", "bundle": 2e-3, "allowed": 1e-3},
            {"stage": "c", "bundle": 9.0, "allowed": 1e-3}]
    assert verdict(rows) == "b"
    assert verdict(rows[:1]) is None
    assert verdict([{"stage": "nan", "bundle": math.nan, "allowed": 1.0}]) == "nan"
    import torch

    assert relative_deviation(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == 0.5
    assert relative_deviation(torch.tensor([math.nan]), torch.tensor([1.0])) == math.inf


def test_a_cpu_bundle_member_is_faithful_at_every_stage(mnist_splits: list[SemiSupervisedSplit]) -> None:
    """Two LeNet members, 2 + 2 epochs: every stage is reported, none departs beyond FACTOR x the drift
    that kernel choice alone causes (oneDNN off), and the first steps agree to float rounding."""
    base = TrainConfig(net=default_net_config("mnist", (1, 28, 28)),
                       sad=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=64),
                       ae=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=64, weight_decay=0.5e-3), seed=3)
    cfgs = [base, replace(base, seed=4, eta=2.0)]
    report = fidelity_report([mnist_splits[0], mnist_splits[1]], cfgs, member=1)
    if os.environ.get("DEEPSAD_FIDELITY_JSON"):  # gpu_check.sh --dry-run summarises it
        Path(os.environ["DEEPSAD_FIDELITY_JSON"]).write_text(json.dumps(report, indent=1))
    assert [r["stage"] for r in report["stages"]] == list(STAGES)
    assert all(math.isfinite(r["bundle"]) and math.isfinite(r["alt"]) for r in report["stages"])
    assert all(r["allowed"] >= FACTOR * r["alt"] for r in report["stages"])
    assert report["first_departure"] is None, report["stages"]
    by_stage = {r["stage"]: r for r in report["stages"]}
    assert by_stage["sad.step1.loss"]["bundle"] < 1e-4 and by_stage["ae.step1.loss"]["bundle"] < 1e-4
    assert set(report["auroc"]) == {"ref", "alt", "bundle"}
    assert report["auroc_gap"]["bundle"] == pytest.approx(abs(report["auroc"]["bundle"] - report["auroc"]["ref"]))
