"""The bundled trainer equals K separate ``training.train`` runs; its parts equal torch's modules."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import vmap

from deepsad import training
from deepsad.bundle import (
    BundleMemberResult,
    BundleProgress,
    BundleState,
    bundle_key,
    check_bundle,
    pretrain_bundle,
    train_bundle,
)
from deepsad.data.dataset import Dataset
from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split
from deepsad.distributed import batches
from deepsad.errors import CheckpointError, ConfigError
from deepsad.networks import NetConfig, build_autoencoder, default_net_config
from deepsad.pool import SamplePool, epoch_plan
from deepsad.stacked import StackedAdam, StackedNet
from deepsad.training import FitResult, OptimConfig, TrainConfig, finetune, pretrain, train

# --------------------------------------------------------------------------- fixtures


def _digits_split(normal: tuple[int, ...], known: int, seed: int, pollution: float) -> SemiSupervisedSplit:
    return make_split(load_dataset("digits", None), Protocol(
        normal_classes=normal, known_anomaly_classes=(known,), n_labeled_anomalies=8, ratio_pollution=pollution,
        seed=seed))


@pytest.fixture(scope="module")
def digits_splits() -> list[SemiSupervisedSplit]:
    """Three splits of different sizes (103, 121, ~215 training samples) and protocols."""
    return [_digits_split((0,), 1, 0, 0.05), _digits_split((0,), 1, 1, 0.2), _digits_split((2, 3), 4, 0, 0.1)]


def _mlp_configs(split: SemiSupervisedSplit) -> list[TrainConfig]:
    base = TrainConfig(
        net=default_net_config(split.dataset, split.train.x.shape[1:]),
        sad=OptimConfig(lr=1e-3, epochs=4, milestones=(3,), batch_size=20),
        ae=OptimConfig(lr=1e-3, epochs=3, milestones=(2,), batch_size=20, weight_decay=0.5e-3),
        seed=3,
    )
    return [
        base,
        replace(base, seed=4, eta=2.0, sad=replace(base.sad, lr=2e-3, weight_decay=1e-4)),
        replace(base, seed=5, eta=0.5, ae=replace(base.ae, lr=5e-4, weight_decay=1e-5)),  # type: ignore[type-var]
    ]


@pytest.fixture(scope="module")
def mlp_bundle(digits_splits: list[SemiSupervisedSplit]) -> list[BundleMemberResult]:
    return train_bundle(digits_splits, _mlp_configs(digits_splits[0]))


@pytest.fixture(scope="module")
def mnist_splits(shared_data: Path) -> list[SemiSupervisedSplit]:
    full = load_dataset("mnist", shared_data)
    assert full.x_test is not None and full.y_test is not None
    small = Dataset("mnist", "image", full.x_train[:1200], full.y_train[:1200], full.x_test[:300],
                    full.y_test[:300], source="test slice")
    return [make_split(small, Protocol(normal_classes=n, known_anomaly_classes=(a,), n_labeled_anomalies=m,
                                       ratio_pollution=0.05, seed=s))
            for n, a, m, s in [((0,), 1, 5, 0), ((0,), 1, 3, 1), ((2, 3), 4, 5, 0)]]


# --------------------------------------------------------------------------- helpers


def _lenet_config() -> TrainConfig:
    return TrainConfig(
        net=default_net_config("mnist", (1, 28, 28)),
        sad=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=32),
        ae=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=32, weight_decay=0.5e-3),
        seed=3,
    )


def assert_member_equals_run(b: FitResult, ref: FitResult, split: SemiSupervisedSplit, *, weights: float,
                             losses: float, scores: float) -> None:
    """``weights``: max |Δ| per tensor (and c) relative to the tensor's max |value|; ``losses``: relative
    error of every epoch's loss; ``scores``: max |Δ| of the eval-mode test scores relative to their max."""
    sa, sb = ref.model.state_dict, b.model.state_dict
    assert sa.keys() == sb.keys()
    for name in sa:
        if name.endswith("num_batches_tracked"):
            assert torch.equal(sa[name], sb[name]), name
            continue
        scale = float(sa[name].abs().max())
        torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=weights * scale, msg=name)
    torch.testing.assert_close(b.model.c, ref.model.c, rtol=0, atol=weights * float(ref.model.c.abs().max()))
    assert [(h.phase, h.epoch, h.lr) for h in b.history] == [(h.phase, h.epoch, h.lr) for h in ref.history]
    np.testing.assert_allclose([h.loss for h in b.history], [h.loss for h in ref.history], rtol=losses)
    for x, y in ((h.val_auroc, g.val_auroc) for h, g in zip(b.history, ref.history, strict=True)):
        assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, abs=1e-9))
    assert b.val_auroc == pytest.approx(ref.val_auroc, abs=1e-9)
    assert b.val_ap == pytest.approx(ref.val_ap, abs=1e-9)
    assert b.test_auroc == pytest.approx(ref.test_auroc, abs=1e-9)
    assert b.test_ap == pytest.approx(ref.test_ap, abs=1e-9)
    assert b.n_transferred == ref.n_transferred
    assert b.model.meta["fingerprint"] == split.fingerprint and b.model.eta == ref.model.eta
    s_ref, s_b = ref.model.score(split.test.x), b.model.score(split.test.x)  # eval-mode BatchNorm
    np.testing.assert_allclose(s_b, s_ref, rtol=0, atol=scores * float(np.abs(s_ref).max()))


def _plain_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``training.train`` on contiguous tensors. On CPUs, channels-last BatchNorm computes the
    variance in one pass; after MNIST's first convolution (|mean| >> std) that alone gives the
    gradients ~1e-3 relative error and moves a 2-epoch LeNet run by ~1e-2 — far above the bundle's
    deviation from the contiguous run, which is what these tests compare against."""
    monkeypatch.setattr(training, "_is_image_net", lambda module: False)
    monkeypatch.setattr(training, "to_layout", lambda x: x)


# --------------------------------------------------------------------------- equivalence with separate runs


def test_mlp_bundle_equals_separate_runs(digits_splits: list[SemiSupervisedSplit],
                                         mlp_bundle: list[BundleMemberResult]) -> None:
    cfgs = _mlp_configs(digits_splits[0])
    sizes = [len(s.train) for s in digits_splits]
    steps = [len(batches(torch.arange(n), 20)) for n in sizes]
    assert len(set(steps)) > 1, "members must have different numbers of steps per epoch"
    assert any(n % 20 == 1 for n in sizes), "one member must have a merged final batch (21 rows)"
    for member, split, cfg in zip(mlp_bundle, digits_splits, cfgs, strict=True):
        assert member.ok and member.failure is None and member.fit is not None
        assert_member_equals_run(member.fit, train(split, cfg), split, weights=1e-4, losses=1e-5, scores=1e-5)


def test_lenet_bundle_equals_separate_runs(mnist_splits: list[SemiSupervisedSplit],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    base = _lenet_config()
    cfgs = [base, replace(base, seed=4, eta=2.0, sad=replace(base.sad, lr=2e-3, weight_decay=1e-4)),
            replace(base, seed=5, eta=0.5, ae=replace(base.ae, lr=5e-4, weight_decay=1e-5))]  # type: ignore[type-var]
    bundle = train_bundle(mnist_splits, cfgs)
    _plain_layout(monkeypatch)
    for member, split, cfg in zip(bundle, mnist_splits, cfgs, strict=True):
        assert member.fit is not None, member.failure
        assert_member_equals_run(member.fit, train(split, cfg), split, weights=3e-4, losses=1e-5, scores=1e-4)


def test_pretrain_bundle_shares_an_autoencoder_per_split_and_seed(digits_splits: list[SemiSupervisedSplit]) -> None:
    base = _mlp_configs(digits_splits[0])[0]
    cfgs = [base, replace(base, eta=3.0, sad=replace(base.sad, lr=5e-3)), replace(base, seed=9)]
    splits = [digits_splits[0], digits_splits[0], digits_splits[1]]
    seen: list[BundleProgress] = []
    results = pretrain_bundle(splits, cfgs, on_epoch=lambda p, _s: seen.append(p))
    assert results[0].ae is results[1].ae  # one pretraining for both η settings
    assert all(len(p.reports) == 3 and all(r is not None for r in p.reports) for p in seen)
    for res, split, cfg in zip(results, splits, cfgs, strict=True):
        assert res.ae is not None
        ref = pretrain(split, cfg)
        for name, value in ref.state_dict.items():
            torch.testing.assert_close(res.ae.state_dict[name], value, rtol=0,
                                       atol=1e-4 * float(value.abs().max()) if value.is_floating_point() else 0)
        np.testing.assert_allclose([h.loss for h in res.history], [h.loss for h in ref.history], rtol=1e-5)


def test_cached_autoencoders_are_transferred_as_finetune_does(digits_splits: list[SemiSupervisedSplit]) -> None:
    cfgs = _mlp_configs(digits_splits[0])[:2]
    ae = pretrain(digits_splits[0], cfgs[0]).state_dict
    out = train_bundle(digits_splits[:2], cfgs, ae_states=[ae, None])  # member 1: random init, no transfer
    for member, split, cfg, state in zip(out, digits_splits[:2], cfgs, [ae, None], strict=True):
        assert member.fit is not None
        assert [h.phase for h in member.history] == ["sad"] * 4
        ref = finetune(split, cfg, ae_state=state)
        assert_member_equals_run(member.fit, ref, split, weights=1e-4, losses=1e-5, scores=1e-5)
    with pytest.raises(ConfigError, match="ae_states: 1 given for 2 members"):
        train_bundle(digits_splits[:2], cfgs, ae_states=[ae])


# --------------------------------------------------------------------------- isolation, grouping, progress


def _assert_isolated(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig],
                     alone: list[BundleMemberResult]) -> None:
    """A member with an exploding learning rate, added to the bundle, fails alone; the others are bit
    for bit what they are without it (on CPUs; a GPU may pick other kernels for another K)."""
    exploding = replace(cfgs[0], seed=11, sad=replace(cfgs[0].sad, lr=1e30))
    mixed = train_bundle([splits[0], splits[1], splits[1], splits[2]], [cfgs[0], cfgs[1], exploding, cfgs[2]])
    failed = mixed[2]
    assert failed.fit is None and not failed.ok
    assert failed.failure is not None and "diverged" in failed.failure and "sad epoch 1" in failed.failure
    assert {h.phase for h in failed.history} == {"ae"}  # nothing reported after it diverged
    for a, member in zip(alone, [mixed[0], mixed[1], mixed[3]], strict=True):
        assert a.fit is not None and member.fit is not None
        sa, sb = a.fit.model.state_dict, member.fit.model.state_dict
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
        assert torch.equal(a.fit.model.c, member.fit.model.c)
        assert [h.loss for h in a.history] == [h.loss for h in member.history]
        assert (a.fit.val_auroc, a.fit.test_auroc) == (member.fit.val_auroc, member.fit.test_auroc)


def test_a_diverging_member_is_isolated(digits_splits: list[SemiSupervisedSplit],
                                        mlp_bundle: list[BundleMemberResult]) -> None:
    _assert_isolated(digits_splits, _mlp_configs(digits_splits[0]), mlp_bundle)


def test_a_diverging_lenet_member_is_isolated(mnist_splits: list[SemiSupervisedSplit]) -> None:
    cfgs = [replace(_lenet_config(), seed=s) for s in (3, 4, 5)]
    _assert_isolated(mnist_splits, cfgs, train_bundle(mnist_splits, cfgs))


def test_bf16_autocast_trains_every_member_close_to_fp32(digits_splits: list[SemiSupervisedSplit],
                                                         mlp_bundle: list[BundleMemberResult]) -> None:
    cfgs = [replace(c, bf16=True) for c in _mlp_configs(digits_splits[0])]
    for half, full in zip(train_bundle(digits_splits, cfgs), mlp_bundle, strict=True):
        assert half.fit is not None and full.fit is not None
        np.testing.assert_allclose([h.loss for h in half.history], [h.loss for h in full.history], rtol=0.1)
        assert all(v.dtype == torch.float32 for v in half.fit.model.state_dict.values() if v.is_floating_point())


def test_a_member_whose_autoencoder_diverges_fails_in_pretraining(digits_splits: list[SemiSupervisedSplit]) -> None:
    cfgs = _mlp_configs(digits_splits[0])
    assert cfgs[0].ae is not None
    bad = replace(cfgs[0], seed=12, ae=replace(cfgs[0].ae, lr=1e30))
    out = train_bundle(digits_splits[:2], [bad, cfgs[1]])
    assert out[0].failure is not None and "ae epoch 1" in out[0].failure and out[0].fit is None
    assert out[1].ok


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: replace(c, net=replace(c.net, rep_dim=16)), "net.rep_dim"),
    (lambda c: replace(c, net=replace(c.net, h_dims=(32, 8))), "net.h_dims"),
    (lambda c: replace(c, sad=replace(c.sad, batch_size=64)), "sad.batch_size"),
    (lambda c: replace(c, sad=replace(c.sad, epochs=9)), "sad.epochs"),
    (lambda c: replace(c, ae=replace(c.ae, milestones=(1,))), "ae.milestones"),
    (lambda c: replace(c, ae=None), "ae"),
    (lambda c: replace(c, bf16=True), "bf16"),
])
def test_members_that_cannot_share_a_bundle_are_refused(digits_splits: list[SemiSupervisedSplit], change: object,
                                                        field: str) -> None:
    cfg = _mlp_configs(digits_splits[0])[0]
    other = change(cfg)  # type: ignore[operator]
    assert bundle_key(other) != bundle_key(cfg)
    with pytest.raises(ConfigError, match=rf"cfgs\[1\]\.{field}: "):
        check_bundle(digits_splits[:2], [cfg, other])


def test_what_may_differ_inside_a_bundle(digits_splits: list[SemiSupervisedSplit]) -> None:
    cfg = _mlp_configs(digits_splits[0])[0]
    assert cfg.ae is not None
    other = replace(cfg, seed=7, eta=5.0, reference_compat=True, sad=replace(cfg.sad, lr=0.1, weight_decay=0.1),
                    ae=replace(cfg.ae, lr=0.2, weight_decay=0.0))
    assert bundle_key(other) == bundle_key(cfg)
    check_bundle(digits_splits[:2], [cfg, other])
    with pytest.raises(ConfigError, match="2 splits but 1 configs"):
        check_bundle(digits_splits[:2], [cfg])
    lenet = TrainConfig(net=default_net_config("mnist", (1, 28, 28)))
    with pytest.raises(ConfigError, match=r"splits\[0\]: samples of shape \(64,\) do not fit"):
        check_bundle(digits_splits[:1], [lenet])


def test_progress_reports_every_member_and_validates_every_n_epochs(digits_splits: list[SemiSupervisedSplit]) -> None:
    cfgs = [replace(c, ae=None) for c in _mlp_configs(digits_splits[0])]
    seen: list[BundleProgress] = []
    out = train_bundle(digits_splits, cfgs, on_epoch=lambda p, _s: seen.append(p), val_every=3)
    assert [(p.phase, p.epoch, p.epochs) for p in seen] == [("sad", e, 4) for e in range(1, 5)]
    for p in seen:
        assert len(p.reports) == 3 and p.failures == (None, None, None)
        for r, split in zip(p.reports, digits_splits, strict=True):
            assert r is not None and r.samples_per_s == pytest.approx(len(split.train) / r.seconds)
            assert (r.val_auroc is not None) == (p.epoch in (3, 4))
    assert all(m.fit is not None and m.fit.n_transferred == 0 for m in out)


def test_resumed_bundle_equals_uninterrupted(digits_splits: list[SemiSupervisedSplit],
                                             mlp_bundle: list[BundleMemberResult], tmp_path: Path) -> None:
    cfgs = _mlp_configs(digits_splits[0])

    class Stop(Exception):
        pass

    for phase, epoch in (("ae", 2), ("sad", 2)):
        def stop(p: BundleProgress, state_fn: object, phase: str = phase, epoch: int = epoch) -> None:
            if (p.phase, p.epoch) == (phase, epoch):
                state_fn().save(tmp_path / phase)  # type: ignore[operator]
                raise Stop

        with pytest.raises(Stop):
            train_bundle(digits_splits, cfgs, on_epoch=stop)
        state = BundleState.load(tmp_path / phase)
        assert (state.phase, state.epoch) == (phase, epoch)
        resumed = train_bundle(digits_splits, cfgs, resume=state)
        for a, b in zip(mlp_bundle, resumed, strict=True):
            assert a.fit is not None and b.fit is not None
            assert all(torch.equal(a.fit.model.state_dict[n], v) for n, v in b.fit.model.state_dict.items())
            assert [h.loss for h in a.history] == [h.loss for h in b.history]
            assert b.fit.test_auroc == a.fit.test_auroc and b.fit.n_transferred == a.fit.n_transferred
    with pytest.raises(CheckpointError, match="other configurations"):
        train_bundle(digits_splits, [replace(c, eta=9.0) for c in cfgs], resume=state)


# --------------------------------------------------------------------------- the parts


def test_masked_batchnorm_matches_torch_in_training_and_eval() -> None:
    torch.manual_seed(0)
    nets = [build_autoencoder(NetConfig("mnist_lenet", 32, (1, 28, 28))) for _ in range(3)]
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, torch.device("cpu"))
    x = torch.rand(3, 12, 1, 28, 28)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False  # member 1: a batch of 9 padded to 12
    out, stats = vmap(view.train_forward)(flat, x, mask)
    accept = torch.tensor([True, True, False])  # member 2 takes no step
    before = {n: v.clone() for n, v in buffers.items()}
    view.update_running_stats(buffers, stats, accept)
    for k in range(2):
        ref = copy.deepcopy(nets[k]).train()
        torch.testing.assert_close(out[k][mask[k]], ref(x[k][mask[k]]), rtol=1e-5, atol=1e-5)
        for name, value in ref.state_dict().items():  # running mean, unbiased var, batch count
            torch.testing.assert_close(view.state_dict(flat, buffers, k)[name], value, rtol=1e-5, atol=1e-7)
        ref.eval()
        evaluated = vmap(view.eval_forward)(flat, buffers, x)[k]
        torch.testing.assert_close(evaluated, ref(x[k]), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(buffers[n][2], before[n][2]) for n in buffers)


def test_stacked_adam_matches_torch_adam_and_skips_rejected_members() -> None:
    torch.manual_seed(0)
    lrs, wds = [1e-3, 5e-2, 1e-2], [0.0, 1e-2, 0.5]
    params = [torch.randn(7, requires_grad=True) for _ in range(3)]
    opts = [torch.optim.Adam([p], lr=lr, weight_decay=wd) for p, lr, wd in zip(params, lrs, wds, strict=True)]
    flat = torch.stack([p.detach().clone() for p in params])
    adam = StackedAdam(flat, lrs, wds)
    for step in range(6):
        grads = torch.randn(3, 7)
        accept = torch.tensor([True, step % 2 == 0, True])
        flat = torch.where(accept.view(-1, 1), adam.propose(flat, grads), flat)
        adam.commit(accept)
        for k, (p, opt) in enumerate(zip(params, opts, strict=True)):
            if accept[k]:
                p.grad = grads[k].clone()
                opt.step()
    for k, p in enumerate(params):
        torch.testing.assert_close(flat[k], p.detach(), rtol=1e-6, atol=1e-7)
    assert adam.step_count.tolist() == [6, 3, 6]


def test_epoch_plan_follows_the_batching_rule_of_single_runs(digits_splits: list[SemiSupervisedSplit]) -> None:
    pool, parts = SamplePool.build([(s, s.train) for s in digits_splits], torch.device("cpu"))
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    plan = epoch_plan(parts, gens, 20, [True, True, True], torch.device("cpu"))
    for k, split in enumerate(digits_splits):
        perm = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(k))
        expected = batches(perm, 20)
        assert int(plan.active[:, k].sum()) == len(expected) and not plan.active[len(expected):, k].any()
        for s, idx in enumerate(expected):
            rows = plan.rows[s, k][plan.valid[s, k]]
            assert torch.equal(pool.x[rows], torch.as_tensor(split.train.x)[idx])
            assert torch.equal(plan.semi_targets[s, k][plan.valid[s, k]], torch.as_tensor(split.train.semi_targets)[idx])


def test_pool_stores_each_distinct_row_once(digits_splits: list[SemiSupervisedSplit]) -> None:
    s0, s1 = digits_splits[0], digits_splits[1]
    parts = [(s0, s0.train), (s0, s0.train), (s1, s1.train), (s0, s0.val)]
    pool, pooled = SamplePool.build(parts, torch.device("cpu"))
    for (_, part), p in zip(parts, pooled, strict=True):
        assert torch.equal(pool.x[p.rows], torch.as_tensor(part.x))
    assert pooled[0].rows is not None and torch.equal(pooled[0].rows, pooled[1].rows)
    if s0.preprocessing.kind == "scale255":
        assert len(pool) == len(np.union1d(np.union1d(s0.train.indices, s1.train.indices), s0.val.indices))
    else:  # standard_minmax fitted per split: rows of different splits differ, so they are kept apart
        assert len(pool) == len(s0.train) + len(s1.train) + len(s0.val)
