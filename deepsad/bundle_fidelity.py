"""Where a bundle member departs from its separate run, stage by stage, against kernel-choice drift.

A member of a vmap bundle computes what :func:`deepsad.training.train` computes for it, through
other kernels (grouped convolutions, masked BatchNorm): the two agree up to float rounding, and
training amplifies rounding. Whether a difference after 150 epochs is that amplification or a real
difference in what the member computes shows in *where* it starts and how it grows. This module
measures the member against its separate run ("ref") at every stage —

    ae.step1.loss / .grad / .params   the first AE step, from identical parameters and batch
    ae.epoch1, ae.end                 AE parameters after the first and the last epoch
    sad.step1.loss / .grad / .params  the first Deep SAD step, from the same pretrained AE and c
    sad.c                             the centre c of the full runs
    sad.epoch1, sad.end               Deep SAD parameters after the first and the last epoch
    test.scores                       eval-mode test scores of the final models

— and measures, at the same stages, a second separate run that differs from "ref" *only in kernel
choice* ("alt": cuDNN off on a GPU, oneDNN off on a CPU; same layout, same order of work). What
"alt" differs by is what the computation's rounding is worth at that stage; a member is faithful
at a stage when it differs from "ref" by at most :data:`FACTOR` times that, or by the float32
rounding floor of the stage (:data:`FLOORS`) when kernel choice changes nothing there. Deviations
are max |a − b| / max |b| over the stage's tensors (scores: over the test set).

:func:`fidelity_report` returns every stage's figures and the first stage where the member departs
(None: faithful throughout). Pure torch; no test framework; runs on any device.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepsad.bundle import train_bundle
from deepsad.bundle_phase import BundlePhase
from deepsad.data.splits import SemiSupervisedSplit
from deepsad.distributed import DistContext, batches
from deepsad.networks import build_autoencoder, build_encoder, is_image_net
from deepsad.objective import Phase, phase_losses
from deepsad.pool import SamplePool, epoch_plan
from deepsad.seeding import derive_seed, seeded
from deepsad.stacked import StackedNet
from deepsad.training import TrainConfig, init_center, to_layout, train, transfer_encoder

#: A member departs at a stage when it differs from its separate run by more than FACTOR times what
#: kernel choice alone changes there (and more than the stage's floor).
FACTOR = 10.0

#: Float32 rounding floors (relative): a first step's loss, gradient and parameters are sums over
#: ~10^4-10^5 products, rounding to ~sqrt(n)·6e-8 ≈ 1e-5 at most; after whole epochs the kernel-choice
#: run is the yardstick and the floor only guards a yardstick of exactly 0.
FLOORS = {"step": 1e-5, "epoch": 1e-5}

STAGES = ("ae.step1.loss", "ae.step1.grad", "ae.step1.params", "ae.epoch1", "ae.end",
          "sad.step1.loss", "sad.step1.grad", "sad.step1.params", "sad.c", "sad.epoch1", "sad.end", "test.scores")


@contextlib.contextmanager
def other_kernels(device: torch.device) -> Iterator[None]:
    """The same computation through other kernels: cuDNN off on CUDA (torch's native convolutions
    and BatchNorm), oneDNN off on a CPU (torch's own convolutions)."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        with warnings.catch_warnings():  # flags() also restores a TF32 setting that only Intel GPUs have
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=False):
                yield


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the block (warn only where an op has none; on CUDA
    cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before its first use)."""
    before, before_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.benchmark = bench


def relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (float64; inf when a is not finite where b is)."""
    a, b = a.detach().double().cpu().reshape(-1), b.detach().double().cpu().reshape(-1)
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if math.isnan(diff):
        return math.inf
    return diff / scale if scale > 0 else diff


# --------------------------------------------------------------------------- first steps


def _seeded_module(cfg: TrainConfig, phase: Phase) -> nn.Module:
    with seeded(cfg.seed, f"{phase}-init"):
        return build_autoencoder(cfg.net) if phase == "ae" else build_encoder(cfg.net)


def separate_first_step(split: SemiSupervisedSplit, cfg: TrainConfig, phase: Phase,
                        ae_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The first step of ``phase`` exactly as :func:`deepsad.training.train` takes it (same init,
    permutation, first batch, layout, loss, ``torch.optim.Adam``): ``loss`` (the batch's loss sum),
    ``grad`` and ``params`` (after the step), flat in ``named_parameters`` order. The Deep SAD step
    starts from ``ae_state``'s encoder (and its c)."""
    device = torch.device(cfg.device)
    net = _seeded_module(cfg, phase)
    if phase == "sad" and ae_state is not None:
        transfer_encoder(net, ae_state, reference_compat=cfg.reference_compat)
    net.to(device)
    x_all = torch.as_tensor(split.train.x, dtype=torch.float32).to(device)
    if is_image_net(net):
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x_all = to_layout(x_all)
    optim = cfg.ae if phase == "ae" else cfg.sad
    assert optim is not None
    c = init_center(net, x_all, DistContext.current()) if phase == "sad" else None
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, f"{phase}-shuffle"))
    idx = batches(torch.randperm(len(x_all), generator=gen).to(device), optim.batch_size, 1)[0]
    net.train()
    x = x_all[idx]
    out = net(x)
    semi = torch.as_tensor(split.train.semi_targets, dtype=torch.int64).to(device)[idx] if phase == "sad" else None
    losses = phase_losses(phase, out, x=x, c=c, semi_targets=semi, eta=cfg.eta)
    (losses.sum() / idx.numel()).backward()
    params = list(net.parameters())
    grad = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
    torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay).step()
    return {"loss": losses.sum().detach(), "grad": grad.detach(), "params": torch.cat([p.detach().reshape(-1)
                                                                                       for p in params])}


def bundle_first_step(splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig], phase: Phase,
                      member: int, ae_states: Sequence[dict[str, torch.Tensor] | None] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Member ``member``'s first step of ``phase`` in a vmap bundle of ``cfgs`` (what
    :func:`deepsad.bundle.train_bundle` does, one member per AE group): as :func:`separate_first_step`."""
    device = torch.device(cfgs[0].device)
    nets = []
    for k, cfg in enumerate(cfgs):
        net = _seeded_module(cfg, phase)
        if phase == "sad" and ae_states is not None and ae_states[k] is not None:
            transfer_encoder(net, ae_states[k], reference_compat=cfg.reference_compat)  # type: ignore[arg-type]
        nets.append(net)
    view = StackedNet(nets[0])
    flat, buffers = view.stack(nets, device)
    pool, parts = SamplePool.build([(s, s.train) for s in splits], device)
    optims = [c.ae if phase == "ae" else c.sad for c in cfgs]
    eta = torch.tensor([c.eta for c in cfgs], dtype=torch.float32, device=device)
    ph = BundlePhase(phase=phase, net=view, template=nets[0], flat=flat, buffers=buffers,
                     pool=pool, parts=parts, optims=optims, seeds=[c.seed for c in cfgs],  # type: ignore[arg-type]
                     alive=[True] * len(cfgs), bf16=cfgs[0].bf16, strategy="vmap", eta=eta)
    try:
        if phase == "sad":
            ph.c = ph.centers()
        plan = epoch_plan(parts, ph.generators, optims[0].batch_size, [True] * len(cfgs), device)  # type: ignore[union-attr]
        w = plan.widths[0]
        g, total, _ = ph.strategy.gradients(ph.flat, pool.x[plan.rows[0, :, :w]],  # type: ignore[attr-defined]
                                            plan.semi_targets[0, :, :w], plan.valid[0, :, :w], ph.c, plan.full[0])
        first = type(plan)(plan.rows[:1], plan.semi_targets[:1], plan.valid[:1], plan.active[:1], plan.widths[:1],
                           plan.full[:1])
        ph.strategy.run_steps(ph, first)
        return {"loss": total[member].detach(), "grad": g[member].detach(), "params": ph.flat[member].detach()}
    finally:
        ph.close()


# --------------------------------------------------------------------------- whole runs


def _flat_params(state: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[n].detach().float().reshape(-1).cpu() for n in names])


@dataclass
class _Trace:
    """What a whole run leaves at the stages: AE epoch 1 / end, Deep SAD epoch 1 / end, c, test scores."""

    stages: dict[str, torch.Tensor]
    auroc: float


def _separate_trace(split: SemiSupervisedSplit, cfg: TrainConfig) -> tuple[_Trace, dict[str, torch.Tensor]]:
    ae_names = StackedNet(build_autoencoder(cfg.net)).param_names
    sad_names = StackedNet(build_encoder(cfg.net)).param_names
    stages: dict[str, torch.Tensor] = {}
    ae_state: dict[str, torch.Tensor] = {}
    last = {"ae": cfg.ae.epochs if cfg.ae is not None else 0, "sad": cfg.sad.epochs}

    def on_epoch(report: Any, state_fn: Any) -> None:
        if report.epoch in (1, last[report.phase]):
            state = state_fn()
            net = {n[4:]: v for n, v in state.tensors.items() if n.startswith("net.")}
            flat = _flat_params(net, ae_names if report.phase == "ae" else sad_names)
            if report.epoch == 1:
                stages[f"{report.phase}.epoch1"] = flat
            if report.epoch == last[report.phase]:
                stages[f"{report.phase}.end"] = flat
                if report.phase == "ae":
                    ae_state.update(net)

    fit = train(split, cfg, on_epoch=on_epoch)
    stages["sad.c"] = fit.model.c.detach().cpu()
    stages["test.scores"] = torch.as_tensor(fit.model.score(split.test.x))
    return _Trace(stages, fit.test_auroc), ae_state


def _bundle_trace(splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig], member: int) -> _Trace:
    stages: dict[str, torch.Tensor] = {}
    last = {"ae": cfgs[0].ae.epochs if cfgs[0].ae is not None else 0, "sad": cfgs[0].sad.epochs}

    def on_epoch(progress: Any, state_fn: Any) -> None:
        if progress.epoch in (1, last[progress.phase]):
            flat = state_fn().tensors[f"{progress.phase}.flat"][member].float().cpu()
            if progress.epoch == 1:
                stages[f"{progress.phase}.epoch1"] = flat
            if progress.epoch == last[progress.phase]:
                stages[f"{progress.phase}.end"] = flat

    out = train_bundle(splits, cfgs, on_epoch=on_epoch, strategy="vmap")[member]
    if out.fit is None:
        raise RuntimeError(f"bundle member {member} failed: {out.failure}")
    stages["sad.c"] = out.fit.model.c.detach().cpu()
    stages["test.scores"] = torch.as_tensor(out.fit.model.score(splits[member].test.x))
    return _Trace(stages, out.fit.test_auroc)


# --------------------------------------------------------------------------- the report


def verdict(stages: Sequence[dict[str, Any]]) -> str | None:
    """The first stage whose ``bundle`` deviation exceeds its ``allowed`` one (None: none does)."""
    return next((s["stage"] for s in stages if not s["bundle"] <= s["allowed"]), None)


def fidelity_report(splits: Sequence[SemiSupervisedSplit], cfgs: Sequence[TrainConfig], member: int = 0, *,
                    use_deterministic: bool = True) -> dict[str, Any]:
    """Member ``member`` of a vmap bundle of ``cfgs`` against its separate run, at every stage.

    Members must have distinct seeds (one AE each). Returns ``{"stages": [{"stage", "bundle", "alt",
    "allowed", "ok"}, ...], "first_departure": stage or None, "auroc": {"ref", "alt", "bundle"},
    "device", "deterministic"}``; ``bundle``/``alt`` are relative deviations from the separate run.

    Raises:
        ValueError: two members share a seed.
        RuntimeError: the member fails in the bundle.
    """
    if len({c.seed for c in cfgs}) != len(cfgs):
        raise ValueError("fidelity_report: members need distinct seeds (one autoencoder each)")
    device = torch.device(cfgs[0].device)
    split, cfg = splits[member], cfgs[member]
    with deterministic(use_deterministic):
        ref, ae_state = _separate_trace(split, cfg)
        with other_kernels(device):
            alt, _ = _separate_trace(split, cfg)
        bundle = _bundle_trace(splits, cfgs, member)
        steps: dict[str, dict[str, dict[str, torch.Tensor]]] = {"ref": {}, "alt": {}, "bundle": {}}
        for phase in ("ae", "sad"):
            if phase == "ae" and cfg.ae is None:
                continue
            # the Deep SAD step starts from the same pretrained AE on all three sides
            states = [ae_state] * len(cfgs) if phase == "sad" else None
            steps["ref"][phase] = separate_first_step(split, cfg, phase, ae_state)
            with other_kernels(device):
                steps["alt"][phase] = separate_first_step(split, cfg, phase, ae_state)
            steps["bundle"][phase] = bundle_first_step(splits, cfgs, phase, member, states)
    rows = []
    for stage in STAGES:
        phase, _, what = stage.partition(".")
        if stage.startswith(("ae.step1", "sad.step1")):
            if phase not in steps["ref"]:
                continue
            key = what.split(".")[1]
            r, a, b = (steps[side][phase][key] for side in ("ref", "alt", "bundle"))
            floor = FLOORS["step"]
        else:
            if stage not in ref.stages:
                continue
            r, a, b = ref.stages[stage], alt.stages[stage], bundle.stages[stage]
            floor = FLOORS["epoch"]
        dev_alt, dev_bundle = relative_deviation(a, r), relative_deviation(b, r)
        allowed = max(FACTOR * dev_alt, floor)
        rows.append({"stage": stage, "bundle": dev_bundle, "alt": dev_alt, "allowed": allowed,
                     "ok": dev_bundle <= allowed})
    return {"device": str(device), "deterministic": use_deterministic, "stages": rows,
            "first_departure": verdict(rows),
            "auroc": {"ref": ref.auroc, "alt": alt.auroc, "bundle": bundle.auroc},
            "auroc_gap": {"bundle": abs(bundle.auroc - ref.auroc), "alt": abs(alt.auroc - ref.auroc)}}
