"""GPU checks (skipped without CUDA): training on the device, bf16 autocast parity with fp32."""

from __future__ import annotations

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


def test_a_cuda_bundle_equals_separate_runs_and_bf16_keeps_the_auroc(split) -> None:  # type: ignore[no-untyped-def]
    from deepsad.bundle import train_bundle

    cfgs = [TrainConfig(net=default_net_config("mnist", (1, 28, 28)), eta=eta, seed=seed,
                        sad=OptimConfig(epochs=5, lr=1e-3), ae=OptimConfig(epochs=5, lr=1e-3, weight_decay=0.5e-3),
                        device="cuda") for seed in (0, 1) for eta in (0.5, 2.0)]
    fp32 = train_bundle([split] * len(cfgs), cfgs)
    alone = train(split, cfgs[3])
    assert all(r.ok for r in fp32)
    got = fp32[3].fit
    assert got is not None and abs(got.test_auroc - alone.test_auroc) < 0.01  # cuDNN kernels may differ by K
    bf16 = train_bundle([split] * len(cfgs), [replace(c, bf16=True) for c in cfgs])
    for a, b in zip(fp32, bf16, strict=True):
        assert a.fit is not None and b.fit is not None
        assert abs(a.fit.test_auroc - b.fit.test_auroc) < 0.02, "bf16 autocast must keep the AUROC of fp32"
