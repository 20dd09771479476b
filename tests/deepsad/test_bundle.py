"""The bundled trainer equals K separate ``training.train`` runs under both strategies (its parts are
tested in test_stacked.py, test_pool.py and test_workers.py).

Tolerances of the equivalence tests (``assert_member_equals_run``: weights/c relative to each tensor's
max, per-epoch loss relative, eval scores relative to their max) and why:

* ``loop`` runs each member's forward and backward with the very modules, layout (channels-last
  images) and kernels of ``training.train``; only the optimiser differs — StackedAdam's vectorised
  arithmetic (e.g. L2 decay added without torch's fused multiply-add) rounds differently from
  ``torch.optim.Adam`` in the last bit. Measured: ≤ 2e-6 (weights), most members bit-identical.
  Tolerances 1e-5 / 1e-6 / 1e-5. The reference runs with the intra-op thread count the members use
  (:func:`deepsad.workers.member_threads`: 1 for LeNet members, which run in parallel on worker
  threads): torch's own kernels round differently with 1 and 2 threads, and 2 LeNet epochs per
  phase amplify that to 3e-2..9e-2 between two ``train`` runs that differ only in
  ``torch.set_num_threads`` (measured, torch 2.13) — for the MLP it is ≤ 1e-5.
* ``vmap`` computes every convolution as a grouped one and BatchNorm by masked sums, so forward and
  backward round differently each step and training amplifies that. Measured: ≤ 2e-5 (MLP) and
  ≤ 1e-4 (LeNet) on weights. Tolerances 1e-4 / 1e-5 / 1e-5 (MLP), 3e-4 / 1e-5 / 1e-4 (LeNet). It is
  compared against ``train`` on contiguous tensors (see ``_plain_layout``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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
from deepsad.bundle_strategies import Strategy, resolve_strategy
from deepsad.data.splits import SemiSupervisedSplit
from deepsad.distributed import batches
from deepsad.errors import CheckpointError, ConfigError
from deepsad.networks import default_net_config
from deepsad.training import FitResult, OptimConfig, TrainConfig, finetune, pretrain, train
from deepsad.workers import member_threads, threaded

# --------------------------------------------------------------------------- fixtures


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


STRATEGIES = ["vmap", "loop"]

#: assert_member_equals_run tolerances per strategy (see the module docstring).
MLP_TOL = {"vmap": {"weights": 1e-4, "losses": 1e-5, "scores": 1e-5},
           "loop": {"weights": 1e-5, "losses": 1e-6, "scores": 1e-5}}
LENET_TOL = {"vmap": {"weights": 3e-4, "losses": 1e-5, "scores": 1e-4},
             "loop": {"weights": 1e-5, "losses": 1e-6, "scores": 1e-5}}


@pytest.fixture(scope="module", params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> Strategy:
    return request.param


@pytest.fixture(scope="module")
def mlp_bundle(digits_splits: list[SemiSupervisedSplit], strategy: Strategy) -> list[BundleMemberResult]:
    return train_bundle(digits_splits, _mlp_configs(digits_splits[0]), strategy=strategy)


@contextlib.contextmanager
def kernel_threads(strategy: Strategy, *, image: bool = False) -> Iterator[None]:
    """Run reference ``train`` calls with the intra-op threads the strategy's member kernels use
    (the loop strategy runs convolutional members on worker threads, single-threaded)."""
    before = torch.get_num_threads()
    torch.set_num_threads(member_threads(torch.device("cpu"), image) if strategy == "loop" else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_MLP_RUNS: dict[int, list[FitResult]] = {}


def mlp_runs(splits: list[SemiSupervisedSplit], strategy: Strategy) -> list[FitResult]:
    """The MLP members trained separately with ``training.train`` under ``kernel_threads(strategy)``
    (cached per thread count: both strategies' tests share them where they can)."""
    with kernel_threads(strategy):
        threads = torch.get_num_threads()
        if threads not in _MLP_RUNS:
            _MLP_RUNS[threads] = [train(s, c) for s, c in zip(splits, _mlp_configs(splits[0]), strict=True)]
    return _MLP_RUNS[threads]


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
    monkeypatch.setattr(training, "is_image_net", lambda module: False)
    monkeypatch.setattr(training, "to_layout", lambda x: x)


# --------------------------------------------------------------------------- equivalence with separate runs


def test_mlp_bundle_equals_separate_runs(digits_splits: list[SemiSupervisedSplit], strategy: Strategy,
                                         mlp_bundle: list[BundleMemberResult]) -> None:
    sizes = [len(s.train) for s in digits_splits]
    steps = [len(batches(torch.arange(n), 20)) for n in sizes]
    assert len(set(steps)) > 1, "members must have different numbers of steps per epoch"
    assert any(n % 20 == 1 for n in sizes), "one member must have a merged final batch (21 rows)"
    for member, split, ref in zip(mlp_bundle, digits_splits, mlp_runs(digits_splits, strategy), strict=True):
        assert member.ok and member.failure is None and member.fit is not None
        assert_member_equals_run(member.fit, ref, split, **MLP_TOL[strategy])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lenet_bundle_equals_separate_runs(mnist_splits: list[SemiSupervisedSplit], strategy: Strategy,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``loop`` runs channels-last like ``train`` and is compared with it as is; ``vmap`` with ``train``
    on contiguous tensors (see ``_plain_layout`` and the module docstring for the tolerances)."""
    base = _lenet_config()
    cfgs = [base, replace(base, seed=4, eta=2.0, sad=replace(base.sad, lr=2e-3, weight_decay=1e-4)),
            replace(base, seed=5, eta=0.5, ae=replace(base.ae, lr=5e-4, weight_decay=1e-5))]  # type: ignore[type-var]
    bundle = train_bundle(mnist_splits, cfgs, strategy=strategy)
    if strategy == "vmap":
        _plain_layout(monkeypatch)
    for member, split, cfg in zip(bundle, mnist_splits, cfgs, strict=True):
        assert member.fit is not None, member.failure
        with kernel_threads(strategy, image=True):
            ref = train(split, cfg)
        assert_member_equals_run(member.fit, ref, split, **LENET_TOL[strategy])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pretrain_bundle_shares_an_autoencoder_per_split_and_seed(digits_splits: list[SemiSupervisedSplit],
                                                                  strategy: Strategy) -> None:
    base = _mlp_configs(digits_splits[0])[0]
    cfgs = [base, replace(base, eta=3.0, sad=replace(base.sad, lr=5e-3)), replace(base, seed=9)]
    splits = [digits_splits[0], digits_splits[0], digits_splits[1]]
    seen: list[BundleProgress] = []
    results = pretrain_bundle(splits, cfgs, on_epoch=lambda p, _s: seen.append(p),
                              strategy=strategy)
    assert results[0].ae is results[1].ae  # one pretraining for both η settings
    assert all(len(p.reports) == 3 and all(r is not None for r in p.reports) for p in seen)
    for res, split, cfg in zip(results, splits, cfgs, strict=True):
        assert res.ae is not None
        with kernel_threads(strategy):
            ref = pretrain(split, cfg)
        for name, value in ref.state_dict.items():
            torch.testing.assert_close(res.ae.state_dict[name], value, rtol=0,
                                       atol=1e-4 * float(value.abs().max()) if value.is_floating_point() else 0)
        np.testing.assert_allclose([h.loss for h in res.history], [h.loss for h in ref.history], rtol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cached_autoencoders_are_transferred_as_finetune_does(digits_splits: list[SemiSupervisedSplit],
                                                              strategy: Strategy) -> None:
    cfgs = _mlp_configs(digits_splits[0])[:2]
    with kernel_threads(strategy):
        ae = pretrain(digits_splits[0], cfgs[0]).state_dict
    out = train_bundle(digits_splits[:2], cfgs, ae_states=[ae, None],  # member 1: random init, no transfer
                       strategy=strategy)
    for member, split, cfg, state in zip(out, digits_splits[:2], cfgs, [ae, None], strict=True):
        assert member.fit is not None
        assert [h.phase for h in member.history] == ["sad"] * 4
        with kernel_threads(strategy):
            ref = finetune(split, cfg, ae_state=state)
        assert_member_equals_run(member.fit, ref, split, **MLP_TOL[strategy])
    with pytest.raises(ConfigError, match="ae_states: 1 given for 2 members"):
        train_bundle(digits_splits[:2], cfgs, ae_states=[ae])


# --------------------------------------------------------------------------- isolation, grouping, progress


def unchecked(cfg: Any, **changes: Any) -> Any:
    """``cfg`` with ``changes`` that its validation refuses (lr 1e30 > MAX_LR): a member made to diverge on
    purpose, as a legitimate setting can on real data."""
    out = copy.copy(cfg)
    for name, value in changes.items():
        object.__setattr__(out, name, value)
    return out


def _assert_isolated(splits: list[SemiSupervisedSplit], cfgs: list[TrainConfig],
                     alone: list[BundleMemberResult], strategy: Strategy) -> None:
    """A member with an exploding learning rate, added to the bundle, fails alone; the others are what
    they are without it: bit for bit with the loop strategy (each member's own kernels), to float
    rounding with vmap — the stacked kernels of K = 4 and K = 3 block their reductions differently on
    some CPUs (a 2e-8 difference in one member seen on this project's machines, at the previous
    commit's code too), and a GPU may pick other kernels for another K."""
    exploding = replace(cfgs[0], seed=11, sad=unchecked(cfgs[0].sad, lr=1e30))
    mixed = train_bundle([splits[0], splits[1], splits[1], splits[2]], [cfgs[0], cfgs[1], exploding, cfgs[2]],
                         strategy=strategy)
    failed = mixed[2]
    assert failed.fit is None and not failed.ok
    assert failed.failure is not None and "diverged" in failed.failure and "sad epoch 1" in failed.failure
    assert {h.phase for h in failed.history} == {"ae"}  # nothing reported after it diverged
    same: Any = torch.equal if strategy == "loop" else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-6))
    for a, member in zip(alone, [mixed[0], mixed[1], mixed[3]], strict=True):
        assert a.fit is not None and member.fit is not None
        sa, sb = a.fit.model.state_dict, member.fit.model.state_dict
        assert all(same(sa[n], sb[n]) for n in sa)
        assert same(a.fit.model.c, member.fit.model.c)
        if strategy == "loop":
            assert [h.loss for h in a.history] == [h.loss for h in member.history]
            assert (a.fit.val_auroc, a.fit.test_auroc) == (member.fit.val_auroc, member.fit.test_auroc)
        else:
            assert [h.loss for h in a.history] == pytest.approx([h.loss for h in member.history], rel=1e-5)
            assert (a.fit.val_auroc, a.fit.test_auroc) == pytest.approx(
                (member.fit.val_auroc, member.fit.test_auroc), abs=1e-4)


def test_a_diverging_member_is_isolated(digits_splits: list[SemiSupervisedSplit], strategy: Strategy,
                                        mlp_bundle: list[BundleMemberResult]) -> None:
    _assert_isolated(digits_splits, _mlp_configs(digits_splits[0]), mlp_bundle, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_diverging_lenet_member_is_isolated(mnist_splits: list[SemiSupervisedSplit], strategy: Strategy) -> None:
    cfgs = [replace(_lenet_config(), seed=s) for s in (3, 4, 5)]
    _assert_isolated(mnist_splits, cfgs, train_bundle(mnist_splits, cfgs, strategy=strategy),
                     strategy)


def test_bf16_autocast_trains_every_member_close_to_fp32(digits_splits: list[SemiSupervisedSplit], strategy: Strategy,
                                                         mlp_bundle: list[BundleMemberResult]) -> None:
    cfgs = [replace(c, bf16=True) for c in _mlp_configs(digits_splits[0])]
    for half, full in zip(train_bundle(digits_splits, cfgs, strategy=strategy),
                          mlp_bundle, strict=True):
        assert half.fit is not None and full.fit is not None
        np.testing.assert_allclose([h.loss for h in half.history], [h.loss for h in full.history], rtol=0.1)
        assert all(v.dtype == torch.float32 for v in half.fit.model.state_dict.values() if v.is_floating_point())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_member_whose_autoencoder_diverges_fails_in_pretraining(digits_splits: list[SemiSupervisedSplit],
                                                                  strategy: Strategy) -> None:
    cfgs = _mlp_configs(digits_splits[0])
    assert cfgs[0].ae is not None
    bad = replace(cfgs[0], seed=12, ae=unchecked(cfgs[0].ae, lr=1e30))
    out = train_bundle(digits_splits[:2], [bad, cfgs[1]], strategy=strategy)
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


def test_resumed_bundle_equals_uninterrupted(digits_splits: list[SemiSupervisedSplit], strategy: Strategy,
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
            train_bundle(digits_splits, cfgs, on_epoch=stop, strategy=strategy)
        state = BundleState.load(tmp_path / phase)
        assert (state.phase, state.epoch) == (phase, epoch)
        resumed = train_bundle(digits_splits, cfgs, resume=state, strategy=strategy)
        for a, b in zip(mlp_bundle, resumed, strict=True):
            assert a.fit is not None and b.fit is not None
            assert all(torch.equal(a.fit.model.state_dict[n], v) for n, v in b.fit.model.state_dict.items())
            assert [h.loss for h in a.history] == [h.loss for h in b.history]
            assert b.fit.test_auroc == a.fit.test_auroc and b.fit.n_transferred == a.fit.n_transferred
    with pytest.raises(CheckpointError, match="other configurations"):
        train_bundle(digits_splits, [replace(c, eta=9.0) for c in cfgs], resume=state)


def test_a_checkpoint_resumes_under_the_other_strategy(digits_splits: list[SemiSupervisedSplit],
                                                       tmp_path: Path) -> None:
    """Strategies share the stacked state, so a bundle stopped under one finishes under the other,
    still equal to separate runs — with the looser vmap tolerances (half the epochs ran vectorised),
    which also cover the loop's single-threaded kernels on this MLP (≤ 1e-5 from a 2-thread run)."""
    cfgs = _mlp_configs(digits_splits[0])

    class Stop(Exception):
        pass

    def stop(p: BundleProgress, state_fn: object) -> None:
        if (p.phase, p.epoch) == ("sad", 2):
            state_fn().save(tmp_path / "state")  # type: ignore[operator]
            raise Stop

    pairs: list[tuple[Strategy, Strategy]] = [("vmap", "loop"), ("loop", "vmap")]
    for first, then in pairs:
        with pytest.raises(Stop):
            train_bundle(digits_splits, cfgs, on_epoch=stop, strategy=first)
        resumed = train_bundle(digits_splits, cfgs, resume=BundleState.load(tmp_path / "state"),
                               strategy=then)
        for member, split, ref in zip(resumed, digits_splits, mlp_runs(digits_splits, "vmap"), strict=True):
            assert member.fit is not None, member.failure
            assert_member_equals_run(member.fit, ref, split, **MLP_TOL["vmap"])


def test_the_strategy_follows_the_device_unless_given(digits_splits: list[SemiSupervisedSplit]) -> None:
    assert resolve_strategy("auto", torch.device("cpu")) == "loop"
    assert resolve_strategy("auto", torch.device("cuda", 0)) == "vmap"
    assert resolve_strategy("vmap", torch.device("cpu")) == "vmap"
    assert resolve_strategy("loop", torch.device("cuda", 0)) == "loop"
    cfg = _mlp_configs(digits_splits[0])[0]
    with pytest.raises(ConfigError, match=r"strategy: must be 'auto', 'vmap' or 'loop' \(got 'grouped'\)"):
        train_bundle(digits_splits[:1], [cfg], strategy="grouped")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"strategy: must be"):
        pretrain_bundle(digits_splits[:1], [cfg], strategy="grouped")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- worker threads


@pytest.mark.skipif(not threaded(torch.device("cpu")), reason="needs >= 2 intra-op threads with OpenMP")
def test_worker_threads_change_no_bit(mnist_splits: list[SemiSupervisedSplit]) -> None:
    """LeNet members on worker threads (one intra-op thread each) give bit for bit what the same bundle
    gives one member after another on this thread with one intra-op thread."""
    one = OptimConfig(lr=1e-3, epochs=1, batch_size=32)
    cfgs = [replace(_lenet_config(), seed=s, eta=1.0 + s, sad=one, ae=replace(one, weight_decay=1e-3)) for s in range(3)]
    threaded_run = train_bundle(mnist_splits, cfgs, strategy="loop")
    with kernel_threads("loop", image=True):
        assert not threaded(torch.device("cpu"))
        serial_run = train_bundle(mnist_splits, cfgs, strategy="loop")
    for a, b in zip(threaded_run, serial_run, strict=True):
        assert a.fit is not None and b.fit is not None
        assert all(torch.equal(v, b.fit.model.state_dict[n]) for n, v in a.fit.model.state_dict.items())
        assert [h.loss for h in a.history] == [h.loss for h in b.history]
        assert (a.fit.val_auroc, a.fit.test_auroc) == (b.fit.val_auroc, b.fit.test_auroc)
