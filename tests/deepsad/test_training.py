from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split
from deepsad.distributed import DistContext
from deepsad.errors import CheckpointError, ConfigError
from deepsad.model import DeepSADModel
from deepsad.networks import default_net_config
from deepsad.training import (
    EpochReport,
    FitResult,
    OptimConfig,
    TrainConfig,
    TrainState,
    embed,
    finetune,
    init_center,
    pretrain,
    train,
)


@pytest.fixture(scope="module")
def split() -> SemiSupervisedSplit:
    data = load_dataset("digits", None)
    return make_split(data, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), n_labeled_anomalies=8,
                                     ratio_pollution=0.05, seed=0))


def config(split: SemiSupervisedSplit, **kw: object) -> TrainConfig:
    base = TrainConfig(
        net=default_net_config(split.dataset, split.train.x.shape[1:]),
        sad=OptimConfig(lr=1e-3, epochs=8, milestones=(6,), batch_size=32),
        ae=OptimConfig(lr=1e-3, epochs=6, milestones=(4,), batch_size=32, weight_decay=0.5e-3),
        seed=3,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference_run(split: SemiSupervisedSplit) -> FitResult:
    return train(split, config(split))


def assert_same_model(a: DeepSADModel, b: DeepSADModel, atol: float = 1e-6) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], atol=atol, rtol=0, msg=k)
    torch.testing.assert_close(a.c, b.c, atol=atol, rtol=0)


def test_training_learns_and_reports_every_epoch(split: SemiSupervisedSplit, reference_run: FitResult) -> None:
    phases = [(h.phase, h.epoch) for h in reference_run.history]
    assert phases == [("ae", e) for e in range(1, 7)] + [("sad", e) for e in range(1, 9)]
    assert reference_run.n_transferred == len(reference_run.model.state_dict)
    assert reference_run.val_auroc is not None and reference_run.val_auroc > 0.75
    assert reference_run.test_auroc > 0.75
    sad_lrs = [h.lr for h in reference_run.history if h.phase == "sad"]
    assert sad_lrs == pytest.approx([1e-3] * 6 + [1e-4] * 2)  # MultiStepLR, milestone 6


def test_same_seed_same_model_different_seed_different(split: SemiSupervisedSplit, reference_run: FitResult) -> None:
    again = train(split, config(split))
    assert_same_model(again.model, reference_run.model, atol=0)
    other = train(split, config(split, seed=4))
    assert not torch.equal(other.model.c, reference_run.model.c)


def test_center_is_mean_embedding_with_small_coordinates_pushed(split: SemiSupervisedSplit) -> None:
    cfg = config(split)
    ae = pretrain(split, cfg)
    from deepsad.networks import build_encoder
    from deepsad.training import transfer_encoder

    net = build_encoder(cfg.net)
    transfer_encoder(net, ae.state_dict)
    x = torch.as_tensor(split.train.x)
    c = init_center(net, x, DistContext())
    mean = embed(net, x).mean(0)
    expected = torch.where(mean.abs() < 0.1, torch.where(mean < 0, -0.1, 0.1), mean)
    torch.testing.assert_close(c, expected, atol=1e-6, rtol=0)
    assert bool((c.abs() >= 0.1 - 1e-7).all())


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("phase", "epoch"), [("ae", 2), ("ae", 6), ("sad", 1), ("sad", 7)])
def test_resumed_training_equals_uninterrupted(
    split: SemiSupervisedSplit, reference_run: FitResult, tmp_path: Path, phase: str, epoch: int
) -> None:
    cfg = config(split)
    ckpt = tmp_path / "state"

    def stop_after(report: EpochReport, state_fn: object) -> None:
        if (report.phase, report.epoch) == (phase, epoch):
            state_fn().save(ckpt)  # type: ignore[operator]
            raise Interrupt

    with pytest.raises(Interrupt):
        train(split, cfg, on_epoch=stop_after)
    state = TrainState.load(ckpt)  # what a restarted process has: only the files
    assert (state.phase, state.epoch) == (phase, epoch)
    resumed = train(split, cfg, resume=state)
    assert_same_model(resumed.model, reference_run.model, atol=1e-6)
    assert [h.phase for h in resumed.history] == [h.phase for h in reference_run.history]
    np.testing.assert_allclose([h.loss for h in resumed.history], [h.loss for h in reference_run.history],
                               rtol=1e-6)
    assert resumed.test_auroc == pytest.approx(reference_run.test_auroc, abs=1e-6)


def test_resume_refuses_a_state_of_another_configuration(split: SemiSupervisedSplit, tmp_path: Path) -> None:
    states: list[TrainState] = []
    train(split, config(split), on_epoch=lambda r, s: states.append(s()) if r.epoch == 1 else None)
    with pytest.raises(CheckpointError, match="another configuration"):
        train(split, config(split, eta=2.0), resume=states[-1])
    with pytest.raises(CheckpointError, match="phase"):
        finetune(split, config(split), ae_state=None, resume=states[0])


def test_without_pretraining_and_reference_compat(split: SemiSupervisedSplit) -> None:
    plain = train(split, config(split, ae=None))
    assert plain.n_transferred == 0 and [h.phase for h in plain.history] == ["sad"] * 8
    compat = train(split, config(split, reference_compat=True))
    assert compat.n_transferred == 0
    assert len([h for h in compat.history if h.phase == "ae"]) == 6


def test_saved_model_scores_exactly_like_the_trained_one(
    split: SemiSupervisedSplit, reference_run: FitResult, tmp_path: Path
) -> None:
    model = reference_run.model
    model.save(tmp_path / "m")
    loaded = DeepSADModel.load(tmp_path / "m")
    assert np.array_equal(loaded.score(split.test.x), model.score(split.test.x))
    raw = load_dataset("digits", None).x_train[:20]
    assert np.array_equal(loaded.score_raw(raw), model.score_raw(raw))
    assert loaded.meta["fingerprint"] == split.fingerprint and loaded.eta == 1.0


def test_bad_training_configs() -> None:
    with pytest.raises(ConfigError, match="eta: must be > 0"):
        TrainConfig(net=default_net_config("mnist", (1, 28, 28)), eta=0.0)
    with pytest.raises(ConfigError, match="lr: must be > 0"):
        OptimConfig(lr=-1)
    with pytest.raises(ConfigError, match="milestones"):
        OptimConfig(milestones=(50, 10))


@pytest.fixture(scope="module")
def mnist_small(shared_data: Path) -> SemiSupervisedSplit:
    from deepsad.data.dataset import Dataset

    full = load_dataset("mnist", shared_data)
    assert full.x_test is not None and full.y_test is not None
    small = Dataset("mnist", "image", full.x_train[:1500], full.y_train[:1500], full.x_test[:400],
                    full.y_test[:400], source="test slice")
    return make_split(small, Protocol(normal_classes=(0,), known_anomaly_classes=(1,), n_labeled_anomalies=5,
                                      ratio_pollution=0.1, seed=0))


def test_lenet_resume_equals_uninterrupted(mnist_small: SemiSupervisedSplit, tmp_path: Path) -> None:
    cfg = TrainConfig(
        net=default_net_config("mnist", (1, 28, 28)),
        sad=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=32),
        ae=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=32),
        seed=0,
    )
    full = train(mnist_small, cfg)

    def stop(report: EpochReport, state_fn: object) -> None:
        if (report.phase, report.epoch) == ("sad", 1):
            state_fn().save(tmp_path / "s")  # type: ignore[operator]
            raise Interrupt

    with pytest.raises(Interrupt):
        train(mnist_small, cfg, on_epoch=stop)
    resumed = train(mnist_small, cfg, resume=TrainState.load(tmp_path / "s"))
    assert_same_model(resumed.model, full.model, atol=1e-6)
    assert full.test_auroc > 0.6
