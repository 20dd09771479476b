"""GPU checks (skipped without CUDA): training on the device, a bundle member faithful to its separate
run stage by stage (the same logic runs on the CPU in test_bundle_fidelity.py), bf16 parity with fp32."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deepsad.data.dataset import Dataset
from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, make_split
from deepsad.networks import default_net_config
from deepsad.training import OptimConfig, TrainConfig, train

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def split(shared_data: Path):  # type: ignore[no-untyped-def]
    full = load_dataset("mnist", shared_data)
    assert full.x_test is not None and full.y_test is not None
    small = Dataset("mnist", "image", full.x_train[:6000], full.y_train[:6000], full.x_test[:2000],
                    full.y_test[:2000], source="slice")
    return make_split(small, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), ratio_known_outlier=0.01,
                                      ratio_pollution=0.1, seed=0))


def test_cuda_training_matches_cpu_quality_and_bf16_matches_fp32(split) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(net=default_net_config("mnist", (1, 28, 28)), sad=OptimConfig(epochs=10, lr=1e-3),
                      ae=OptimConfig(epochs=10, lr=1e-3, weight_decay=0.5e-3), device="cuda")
    fp32 = train(split, cfg)
    bf16 = train(split, replace(cfg, bf16=True))
    assert fp32.test_auroc > 0.8
    assert abs(bf16.test_auroc - fp32.test_auroc) < 0.02
    assert next(iter(fp32.model.state_dict.values())).device == torch.device("cpu")


def test_a_cuda_bundle_member_departs_from_its_separate_run_nowhere(split) -> None:  # type: ignore[no-untyped-def]
    """fp32, deterministic algorithms: member 3 of a bundle of 4 against its separate run at every stage
    (first step: loss, gradient, parameters; first epoch; end of each phase; c; test scores), each
    against what the same separate run differs by with cuDNN off (deepsad.bundle_fidelity). The
    report names the first stage that departs; DEEPSAD_FIDELITY_JSON=path also writes it there
    (benchmarks/gpu_check.sh puts it in its summary)."""
    from deepsad.bundle_fidelity import fidelity_report

    cfgs = [TrainConfig(net=default_net_config("mnist", (1, 28, 28)), eta=eta, seed=seed,
                        sad=OptimConfig(epochs=5, lr=1e-3), ae=OptimConfig(epochs=5, lr=1e-3, weight_decay=0.5e-3),
                        device="cuda") for seed, eta in ((0, 0.5), (1, 2.0), (2, 0.5), (3, 2.0))]
    report = fidelity_report([split] * len(cfgs), cfgs, member=3)
    out = os.environ.get("DEEPSAD_FIDELITY_JSON")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    table = "\n".join(f"{r['stage']:>17}: bundle {r['bundle']:.2e}  cuDNN-off {r['alt']:.2e}  allowed {r['allowed']:.2e}"
                      for r in report["stages"])
    assert report["first_departure"] is None, f"departs at {report['first_departure']}:\n{table}"


def test_bf16_bundles_keep_the_auroc_of_fp32(split) -> None:  # type: ignore[no-untyped-def]
    from deepsad.bundle import train_bundle

    cfgs = [TrainConfig(net=default_net_config("mnist", (1, 28, 28)), eta=eta, seed=seed,
                        sad=OptimConfig(epochs=5, lr=1e-3), ae=OptimConfig(epochs=5, lr=1e-3, weight_decay=0.5e-3),
                        device="cuda") for seed in (0, 1) for eta in (0.5, 2.0)]
    fp32 = train_bundle([split] * len(cfgs), cfgs)
    bf16 = train_bundle([split] * len(cfgs), [replace(c, bf16=True) for c in cfgs])
    for a, b in zip(fp32, bf16, strict=True):
        assert a.fit is not None and b.fit is not None
        assert abs(a.fit.test_auroc - b.fit.test_auroc) < 0.02, "bf16 autocast must keep the AUROC of fp32"
