"""Autoencoder pretraining and Deep SAD fine-tuning: fast, resumable, data-parallel, Ray-free.

Data lives as tensors on the device and batches are index slices of a seeded permutation; losses are
accumulated on the device so an epoch syncs with the host once (for its metrics). Progress and
checkpoints leave through the ``on_epoch`` callback, so orchestration can report to Ray Tune (or a
progress bar) without this module knowing about either.

Order of work, as in the paper and the reference code:
1. pretrain an autoencoder (MSE, Adam with weight decay, MultiStepLR) — :func:`pretrain`;
2. copy its encoder into the Deep SAD network, set c = mean embedding of all training samples
   (eval mode) with small coordinates pushed to ±0.1, and minimise the Deep SAD loss — :func:`finetune`.
:func:`train` runs both and returns a :class:`deepsad.model.DeepSADModel` (built by
:func:`trained_model`) with its metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from deepsad import metrics
from deepsad.checkpoint import (
    from_json_value,
    load_bundle,
    optimizer_state_from_bundle,
    optimizer_state_to_bundle,
    save_bundle,
    scheduler_state_from_json,
    scheduler_state_to_json,
    to_json_value,
)
from deepsad.data.splits import Part, SemiSupervisedSplit
from deepsad.distributed import DistContext, batches, convert_batchnorm
from deepsad.errors import CheckpointError, ConfigError
from deepsad.model import DeepSADModel, versions
from deepsad.networks import NetConfig, build_autoencoder, build_encoder, is_image_net
from deepsad.objective import Phase, adjust_center, phase_losses, squared_distance
from deepsad.seeding import derive_seed, seeded

# --------------------------------------------------------------------------- configuration


#: Upper bounds of the optimiser settings: far beyond any sensible value, low enough to catch a typo.
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
#: η's bounds (the paper uses 1; searches span 1e-3 .. 1e3).
MAX_ETA = 1e6


def _check_range(name: str, value: float, *, low: float, high: float, strict: bool = False) -> None:
    """Raise ConfigError unless ``low < value`` (``strict``) or ``low <= value``, value finite and <= high."""
    if value != value:  # NaN slips past every comparison
        raise ConfigError(f"{name}: must be a finite number (got nan)")
    if not (value > low if strict else value >= low):
        raise ConfigError(f"{name}: must be {'>' if strict else '>='} {low:g} (got {value})")
    if not (math.isfinite(value) and value <= high):
        raise ConfigError(f"{name}: must be finite and at most {high:g} (got {value})")


def check_eta(eta: float) -> None:
    """Raise ConfigError unless ``eta`` is a finite weight in (0, MAX_ETA]."""
    _check_range("eta", eta, low=0, high=MAX_ETA, strict=True)


@dataclass(frozen=True)
class OptimConfig:
    """Adam + MultiStepLR (γ = 0.1) settings of one phase (the reference's defaults for MNIST)."""

    lr: float = 1e-4
    epochs: int = 150
    milestones: tuple[int, ...] = (50,)
    batch_size: int = 128
    weight_decay: float = 0.5e-6

    def __post_init__(self) -> None:
        # finite, sensible ranges: NaN slips past every comparison, and lr 1e30 only "diverges" hours later
        _check_range("lr", self.lr, low=0, high=MAX_LR, strict=True)
        _check_range("epochs", self.epochs, low=0, high=MAX_EPOCHS)
        if self.batch_size < 2:
            raise ConfigError(f"batch_size: must be >= 2 (BatchNorm needs 2 samples) (got {self.batch_size})")
        _check_range("batch_size", self.batch_size, low=2, high=MAX_BATCH_SIZE)
        _check_range("weight_decay", self.weight_decay, low=0, high=MAX_WEIGHT_DECAY)
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"milestones: must be increasing positive epochs (got {list(self.milestones)})")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one Deep SAD training run (together with the split).

    Attributes:
        net: network and rep_dim.
        eta: weight η of the labeled terms (> 0).
        sad: optimiser settings of the Deep SAD phase (weight decay is the fine-tuning λ).
        ae: optimiser settings of autoencoder pretraining, or None for no pretraining. The default is
            the reference code's (its README's command): weight decay 0.5e-3 and a constant learning
            rate — no milestone, which is what ``--ae_lr_milestone``'s default gives there.
        seed: seeds weight init and batch order (the split has its own seed in its protocol).
        device: torch device string.
        bf16: bf16 autocast for the forward passes (fp32 master weights and losses). Not a speed option:
            measured slower than fp32 for these small networks on an H200 (single run 0.68× AE,
            0.79× Deep SAD); kept for precision studies.
        reference_compat: reproduce the reference code's weight transfer, which copies no tensor
            (its AE keys carry an ``encoder.`` prefix), so the Deep SAD net keeps its random init.
    """

    net: NetConfig
    eta: float = 1.0
    sad: OptimConfig = field(default_factory=OptimConfig)
    ae: OptimConfig | None = field(default_factory=lambda: OptimConfig(weight_decay=0.5e-3, milestones=()))
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    reference_compat: bool = False

    def __post_init__(self) -> None:
        check_eta(self.eta)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists), as stored in checkpoints and result rows."""
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return _plain(d)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class EpochReport:
    """Metrics of one finished epoch. ``epoch`` counts from 1 within its phase."""

    phase: Phase
    epoch: int
    epochs: int
    loss: float
    lr: float
    seconds: float
    samples_per_s: float
    val_auroc: float | None = None  # the labels a user has (see deepsad.metrics.VALIDATION_METRICS)
    val_ap: float | None = None
    val_auroc_oracle: float | None = None  # the true labels: for comparison only
    val_ap_oracle: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A resumable snapshot taken after an epoch: tensors + JSON meta (with ``phase`` and ``epoch``),
    stored as a checkpoint bundle of kind :attr:`KIND` (safetensors + JSON, see deepsad.checkpoint)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    KIND = "snapshot"

    @property
    def phase(self) -> Phase:
        return self.meta["phase"]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def save(self, directory: Any) -> None:
        save_bundle(directory, self.tensors, self.meta, kind=self.KIND)

    @classmethod
    def load(cls, directory: Any) -> Self:
        tensors, meta = load_bundle(directory, kind=cls.KIND)
        return cls(tensors, meta)


@dataclass(frozen=True, eq=False)
class TrainState(Snapshot):
    """One training's snapshot: weights, optimiser, scheduler, RNG, c, η, history."""

    KIND = "train-state"


#: Called after every epoch with the report and a function that builds the resumable state
#: (built only when asked for, since most epochs need no checkpoint).
OnEpoch = Callable[[EpochReport, Callable[[], TrainState]], None]


@dataclass(frozen=True, eq=False)
class AEResult:
    """A pretrained autoencoder: its state dict and per-epoch history."""

    state_dict: dict[str, torch.Tensor]
    history: list[EpochReport]
    seconds: float


@dataclass(frozen=True, eq=False)
class FitResult:
    """A trained model with its metrics. Test metrics are reported, never used to choose anything."""

    model: DeepSADModel
    history: list[EpochReport]
    val_auroc: float | None  # labelled anomalies against the rest (deepsad.metrics.VALIDATION_METRICS)
    val_ap: float | None
    test_auroc: float
    test_ap: float
    ae_seconds: float
    sad_seconds: float
    n_transferred: int
    val_auroc_oracle: float | None = None  # the validation part's true labels: for comparison only
    val_ap_oracle: float | None = None


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True, eq=False)
class DeviceData:
    """A split part as tensors on the device. x: (N, ...) float32; targets/labels: (N,) int64."""

    x: torch.Tensor
    semi_targets: torch.Tensor
    labels: np.ndarray
    known: np.ndarray  # the labels a user has (deepsad.metrics.known_labels)

    @classmethod
    def from_part(cls, part: Part, device: torch.device) -> DeviceData:
        return cls(
            x=to_layout(torch.as_tensor(np.ascontiguousarray(part.x), dtype=torch.float32).to(device)),
            semi_targets=torch.as_tensor(part.semi_targets, dtype=torch.int64).to(device),
            labels=np.asarray(part.labels),
            known=metrics.known_labels(part.semi_targets),
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])


#: ``(val_auroc, val_ap, val_auroc_oracle, val_ap_oracle)`` (deepsad.metrics.VALIDATION_METRICS); None
#: where the labels hold one class only.
Validation = tuple[float | None, float | None, float | None, float | None]


def validation(val: DeviceData, score: Callable[[], np.ndarray]) -> Validation:
    """The validation metrics of the scores ``score()`` gives ``val`` (called only if a metric is defined):
    on the labels a user has (labelled anomalies against the rest), then on the true labels."""
    known, oracle = metrics.rankable(val.known), metrics.rankable(val.labels)
    if not (known or oracle):
        return None, None, None, None  # nothing to rank on
    scores = score()

    def pair(labels: np.ndarray, ok: bool) -> tuple[float | None, float | None]:
        return (metrics.auroc(labels, scores), metrics.average_precision(labels, scores)) if ok else (None, None)

    return (*pair(val.known, known), *pair(val.labels, oracle))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for the block when ``enabled`` (the ``bf16`` option), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _optimizer(params: Iterator[nn.Parameter], cfg: OptimConfig) -> tuple[torch.optim.Adam, Any]:
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=0.1)
    return opt, sched


@torch.no_grad()
def embed(net: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Embeddings in eval mode. x: (N, ...) -> (N, rep_dim). Leaves ``net`` in eval mode."""
    net.eval()
    if x.shape[0] == 0:
        return torch.empty(0, 0, device=x.device)
    return torch.cat([net(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def anomaly_scores(net: nn.Module, c: torch.Tensor, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Deep SAD scores ||φ(x) - c||², eval mode. x: (N, ...) -> (N,) float32 on x's device."""
    return squared_distance(embed(net, x, batch_size), c)


@torch.no_grad()
def init_center(net: nn.Module, x: torch.Tensor, ctx: DistContext, batch_size: int = 4096) -> torch.Tensor:
    """c = mean embedding over all training samples (eval mode, summed over ranks), then adjusted.

    x: (N, ...) — every rank passes the full training set and embeds its own contiguous share.
    Returns c: (rep_dim,) float32.
    """
    share = torch.tensor_split(torch.arange(x.shape[0], device=x.device), ctx.world_size)[ctx.rank]
    z = embed(net, x[share], batch_size)
    rep_dim = int(getattr(net, "rep_dim", z.shape[1] if z.numel() else 0))
    total = torch.zeros(rep_dim + 1, dtype=torch.float64, device=x.device)
    if z.numel():
        total[:rep_dim] = z.double().sum(0)
    total[rep_dim] = float(share.numel())
    ctx.all_reduce_(total)
    return adjust_center((total[:rep_dim] / total[rep_dim]).float())


def trained_model(net: nn.Module, c: torch.Tensor, cfg: TrainConfig,
                  split: SemiSupervisedSplit) -> DeepSADModel:
    """The :class:`~deepsad.model.DeepSADModel` of a finished training: ``net``'s tensors and ``c``
    copied to the CPU, η and the network config from ``cfg``, the split's preprocessing, and
    provenance (data set, split fingerprint and classes, training config, library versions)."""
    return DeepSADModel(
        net_config=cfg.net,
        state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        c=c.detach().cpu().clone(),
        eta=cfg.eta,
        preprocessing=split.preprocessing,
        meta={
            "dataset": split.dataset,
            "fingerprint": split.fingerprint,
            "normal_classes": list(split.protocol.normal_classes),
            "known_anomaly_classes": list(split.known_anomaly_classes),
            "config": cfg.to_dict(),
            "versions": versions(),
        },
    )


def transfer_encoder(net: nn.Module, ae_state: dict[str, torch.Tensor], *, reference_compat: bool = False) -> int:
    """Copy the pretrained encoder's tensors (weights and BatchNorm buffers) into ``net``.

    Returns the number of tensors copied. With ``reference_compat`` this reproduces the reference
    code, which keeps AE keys that also occur in the net's state dict — none do, since AE keys start
    with ``encoder.`` — so nothing is copied.

    Raises:
        ConfigError: the autoencoder's encoder does not match ``net`` (missing or mis-shaped tensor).
    """
    net_state = net.state_dict()
    if reference_compat:
        picked = {k: v for k, v in ae_state.items() if k in net_state}
    else:
        picked = {k.removeprefix("encoder."): v for k, v in ae_state.items() if k.startswith("encoder.")}
        missing = sorted(set(net_state) - set(picked))
        bad = sorted(k for k in picked if k in net_state and picked[k].shape != net_state[k].shape)
        if missing or bad or set(picked) - set(net_state):
            raise ConfigError(
                f"pretrained autoencoder does not match the network (missing {missing[:3]}, mis-shaped {bad[:3]})"
            )
    net_state.update(picked)
    net.load_state_dict(net_state)
    return len(picked)


def _check_resume(state: TrainState | None, cfg: TrainConfig, fingerprint: str, phase: Phase) -> None:
    if state is None:
        return
    if state.meta.get("config") != cfg.to_dict() or state.meta.get("fingerprint") != fingerprint:
        raise CheckpointError("cannot resume: the checkpoint was written by another configuration or split")
    if state.phase != phase:
        raise CheckpointError(f"cannot resume the {phase!r} phase from a {state.phase!r} checkpoint")


def _history(state: TrainState | None, phase: Phase) -> list[EpochReport]:
    """The reports of ``phase`` stored in a checkpoint."""
    if state is None:
        return []
    return [EpochReport(**h) for h in from_json_value(state.meta.get("history", [])) if h["phase"] == phase]


def _prepare(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """Move to the device in the memory layout of the data (see :func:`to_layout`); sync BN if distributed."""
    module.to(device)
    if is_image_net(module):
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return convert_batchnorm(module) if ctx.active else module


def to_layout(x: torch.Tensor) -> torch.Tensor:
    """Images go channels-last: the small convolutions of the LeNets run about 1.4-2x faster on CPUs
    in that layout (measured in benchmarks/bench_core.py); other tensors are unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# --------------------------------------------------------------------------- phases


def _run_epochs(
    *,
    phase: Phase,
    module: nn.Module,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    cfg: OptimConfig,
    device: torch.device,
    shuffle_seed: int,
    ctx: DistContext,
    state: TrainState | None,
    snapshot: Callable[[int, torch.optim.Optimizer, Any, torch.Generator, list[EpochReport]], TrainState],
    validate: Callable[[], Validation] | None,
    on_epoch: OnEpoch | None,
) -> list[EpochReport]:
    """The shared epoch loop. ``step_loss(local_idx)`` returns per-sample losses of the local batch."""
    opt, sched = _optimizer(module.parameters(), cfg)
    gen = torch.Generator().manual_seed(shuffle_seed)
    history = _history(state, phase)
    start = 0
    if state is not None and state.phase == phase:
        opt.load_state_dict(optimizer_state_from_bundle(state.tensors, state.meta, prefix="optim."))
        sched.load_state_dict(scheduler_state_from_json(state.meta["scheduler"]))
        gen.set_state(state.tensors["rng.shuffle"])
        start = state.epoch
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        module.train()
        lr = opt.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for idx in batches(perm, cfg.batch_size, ctx.world_size):
            local = ctx.shard(idx)
            opt.zero_grad(set_to_none=True)
            losses = step_loss(local)
            (losses.sum() / idx.numel()).backward()
            ctx.sum_gradients(module.parameters())
            opt.step()
            total += losses.detach().sum()
        sched.step()
        ctx.all_reduce_(total)
        loss = float(total) / n
        val: Validation = validate() if validate is not None else (None, None, None, None)
        seconds = time.perf_counter() - t0
        report = EpochReport(phase, epoch + 1, cfg.epochs, loss, lr, seconds, n / seconds, *val)
        history.append(report)
        if on_epoch is not None:
            hist = list(history)
            on_epoch(report, lambda e=epoch + 1, h=hist: snapshot(e, opt, sched, gen, h))  # type: ignore[misc]
    return history


def _state(
    *, phase: Phase, epoch: int, module: nn.Module, opt: torch.optim.Optimizer, sched: Any,
    gen: torch.Generator, history: list[EpochReport], cfg: TrainConfig, fingerprint: str,
    extra: dict[str, torch.Tensor] | None = None, prior: list[EpochReport] | None = None,
) -> TrainState:
    tensors = {f"net.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    opt_tensors, opt_meta = optimizer_state_to_bundle(opt.state_dict(), prefix="optim.")
    tensors.update(opt_tensors)
    tensors["rng.shuffle"] = gen.get_state()
    tensors.update(extra or {})
    meta = {
        "phase": phase,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "fingerprint": fingerprint,
        "scheduler": scheduler_state_to_json(sched.state_dict()),
        # to_json_value: a diverged epoch's NaN loss must not make the checkpoint unwritable
        "history": to_json_value([h.to_dict() for h in (prior or []) + history]),
        **opt_meta,
    }
    return TrainState(tensors, meta)


def pretrain(
    split: SemiSupervisedSplit,
    cfg: TrainConfig,
    *,
    on_epoch: OnEpoch | None = None,
    resume: TrainState | None = None,
) -> AEResult:
    """Pretrain the autoencoder on all training samples (labels unused).

    Returns the AE's state dict (CPU tensors). Depends only on the split, ``cfg.net``, ``cfg.ae``,
    ``cfg.seed`` — not on η or the fine-tuning settings — so orchestration may cache it.

    Raises:
        ConfigError: ``cfg.ae`` is None.
        CheckpointError: ``resume`` belongs to another configuration.
    """
    if cfg.ae is None:
        raise ConfigError("ae: pretraining is disabled in this configuration")
    _check_resume(resume, cfg, split.fingerprint, "ae")
    device, ctx = torch.device(cfg.device), DistContext.current()
    with seeded(cfg.seed, "ae-init"):
        ae = build_autoencoder(cfg.net)
    if resume is not None:
        ae.load_state_dict({k[4:]: v for k, v in resume.tensors.items() if k.startswith("net.")})
    _prepare(ae, device, ctx)  # in place
    data = DeviceData.from_part(split.train, device)

    def step_loss(local: torch.Tensor) -> torch.Tensor:
        x = data.x[local]
        with autocast(device, cfg.bf16):
            x_hat = ae(x)
        return phase_losses("ae", x_hat, x=x)

    def snapshot(epoch: int, opt: Any, sched: Any, gen: torch.Generator, hist: list[EpochReport]) -> TrainState:
        return _state(phase="ae", epoch=epoch, module=ae, opt=opt, sched=sched, gen=gen, history=hist,
                      cfg=cfg, fingerprint=split.fingerprint)

    t0 = time.perf_counter()
    history = _run_epochs(
        phase="ae", module=ae, step_loss=step_loss, n=len(data), cfg=cfg.ae, device=device,
        shuffle_seed=derive_seed(cfg.seed, "ae-shuffle"), ctx=ctx, state=resume, snapshot=snapshot,
        validate=None, on_epoch=on_epoch,
    )
    state = {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}
    return AEResult(state, history, time.perf_counter() - t0)


def _sad_start(
    cfg: TrainConfig, train_data: DeviceData, device: torch.device, ctx: DistContext, *,
    ae_state: dict[str, torch.Tensor] | None, resume: TrainState | None,
    prior_history: list[EpochReport] | None,
) -> tuple[nn.Module, torch.Tensor, int, list[EpochReport]]:
    """Where fine-tuning starts: the prepared network, c, the number of transferred encoder tensors and
    the AE history — from ``resume``, or else a seeded init, the pretrained encoder and a fresh c."""
    with seeded(cfg.seed, "sad-init"):
        net = build_encoder(cfg.net)
    if resume is not None:
        net.load_state_dict({k[4:]: v for k, v in resume.tensors.items() if k.startswith("net.")})
        c = resume.tensors["c"].to(device)
        n_transferred = int(resume.meta["n_transferred"])
        ae_hist = _history(resume, "ae")
        net = _prepare(net, device, ctx)
    else:
        n_transferred = 0
        if ae_state is not None:
            n_transferred = transfer_encoder(net, ae_state, reference_compat=cfg.reference_compat)
        net = _prepare(net, device, ctx)
        c = init_center(net, train_data.x, ctx)
        ae_hist = list(prior_history or [])
    return net, c, n_transferred, ae_hist


def finetune(
    split: SemiSupervisedSplit,
    cfg: TrainConfig,
    *,
    ae_state: dict[str, torch.Tensor] | None,
    on_epoch: OnEpoch | None = None,
    resume: TrainState | None = None,
    prior_history: list[EpochReport] | None = None,
) -> FitResult:
    """Deep SAD training from a pretrained encoder (or a random init when ``ae_state`` is None).

    Validation AUROC/AP are computed after every epoch (the tuning signal); test metrics once at the end.

    Raises:
        CheckpointError: ``resume`` belongs to another configuration.
        DataError: a metric cannot be computed (e.g. the model diverged to NaN scores).
    """
    _check_resume(resume, cfg, split.fingerprint, "sad")
    device, ctx = torch.device(cfg.device), DistContext.current()
    train = DeviceData.from_part(split.train, device)
    val = DeviceData.from_part(split.val, device)
    net, c, n_transferred, ae_hist = _sad_start(cfg, train, device, ctx, ae_state=ae_state, resume=resume,
                                                prior_history=prior_history)

    def step_loss(local: torch.Tensor) -> torch.Tensor:
        with autocast(device, cfg.bf16):
            z = net(train.x[local])
        return phase_losses("sad", z, c=c, semi_targets=train.semi_targets[local], eta=cfg.eta)

    def validate() -> Validation:
        return validation(val, lambda: anomaly_scores(net, c, val.x).cpu().numpy())

    def snapshot(epoch: int, opt: Any, sched: Any, gen: torch.Generator, hist: list[EpochReport]) -> TrainState:
        st = _state(phase="sad", epoch=epoch, module=net, opt=opt, sched=sched, gen=gen, history=hist,
                    cfg=cfg, fingerprint=split.fingerprint, extra={"c": c.detach().cpu().clone()}, prior=ae_hist)
        st.meta["n_transferred"] = n_transferred
        return st

    t0 = time.perf_counter()
    history = _run_epochs(
        phase="sad", module=net, step_loss=step_loss, n=len(train), cfg=cfg.sad, device=device,
        shuffle_seed=derive_seed(cfg.seed, "sad-shuffle"), ctx=ctx, state=resume, snapshot=snapshot,
        validate=validate, on_epoch=on_epoch,
    )
    sad_seconds = time.perf_counter() - t0
    val_auroc, val_ap, val_auroc_oracle, val_ap_oracle = validate()
    test = DeviceData.from_part(split.test, device)
    test_scores = anomaly_scores(net, c, test.x).cpu().numpy()
    model = trained_model(net, c, cfg, split)
    return FitResult(
        model=model, history=ae_hist + history, val_auroc=val_auroc, val_ap=val_ap,
        val_auroc_oracle=val_auroc_oracle, val_ap_oracle=val_ap_oracle,
        test_auroc=metrics.auroc(test.labels, test_scores),
        test_ap=metrics.average_precision(test.labels, test_scores),
        ae_seconds=sum(h.seconds for h in ae_hist), sad_seconds=sad_seconds, n_transferred=n_transferred,
    )


def train(
    split: SemiSupervisedSplit,
    cfg: TrainConfig,
    *,
    on_epoch: OnEpoch | None = None,
    resume: TrainState | None = None,
) -> FitResult:
    """Pretrain (unless ``cfg.ae`` is None) and fine-tune; resumes from either phase."""
    ae_state: dict[str, torch.Tensor] | None = None
    ae_history: list[EpochReport] = []
    if cfg.ae is not None and (resume is None or resume.phase == "ae"):
        ae = pretrain(split, cfg, on_epoch=on_epoch, resume=resume)
        ae_state, ae_history = ae.state_dict, ae.history
        resume = None
    return finetune(split, cfg, ae_state=ae_state, on_epoch=on_epoch, resume=resume, prior_history=ae_history)
