"""Many Deep SAD trials in one process: K configurations trained at once, each exactly as if alone.

One small LeNet uses a sliver of a GPU; K of them with stacked weights and ``torch.func`` fill it.
:func:`train_bundle` trains K members — each a ``(split, TrainConfig)`` pair — and returns for every
member what :func:`deepsad.training.train` returns for it alone (same init, shuffles, batches, Adam,
MultiStepLR, encoder transfer, centre c, validation and test metrics), up to float rounding.

Members must share everything that fixes the shape of the computation (:func:`bundle_key`: network
incl. rep_dim, device, bf16, and each phase's epochs, milestones and batch size); they may differ in
seed, η, learning rates, weight decays and split (so training sets of different sizes). How:

* data: :class:`~deepsad.pool.SamplePool` holds every distinct sample row once on the device; a
  member's part is a row-number vector, batches are gathered by indexing.
* steps: a member whose epoch has fewer batches sits out the extra steps (no Adam step, no step
  count, no BatchNorm update). Under ``vmap`` each member's batch is padded to a common width with
  a row mask; under ``loop`` it is used as is.
* BatchNorm: under ``vmap`` masked batch statistics in training, running statistics updated outside
  ``vmap`` with torch's rule (:mod:`deepsad.stacked`); under ``loop`` torch's BatchNorm itself, its
  update kept only for accepted steps. Running statistics in eval mode.
* divergence: a member whose loss, gradient or parameters turn non-finite is frozen and reported as
  failed; the others are unaffected — bit for bit on CPUs (tested); a GPU may choose other
  convolution kernels for another K, so there "unaffected" means up to float rounding.
* strategy (:mod:`deepsad.bundle_strategies`): ``vmap`` computes all members' steps in one
  vectorised call per step (GPUs); ``loop`` gives every member its own module, in the layout of
  :func:`deepsad.training.train`, trained on its exact batches, members' epochs in parallel on CPU
  threads (:mod:`deepsad.workers`; CPUs, where ``vmap``'s grouped convolutions are slow).
  ``"auto"`` picks by device. Both keep every guarantee above; a checkpoint of one resumes under
  the other.

Autoencoders are pretrained once per distinct (split, seed, network, AE settings): an η or
fine-tuning sweep over one split and seed pretrains one AE for all its members.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from deepsad import metrics
from deepsad.bundle_phase import BundlePhase, EpochOutcome
from deepsad.bundle_strategies import Strategy, resolve_strategy
from deepsad.checkpoint import from_json_value, to_json_value
from deepsad.data.splits import SemiSupervisedSplit
from deepsad.errors import CheckpointError, ConfigError, DataError
from deepsad.networks import build_autoencoder, build_encoder
from deepsad.objective import Phase
from deepsad.pool import SamplePool
from deepsad.seeding import seeded
from deepsad.stacked import StackedNet
from deepsad.training import (
    AEResult,
    EpochReport,
    FitResult,
    Snapshot,
    TrainConfig,
    Validation,
    to_layout,
    trained_model,
    transfer_encoder,
)

# --------------------------------------------------------------------------- grouping


def _shared_fields(cfg: TrainConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "net.name": cfg.net.name, "net.rep_dim": cfg.net.rep_dim, "net.input_shape": tuple(cfg.net.input_shape),
        "net.h_dims": tuple(cfg.net.h_dims), "device": cfg.device, "bf16": cfg.bf16,
        "sad.epochs": cfg.sad.epochs, "sad.milestones": tuple(cfg.sad.milestones),
        "sad.batch_size": cfg.sad.batch_size, "ae": "pretraining" if cfg.ae is not None else None,
    }
    if cfg.ae is not None:
        fields.update({"ae.epochs": cfg.ae.epochs, "ae.milestones": tuple(cfg.ae.milestones),
                       "ae.batch_size": cfg.ae.batch_size})
    return fields


def bundle_key(cfg: TrainConfig) -> tuple[tuple[str, Any], ...]:
    """What two configurations must share to train in one bundle; hashable, equal keys ⇒ compatible.

    Network (name, rep_dim, input shape, hidden sizes), device, bf16, whether there is AE
    pretraining, and each phase's epochs, milestones and batch size. Seed, η, learning rates, weight
    decays, ``reference_compat`` and the split may differ.
    """
    return tuple(_shared_fields(cfg).items())


def check_bundle(splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig]) -> None:
    """Validate that ``splits[k]``/``cfgs[k]`` can train as one bundle.

    Raises:
        ConfigError: one message listing every problem, each naming the field, e.g.
            ``cfgs[2].sad.batch_size: 64 differs from cfgs[0].sad.batch_size (128); ...``.
    """
    if not cfgs:
        raise ConfigError("bundle: needs at least one member")
    if len(splits) != len(cfgs):
        raise ConfigError(f"bundle: {len(splits)} splits but {len(cfgs)} configs; give one split per config")
    problems = []
    first = _shared_fields(cfgs[0])
    for k, cfg in enumerate(cfgs[1:], start=1):
        for name, value in _shared_fields(cfg).items():
            if first.get(name, None) != value:
                problems.append(f"cfgs[{k}].{name}: {value!r} differs from cfgs[0].{name} ({first.get(name)!r})")
        for name in sorted(set(first) - set(_shared_fields(cfg))):
            problems.append(f"cfgs[{k}].{name}: missing (cfgs[0].{name} is {first[name]!r})")
    for k, (split, cfg) in enumerate(zip(splits, cfgs, strict=True)):
        shape = tuple(split.train.x.shape[1:])
        if shape != tuple(cfg.net.input_shape):
            problems.append(f"splits[{k}]: samples of shape {shape} do not fit cfgs[{k}].net.input_shape "
                            f"{tuple(cfg.net.input_shape)}")
    if problems:
        raise ConfigError("bundle members must share network, device, bf16 and each phase's epochs, "
                          "milestones and batch size: " + "; ".join(problems))


# --------------------------------------------------------------------------- results and progress


@dataclass(frozen=True)
class BundleProgress:
    """One finished bundled epoch. ``reports[k]`` is member k's report, None once it has failed
    (``failures[k]`` says why)."""

    phase: Phase
    epoch: int
    epochs: int
    reports: tuple[EpochReport | None, ...]
    failures: tuple[str | None, ...]


@dataclass(frozen=True, eq=False)
class BundleState(Snapshot):
    """A resumable snapshot of a bundle taken after an epoch."""

    KIND = "bundle-state"


#: Called after every bundled epoch with the progress and a function that builds the resumable state.
OnBundleEpoch = Callable[[BundleProgress, Callable[[], BundleState]], None]


@dataclass(frozen=True, eq=False)
class AEMemberResult:
    """One member's pretraining: the AE (None when it failed), why it failed, its history."""

    ae: AEResult | None
    failure: str | None
    history: list[EpochReport]


@dataclass(frozen=True, eq=False)
class BundleMemberResult:
    """One member's training: a FitResult as :func:`deepsad.training.train` gives (None when the member
    failed), why it failed, and its history up to the last finished epoch. Seconds are the bundle's."""

    fit: FitResult | None
    failure: str | None
    history: list[EpochReport]

    @property
    def ok(self) -> bool:
        return self.fit is not None


# --------------------------------------------------------------------------- the runs


class _Run:
    """Shared state of one bundled run: members, pooled data, per-member histories and failures."""

    def __init__(self, splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig], with_eval: bool,
                 on_epoch: OnBundleEpoch | None, val_every: int, eval_samples: int, strategy: Strategy) -> None:
        check_bundle(splits, cfgs)
        if val_every < 1:
            raise ConfigError(f"val_every: must be >= 1 (got {val_every})")
        self.splits, self.cfgs, self.k = list(splits), list(cfgs), len(cfgs)
        self.device = torch.device(cfgs[0].device)
        self.strategy = resolve_strategy(strategy, self.device)
        parts = [(s, s.train) for s in splits]
        if with_eval:
            parts += [(s, s.val) for s in splits] + [(s, s.test) for s in splits]
        self.pool, pooled = SamplePool.build(parts, self.device)
        if self.strategy == "loop":  # the member modules run channels-last, as training.train does
            self.pool = SamplePool(to_layout(self.pool.x))
        self.train, self.val, self.test = pooled[: self.k], pooled[self.k : 2 * self.k], pooled[2 * self.k :]
        self.failures: list[str | None] = [None] * self.k
        self.histories: list[list[EpochReport]] = [[] for _ in range(self.k)]
        self.on_epoch, self.val_every, self.eval_samples = on_epoch, val_every, eval_samples
        self.n_transferred = [0] * self.k
        # validation needs both classes (else its metrics are None, as in training.finetune): on the labels
        # a user has (labelled anomalies against the rest) and, for comparison only, on the true labels
        self.val_known = [metrics.known_labels(p.semi_targets.numpy()) for p in self.val]
        self.val_rankable = [metrics.rankable(y) for y in self.val_known]
        self.val_rankable_oracle = [metrics.rankable(p.labels) for p in self.val]
        self.val_labels: tuple[torch.Tensor, torch.Tensor] | None = None  # (K, L) padded: known, true
        self.val_valid: torch.Tensor | None = None

    def ae_groups(self) -> list[list[int]]:
        """Members grouped by identical pretraining (split fingerprint, seed, net, AE settings, bf16)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k, (s, c) in enumerate(zip(self.splits, self.cfgs, strict=True)):
            groups.setdefault((s.fingerprint, c.seed, c.net, c.ae, c.bf16), []).append(k)
        return list(groups.values())

    def meta(self, phase: Phase, extra: dict[str, Any]) -> dict[str, Any]:
        return {"phase": phase, "configs": [c.to_dict() for c in self.cfgs],
                "fingerprints": [s.fingerprint for s in self.splits], "failures": list(self.failures),
                "histories": to_json_value([[h.to_dict() for h in hist] for hist in self.histories]), **extra}

    def restore(self, state: BundleState) -> None:
        if state.meta.get("configs") != [c.to_dict() for c in self.cfgs] or \
                state.meta.get("fingerprints") != [s.fingerprint for s in self.splits]:
            raise CheckpointError("cannot resume: the bundle state was written by other configurations or splits")
        self.failures = list(state.meta["failures"])
        self.histories = [[EpochReport(**h) for h in hist] for hist in from_json_value(state.meta["histories"])]

    def emit(self, phase: Phase, epochs: int, outcome: EpochOutcome, members: list[list[int]],
             val: dict[int, Validation], state_fn: Callable[[], BundleState]) -> None:
        """Record member reports (``members[i]``: bundle members that phase member i stands for)."""
        for i, group in enumerate(members):
            loss = outcome.losses[i]
            reason = outcome.diverged.get(i)
            for k in group:
                if reason is not None and self.failures[k] is None:
                    self.failures[k] = reason
                if loss is None or self.failures[k] is not None:
                    continue
                n = len(self.train[k])
                v = val.get(i, (None, None, None, None))
                self.histories[k].append(EpochReport(phase, outcome.epoch, epochs, loss, outcome.lrs[i],
                                                     outcome.seconds, n / outcome.seconds, *v))
        if self.on_epoch is not None:
            reports = tuple(h[-1] if self.failures[k] is None and h and h[-1].phase == phase
                            and h[-1].epoch == outcome.epoch else None for k, h in enumerate(self.histories))
            self.on_epoch(BundleProgress(phase, outcome.epoch, epochs, reports, tuple(self.failures)), state_fn)


def _phase(run: _Run, phase: Phase, members: list[int], nets: Sequence[torch.nn.Module],
           alive: list[bool]) -> BundlePhase:
    """A phase over ``members`` (bundle indices) starting from ``nets``."""
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, run.device)
    cfgs = [run.cfgs[k] for k in members]
    optims = [cfg.sad if phase == "sad" else cfg.ae for cfg in cfgs]
    if any(o is None for o in optims):
        raise ConfigError("ae: pretraining is disabled in this configuration")
    eta = torch.tensor([cfg.eta for cfg in cfgs], dtype=torch.float32, device=run.device)
    return BundlePhase(phase=phase, net=view, template=nets[0], flat=flat, buffers=buffers, pool=run.pool,
                       parts=[run.train[k] for k in members], optims=optims,  # type: ignore[arg-type]
                       seeds=[cfg.seed for cfg in cfgs], alive=alive, bf16=cfgs[0].bf16, strategy=run.strategy,
                       eta=eta)


def _pretrain(run: _Run, groups: list[list[int]], resume: BundleState | None) -> list[AEResult | None]:
    """Pretrain one AE per group (its first member stands for it); results per group."""
    reps = [g[0] for g in groups]
    nets = []
    for k in reps:
        with seeded(run.cfgs[k].seed, "ae-init"):
            nets.append(build_autoencoder(run.cfgs[k].net))
    ph = _phase(run, "ae", reps, nets, [run.failures[k] is None for k in reps])
    try:
        return _pretrain_epochs(run, groups, ph, resume)
    finally:
        ph.close()


def _pretrain_epochs(run: _Run, groups: list[list[int]], ph: BundlePhase, resume: BundleState | None
                     ) -> list[AEResult | None]:
    reps = [g[0] for g in groups]
    if resume is not None:
        if resume.meta.get("ae_members") != reps:
            raise CheckpointError("cannot resume: the bundle state pretrained other autoencoders")
        ph.load_state({n[3:]: v for n, v in resume.tensors.items() if n.startswith("ae.")}, resume.meta["ae"])
    epochs = run.cfgs[0].ae.epochs  # type: ignore[union-attr]
    t0 = time.perf_counter()

    def state_fn() -> BundleState:
        tensors, meta = ph.state()
        return BundleState({f"ae.{n}": v for n, v in tensors.items()},
                           run.meta("ae", {"epoch": ph.epoch, "ae_members": reps, "ae": meta}))

    while ph.epoch < epochs:
        outcome = ph.run_epoch()
        run.emit("ae", epochs, outcome, groups, {}, state_fn)
    seconds = time.perf_counter() - t0
    alive = ph.alive.cpu().tolist()
    out: list[AEResult | None] = []
    for i, k in enumerate(reps):
        if not alive[i]:
            out.append(None)
            continue
        state = ph.net.state_dict(ph.flat, ph.buffers, i)
        out.append(AEResult(state, [h for h in run.histories[k] if h.phase == "ae"], seconds))
    return out


def pretrain_bundle(
    splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig], *, on_epoch: OnBundleEpoch | None = None,
    strategy: Strategy = "auto",
) -> list[AEMemberResult]:
    """Pretrain every member's autoencoder, as :func:`deepsad.training.pretrain` does for one.

    Members with the same split, seed, network and AE settings share one pretraining. Returns one
    result per member, in order. ``strategy``: as in :func:`train_bundle`.

    Raises:
        ConfigError: the members cannot share a bundle (see :func:`check_bundle`), have no ``ae``, or
            ``strategy`` is unknown.
    """
    if cfgs and cfgs[0].ae is None:
        raise ConfigError("ae: pretraining is disabled in this configuration")
    run = _Run(splits, cfgs, False, on_epoch, 1, 1, strategy)
    groups = run.ae_groups()
    results = _pretrain(run, groups, None)
    by_member = {k: res for group, res in zip(groups, results, strict=True) for k in group}
    return [AEMemberResult(by_member[k], run.failures[k], list(run.histories[k])) for k in range(run.k)]


def train_bundle(
    splits: Sequence[SemiSupervisedSplit],
    cfgs: Sequence[TrainConfig],
    *,
    on_epoch: OnBundleEpoch | None = None,
    ae_states: Sequence[dict[str, torch.Tensor] | None] | None = None,
    resume: BundleState | None = None,
    val_every: int = 1,
    eval_samples: int = 1 << 16,
    strategy: Strategy = "auto",
) -> list[BundleMemberResult]:
    """Pretrain (unless ``cfgs[k].ae`` is None or ``ae_states`` is given) and fine-tune K members at once.

    Args:
        splits, cfgs: member k trains ``cfgs[k]`` on ``splits[k]``.
        on_epoch: called after every bundled epoch of either phase (see :class:`BundleProgress`).
        ae_states: pretrained autoencoder state dicts per member (e.g. from a cache) instead of
            pretraining; None entries mean no transfer (random init).
        resume: a :class:`BundleState` from ``on_epoch``; training continues where it was taken.
        val_every: validate every n-th Deep SAD epoch (and always after the last one).
        eval_samples: samples per eval-mode forward over all members (memory bound of evaluation).
        strategy: ``"vmap"`` (all members in one vectorised call; GPUs), ``"loop"`` (one module per
            member; CPUs) or ``"auto"`` (loop on a CPU, vmap elsewhere). See
            :mod:`deepsad.bundle_strategies`; results agree up to float rounding.

    Returns:
        One :class:`BundleMemberResult` per member, in order; a failed member has ``fit=None`` and a
        ``failure`` reason, and never affects the others.

    Raises:
        ConfigError: the members cannot share a bundle (:func:`check_bundle`), ``ae_states`` has the
            wrong length, or ``strategy`` is unknown.
        CheckpointError: ``resume`` belongs to other configurations or splits.
    """
    run = _Run(splits, cfgs, True, on_epoch, val_every, eval_samples, strategy)
    if resume is not None:
        run.restore(resume)
    if ae_states is not None and len(ae_states) != run.k:
        raise ConfigError(f"ae_states: {len(ae_states)} given for {run.k} members")
    if resume is not None and resume.phase == "ae" and (ae_states is not None or cfgs[0].ae is None):
        raise CheckpointError("cannot resume the 'ae' phase of a bundle that does not pretrain")
    states: list[dict[str, torch.Tensor] | None] = [None] * run.k
    if ae_states is not None:
        states = list(ae_states)
    elif cfgs[0].ae is not None and (resume is None or resume.phase == "ae"):
        groups = run.ae_groups()
        for group, res in zip(groups, _pretrain(run, groups, resume), strict=True):
            for k in group:
                states[k] = res.state_dict if res is not None else None
        resume = None
    return _finetune(run, states, resume)


def _finetune(run: _Run, ae_states: list[dict[str, torch.Tensor] | None], resume: BundleState | None) -> list[
        BundleMemberResult]:
    nets = []
    for k, cfg in enumerate(run.cfgs):
        with seeded(cfg.seed, "sad-init"):
            net = build_encoder(cfg.net)
        if resume is None and ae_states[k] is not None and run.failures[k] is None:
            run.n_transferred[k] = transfer_encoder(net, ae_states[k],  # type: ignore[arg-type]
                                                    reference_compat=cfg.reference_compat)
        nets.append(net)
    ph = _phase(run, "sad", list(range(run.k)), nets, [f is None for f in run.failures])
    try:
        return _finetune_epochs(run, ph, resume)
    finally:
        ph.close()


def _finetune_epochs(run: _Run, ph: BundlePhase, resume: BundleState | None) -> list[BundleMemberResult]:
    members = list(range(run.k))
    if resume is not None:
        ph.load_state({n[4:]: v for n, v in resume.tensors.items() if n.startswith("sad.")}, resume.meta["sad"])
        run.n_transferred = [int(v) for v in resume.meta["n_transferred"]]
    else:
        c = ph.centers(run.eval_samples)
        bad = [k for k in members if run.failures[k] is None and not bool(torch.isfinite(c[k]).all())]
        for k in bad:
            run.failures[k] = "centre c is not finite: the pretrained encoder gives non-finite embeddings"
        ph.mark_failed(bad)
        ph.c = c
    epochs = run.cfgs[0].sad.epochs
    val: dict[int, Validation] = {}

    def state_fn() -> BundleState:
        tensors, meta = ph.state()
        return BundleState({f"sad.{n}": v for n, v in tensors.items()},
                           run.meta("sad", {"epoch": ph.epoch, "sad": meta, "n_transferred": run.n_transferred}))

    t0 = time.perf_counter()
    while ph.epoch < epochs:
        outcome = ph.run_epoch()
        t_val = time.perf_counter()
        due = outcome.epoch % run.val_every == 0 or outcome.epoch == epochs
        val = _validate(run, ph) if due else {}
        # an epoch's seconds include its validation, as in training._run_epochs
        outcome = replace(outcome, seconds=outcome.seconds + time.perf_counter() - t_val)
        run.emit("sad", epochs, outcome, [[k] for k in members], val, state_fn)
    sad_seconds = time.perf_counter() - t0
    if epochs == 0 or not val:
        val = _validate(run, ph)
    test = ph.scores(run.test, ph.c, run.eval_samples, [k for k in range(run.k) if run.failures[k] is None])
    results = []
    for k, (split, cfg) in enumerate(zip(run.splits, run.cfgs, strict=True)):
        fit = None
        if run.failures[k] is None:
            try:
                test_auroc = metrics.auroc(run.test[k].labels, test[k])
                test_ap = metrics.average_precision(run.test[k].labels, test[k])
            except DataError as e:
                run.failures[k] = f"test metrics: {e}"
            else:
                net = build_encoder(cfg.net)
                net.load_state_dict(ph.net.state_dict(ph.flat, ph.buffers, k))
                hist = run.histories[k]
                fit = FitResult(
                    model=trained_model(net, ph.c[k], cfg, split), history=list(hist),
                    val_auroc=val.get(k, _NO_VAL)[0], val_ap=val.get(k, _NO_VAL)[1],
                    val_auroc_oracle=val.get(k, _NO_VAL)[2], val_ap_oracle=val.get(k, _NO_VAL)[3],
                    test_auroc=test_auroc, test_ap=test_ap,
                    ae_seconds=sum(h.seconds for h in hist if h.phase == "ae"), sad_seconds=sad_seconds,
                    n_transferred=run.n_transferred[k])
        results.append(BundleMemberResult(fit, run.failures[k], list(run.histories[k])))
    return results


_NO_VAL: Validation = (None, None, None, None)


def _validate(run: _Run, ph: BundlePhase) -> dict[int, Validation]:
    """Validation metrics (:data:`deepsad.training.Validation`) of every live member, all members at once
    on the device (:func:`deepsad.metrics.batched_auroc_ap`, equal to the per-member scikit-learn
    metrics); a member whose scores are not finite fails."""
    alive = ph.alive.cpu().tolist()
    live = [k for k in range(run.k) if run.failures[k] is None and alive[k]]
    known = [k for k in live if run.val_rankable[k]]
    oracle = [k for k in live if run.val_rankable_oracle[k]]
    out: dict[int, Validation] = {k: _NO_VAL for k in live}
    scored = sorted(set(known) | set(oracle))
    if not scored:
        return out  # no anomalies (or no normals) to rank, as in training.finetune
    if run.val_labels is None:
        width = max(len(p) for p in run.val)
        padded = np.zeros((2, run.k, width), dtype=np.int64)
        for k, p in enumerate(run.val):
            padded[0, k, : len(p)] = run.val_known[k]
            padded[1, k, : len(p)] = p.labels
        both = torch.from_numpy(padded).to(run.device)
        run.val_labels = (both[0], both[1])
        run.val_valid = torch.arange(width, device=run.device).view(1, -1) < torch.tensor(
            [len(p) for p in run.val], device=run.device).view(-1, 1)
    assert run.val_valid is not None
    scores = ph.score_rows(run.val, ph.c, run.eval_samples, scored)
    auroc, ap = (v.cpu().tolist() for v in metrics.batched_auroc_ap(run.val_labels[0], scores, run.val_valid))
    auroc_o, ap_o = (v.cpu().tolist() for v in metrics.batched_auroc_ap(run.val_labels[1], scores, run.val_valid))
    bad = []
    for k in scored:
        finite = bool(torch.isfinite(scores[k][run.val_valid[k]]).all())
        if not finite:
            run.failures[k] = f"validation in sad epoch {ph.epoch}: scores contain NaN or inf: the model diverged"
            bad.append(k)
            del out[k]
        else:
            out[k] = ((auroc[k], ap[k]) if k in known else (None, None)) + (
                (auroc_o[k], ap_o[k]) if k in oracle else (None, None))
    ph.mark_failed(bad)
    return out

