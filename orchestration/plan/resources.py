"""``resources: auto``: a sweep's CPUs, GPUs, concurrency and bundle size, sized from what the sweep
runs on, so that one sweep file runs well on a laptop and on a GPU cluster.

:func:`resolve` is pure: it takes the resources Ray reports (``ray.cluster_resources()``: ``CPU``,
``GPU``, ``accelerator_type:H200``), the GPU's memory and the sweep, and returns the concrete numbers
with the reason for each. The driver resolves once, after Ray is up (the local Ray it started, or the
cluster it joined with ``--in-cluster``), prints the line and writes it to ``resources.json`` in the
sweep directory; ``--dry-run`` resolves against this machine (no Ray) and says so.

Rules (explicit numbers in the file are kept; only ``auto`` fields are sized, in this order):

* **bundles** are possible for grid/random sweeps, TPE (a batch of configurations per bundle:
  :mod:`orchestration.engine.batched`) and ablation units of policy ``fixed``, without a scheduler and
  with one worker per trial; otherwise ``bundle_size: auto`` is 1 with the reason (ASHA stops trials
  one by one; a tuned unit runs its own study).
* **gpus_per_trial**: 0 without a GPU (or with ``train.device: cpu``); 1 per bundle when bundling;
  else a share of a GPU, ``1/n`` for ``n`` = the CPUs per GPU (at most :data:`MAX_TRIALS_PER_GPU`, and
  no more than fit in the GPU's memory).
* **bundle_size**: on a GPU as many members as fit in :data:`~orchestration.plan.bundles.GPU_MEMORY_FRACTION`
  of its memory (:func:`deepsad.sizing.member_bytes`, at most 512), and no more than spread the
  bundled trials over every GPU; on CPUs :data:`~orchestration.plan.bundles.CPU_AUTO` members (the loop
  strategy: ~1.5× separate runs on 2 cores). TPE learns between batches, so its bundles hold at most
  ``ceil(num_trials / (TPE_ROUNDS × slots))`` configurations (× the seeds): the study has at least
  :data:`TPE_ROUNDS` rounds of batches.
* **cpus_per_trial**: the CPUs per GPU slot on GPUs; on CPUs a bundle gets min(CPUs, K) (it runs
  its members on that many threads) and a single trial 1.
* **max_concurrent_trials**: as many trials as the CPUs and GPUs hold.

An autoscaling cluster whose GPU workers are not up yet reports no GPU: ``auto`` then sizes for
CPUs. Give such a cluster explicit ``gpus_per_trial`` / ``max_concurrent_trials`` (and
``DEEPSAD_GPU_MEMORY_GB`` for the bundle size), or keep its GPU workers up (min replicas ≥ 1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestration.plan.bundles import (
    CPU_AUTO,
    GPU_MEMORY_DEFAULT_GB,
    GPU_MEMORY_FRACTION,
    MAX_BUNDLE,
    fit_in_gpu,
    packable_units,
)
from orchestration.plan.cells import amount
from orchestration.spec.model import ResourcesSpec, SweepSpec

#: Single trials sharing one GPU at most (each is a process with its own CUDA context).
MAX_TRIALS_PER_GPU = 16
#: ``bundle_size: auto`` for TPE: the study gets at least this many rounds of batches to learn from
TPE_ROUNDS = 4
#: What one process's CUDA context and allocator reserve besides its tensors (for GPU sharing).
CUDA_CONTEXT_BYTES = 500_000_000
#: GPU memory in GB by Ray's ``accelerator_type`` (ray.util.accelerators); unknown types: see
#: :func:`gpu_memory`.
ACCELERATOR_MEMORY_GB: dict[str, float] = {
    "H200": 141, "H100": 80, "H20": 96, "B200": 180, "A100": 40, "A100-40G": 40, "A100-80G": 80,
    "L40S": 48, "L4": 24, "A10G": 24, "T4": 16, "V100": 16, "P100": 16, "P4": 8, "K80": 12,
    "RTX-PRO-6000": 96,
}  # fmt: skip
AUTO_FIELDS: tuple[str, ...] = ("gpus_per_trial", "bundle_size", "cpus_per_trial", "max_concurrent_trials")


@dataclass(frozen=True)
class Resolution:
    """What ``auto`` chose: the concrete resources, and why (one reason per resolved field)."""

    resources: ResourcesSpec
    reasons: dict[str, str]
    where: str  # "this machine: 2 CPUs, no GPU" / "the Ray cluster: 64 CPUs, 4 GPUs (H200, 141 GB)"

    def line(self) -> str:
        """One line for the terminal, e.g. ``resources auto (the Ray cluster: …): 1 GPU per bundle of 113 …``."""
        r = self.resources
        what = "bundle" if r.bundle_size != 1 else "trial"
        size = f" of {r.bundle_size}" if r.bundle_size != 1 else ""
        gpu = amount(r.gpus_per_trial, "GPU") if r.gpus_per_trial else "no GPU"
        parts = [f"{gpu} and {amount(r.cpus_per_trial, 'CPU')} per {what}{size}",
                 f"{r.max_concurrent_trials} at once"]
        return f"resources auto ({self.where}): {', '.join(parts)}"

    def describe(self) -> list[str]:
        """The line, then each resolved field with its reason."""
        return [self.line()] + [f"    {k}: {show_value(getattr(self.resources, k))} — {why}"
                                for k, why in self.reasons.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "resources": self.resources.model_dump(), "reasons": dict(self.reasons)}


def show_value(v: float | int | str) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def why_no_bundles(spec: SweepSpec) -> str | None:
    """Why this sweep's trials cannot be bundled (None: they can)."""
    if spec.resources.workers_per_trial > 1:
        return "data-parallel trials (workers_per_trial > 1) cannot be bundled"
    if spec.search.scheduler is not None:
        return "ASHA stops trials one by one; a bundle trains its members to the end together"
    if spec.ablation is not None and spec.ablation.policy == "tuned":
        return "tuned ablation units each run their own study"
    if spec.ablation is None and spec.search.algorithm == "tpe":
        n, seeds = spec.search.num_trials or 0, len(spec.seeds)
        if math.ceil(n / TPE_ROUNDS) * seeds <= 1:
            return (f"TPE suggests one configuration at a time in a study this small ({amount(n, 'configuration')} "
                    f"× 1 seed; batches need more than {TPE_ROUNDS} configurations or several seeds)")
    return None


def where_text(label: str, cluster: Mapping[str, float], gpu_memory_gb: float | None) -> str:
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    text = f"{label}: {amount(cpus, 'CPU')}, "
    if gpus < 1:
        return text + "no GPU"
    detail = ", ".join(x for x in (accelerator(cluster),
                                   f"{gpu_memory_gb:g} GB" if gpu_memory_gb is not None else None) if x)
    return text + amount(gpus, "GPU") + (f" ({detail})" if detail else "")


def accelerator(cluster: Mapping[str, float]) -> str | None:
    """Ray's accelerator type (``accelerator_type:H200`` → ``H200``); None without one or with several."""
    kinds = [k.split(":", 1)[1] for k in cluster if k.startswith("accelerator_type:")]
    return kinds[0] if len(kinds) == 1 else None


@dataclass(frozen=True)
class _Sizing:
    """What :func:`resolve` sizes from: the cluster, one GPU's memory, and the sweep's constraints."""

    cpus: float
    gpus: int  # whole GPUs
    memory: float  # bytes of one GPU (GPU_MEMORY_DEFAULT_GB when unknown)
    memory_note: str  # that memory for the reasons ("141 GB", or "... assumed (set ...)")
    device: str  # train.device
    no_bundle: str | None  # why_no_bundles(spec)
    member_bytes: int | None
    n_bundled: int | None
    label: str
    tpe: tuple[int, int] | None = None  # TPE: (num_trials, seeds)


def _sizing(spec: SweepSpec, cluster: Mapping[str, float], gpu_memory_gb: float | None,
            member_bytes: int | None, n_bundled: int | None, label: str) -> _Sizing:
    return _Sizing(
        cpus=max(float(cluster.get("CPU", 0)), 0.0),
        gpus=math.floor(float(cluster.get("GPU", 0)) + 1e-9),
        memory=(gpu_memory_gb if gpu_memory_gb is not None else GPU_MEMORY_DEFAULT_GB) * 1e9,
        memory_note=(f"{gpu_memory_gb:g} GB" if gpu_memory_gb is not None
                     else f"{GPU_MEMORY_DEFAULT_GB:g} GB assumed (set DEEPSAD_GPU_MEMORY_GB)"),
        device=spec.train.device if spec.train is not None else "auto",
        no_bundle=why_no_bundles(spec),
        member_bytes=member_bytes,
        n_bundled=n_bundled,
        label=label,
        tpe=((spec.search.num_trials or 0), len(spec.seeds))
        if spec.search.algorithm == "tpe" and spec.ablation is None else None,
    )


def resolve(
    spec: SweepSpec,
    cluster: Mapping[str, float],
    gpu_memory_gb: float | None,
    *,
    member_bytes: int | None = None,
    n_bundled: int | None = None,
    label: str = "the Ray cluster",
) -> Resolution:
    """Resolve ``spec.resources``' ``auto`` fields (see the module docstring). Pure.

    Args:
        cluster: resources as ``ray.cluster_resources()`` reports them (``CPU``, ``GPU``, ...).
        gpu_memory_gb: memory of one GPU; None: unknown (:data:`GPU_MEMORY_DEFAULT_GB` is assumed).
        member_bytes: device bytes of the largest bundle member (:func:`deepsad.sizing.member_bytes`);
            None: unknown (GPU sharing is then bounded by CPUs only).
        n_bundled: how many trials (units) could be bundled; None: unknown (no spreading over GPUs).
        label: where the numbers come from, for the reasons.
    """
    r = spec.resources
    s = _sizing(spec, cluster, gpu_memory_gb, member_bytes, n_bundled, label)
    # Each field is sized from the ones before it (AUTO_FIELDS order); a reason of None: kept as written.
    g, why_g = _gpus_per_trial(r, s)
    slots_gpu = math.floor(s.gpus / g + 1e-9) if g > 0 else None  # trials the GPUs hold at once
    k, why_k = _bundle_size(r, s, g, slots_gpu)
    c, why_c = _cpus_per_trial(r, s, g, k, slots_gpu)
    n, why_n = _max_concurrent_trials(r, s, g, c)
    chosen: dict[str, tuple[float | int, str | None]] = {
        "gpus_per_trial": (g, why_g), "bundle_size": (k, why_k),
        "cpus_per_trial": (c, why_c), "max_concurrent_trials": (n, why_n),
    }  # fmt: skip
    resolved = r.model_copy(update={key: v for key, (v, why) in chosen.items() if why is not None})
    reasons = {key: why for key, (_, why) in chosen.items() if why is not None}
    return Resolution(resolved, reasons, where_text(label, cluster, gpu_memory_gb))


def _gpus_per_trial(r: ResourcesSpec, s: _Sizing) -> tuple[float, str | None]:
    """0 without a GPU (or with ``train.device: cpu``); 1 per bundle; else a share ``1/n`` of a GPU."""
    if r.gpus_per_trial != "auto":
        return float(r.gpus_per_trial), None
    if s.device == "cpu":
        return 0.0, "train.device is cpu"
    if s.gpus < 1:
        if s.device == "cuda":
            return 1.0, f"train.device is cuda, but {s.label} has no GPU"
        return 0.0, f"{s.label} has no GPU"
    if s.no_bundle is None and r.bundle_size != 1:
        return 1.0, "one bundle per GPU"
    n = max(1, min(MAX_TRIALS_PER_GPU, math.floor(s.cpus / s.gpus + 1e-9)))
    per_gpu = amount(s.cpus / s.gpus, "CPU")
    why = f"{n} single trials share a GPU ({per_gpu} per GPU, at most {MAX_TRIALS_PER_GPU})"
    if s.member_bytes is not None:
        fit = max(1, int(s.memory * GPU_MEMORY_FRACTION // (s.member_bytes + CUDA_CONTEXT_BYTES)))
        if fit < n:
            n = fit
            why = f"{fit} single trials fit in {GPU_MEMORY_FRACTION:.0%} of a GPU's memory ({s.memory_note})"
    return math.floor(10_000 / n) / 10_000, why  # Ray's GPU fractions have 4 decimals: n of them fit in 1


def _bundle_size(r: ResourcesSpec, s: _Sizing, g: float, slots_gpu: int | None) -> tuple[int, str | None]:
    """1 where trials cannot be bundled; on a GPU what fits in its memory, spread over the GPU slots;
    on CPUs :data:`CPU_AUTO`; for TPE no more than leaves the study :data:`TPE_ROUNDS` rounds."""
    if r.bundle_size != "auto":
        return int(r.bundle_size), None
    if s.no_bundle is not None:
        return 1, s.no_bundle
    if g <= 0 or s.device == "cpu":
        return _tpe_cap(s, CPU_AUTO, f"{CPU_AUTO} members on CPU worker threads (about 1.5× the "
                        "throughput of separate runs)", 1)
    per = s.member_bytes if s.member_bytes is not None else 0
    k = fit_in_gpu(per, s.memory, g) if per else MAX_BUNDLE
    why = (f"{k} members fit in {GPU_MEMORY_FRACTION:.0%} of {amount(min(g, 1.0), 'GPU')} ({s.memory_note}; "
           f"{per / 1e6:.0f} MB per member, at most {MAX_BUNDLE})" if per else f"at most {MAX_BUNDLE}")
    slots = (slots_gpu if r.max_concurrent_trials == "auto"
             else min(slots_gpu or 1, int(r.max_concurrent_trials)))  # GPU slots this sweep may fill
    if s.n_bundled and slots and math.ceil(s.n_bundled / slots) < k:
        k = max(1, math.ceil(s.n_bundled / slots))
        why += (f"; {s.n_bundled} bundled trials over {amount(slots, 'GPU slot')}: at most {k} each"
                if slots > 1 else f"; the sweep bundles {s.n_bundled} trials")
    return _tpe_cap(s, k, why, slots or 1)


def _tpe_cap(s: _Sizing, k: int, why: str, slots: int) -> tuple[int, str]:
    """TPE learns between batches: at most ``ceil(num_trials / (TPE_ROUNDS × slots))`` configurations
    per bundle, with all their seeds."""
    if s.tpe is None:
        return k, why
    n_trials, n_seeds = s.tpe
    configs = max(1, math.ceil(n_trials / (TPE_ROUNDS * slots)))
    if configs * n_seeds >= k:
        return k, why
    cap = configs * n_seeds
    return cap, (f"{why}; TPE learns between batches: {amount(configs, 'configuration')} × "
                 f"{amount(n_seeds, 'seed')} per bundle leaves {_rounds(n_trials, configs * slots)} "
                 "rounds of batches")


def _rounds(n_trials: int, per_round: int) -> int:
    """How many rounds of ``per_round`` configurations a study of ``n_trials`` takes."""
    return math.ceil(n_trials / max(per_round, 1))


def _cpus_per_trial(r: ResourcesSpec, s: _Sizing, g: float, k: int,
                    slots_gpu: int | None) -> tuple[float, str | None]:
    """The CPUs per GPU slot on GPUs; on CPUs min(CPUs, K) for a bundle and 1 for a single trial."""
    if r.cpus_per_trial != "auto":
        return float(r.cpus_per_trial), None
    if g > 0 and s.gpus >= 1 and slots_gpu:
        return float(max(1, math.floor(s.cpus / slots_gpu + 1e-9))), (
            f"{amount(s.cpus, 'CPU')} over {amount(slots_gpu, 'GPU slot')}")
    if k > 1:
        return float(max(1, min(math.floor(s.cpus + 1e-9), k))), (
            f"a CPU bundle runs its {k} members on min({k}, its CPUs) threads")
    return 1.0, "one CPU per single trial"


def _max_concurrent_trials(r: ResourcesSpec, s: _Sizing, g: float, c: float) -> tuple[int, str | None]:
    """As many trials as the CPUs and GPUs hold."""
    if r.max_concurrent_trials != "auto":
        return int(r.max_concurrent_trials), None
    fits = [(math.floor(s.cpus / c + 1e-9), amount(s.cpus, "CPU"))]
    if g > 0:
        fits.append((math.floor(s.gpus / g + 1e-9), amount(s.gpus, "GPU") if s.gpus else "no GPU"))
    n, by = min(fits)
    return max(1, n), f"{max(1, n)} fit in {s.label}'s {by}"


def gpu_memory(cluster: Mapping[str, float], local: Callable[[], float | None] | None = None) -> float | None:
    """One GPU's memory in GB: ``DEEPSAD_GPU_MEMORY_GB`` if set, else Ray's accelerator type
    (:data:`ACCELERATOR_MEMORY_GB`), else ``local()`` (this process's GPU), else None."""
    env = os.environ.get("DEEPSAD_GPU_MEMORY_GB")
    if env:
        return float(env)
    kind = accelerator(cluster)
    if kind in ACCELERATOR_MEMORY_GB:
        return ACCELERATOR_MEMORY_GB[kind]
    return local() if local is not None else None


def local_gpu_memory() -> float | None:
    """This machine's first GPU's memory in GB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)


def this_machine() -> dict[str, float]:
    """This machine as ``ray.cluster_resources()`` would show it: CPUs and CUDA GPUs (and their type)."""
    import torch

    out = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    if out["GPU"]:
        name = torch.cuda.get_device_name(0).upper()
        kind = next((k for k in sorted(ACCELERATOR_MEMORY_GB, key=len, reverse=True) if k in name), None)
        if kind is not None:
            out[f"accelerator_type:{kind}"] = 1.0
    return out


def sizing_inputs(spec: SweepSpec, cells: Sequence[Any]) -> tuple[int | None, int | None]:
    """``(member_bytes, n_bundled)`` for :func:`resolve` from the planned cells (trials or ablation units)."""
    if not cells:
        return None, None
    items = packable_units(list(cells)) if spec.ablation is not None else list(cells)
    n_tpe = (spec.search.num_trials or 0) * len(spec.seeds) if spec.search.algorithm == "tpe" else None
    trials = [getattr(u, "trial", u) for u in items]
    if not trials:
        return None, 0
    from deepsad.sizing import member_bytes

    seen: dict[str, int] = {}
    for t in trials:
        ae = t.train.ae.batch_size if t.train.ae is not None else None
        key = repr((t.train.net, t.train.sad.batch_size, ae))
        if key not in seen:
            seen[key] = member_bytes(t.train)
    return max(seen.values()), n_tpe if n_tpe is not None and spec.ablation is None else len(trials)


def resolve_here(spec: SweepSpec, cells: Sequence[Any]) -> Resolution:
    """Resolve against this machine (``--dry-run``: no Ray started)."""
    machine = this_machine()
    per, n = sizing_inputs(spec, cells)
    return resolve(spec, machine, gpu_memory(machine, local_gpu_memory), member_bytes=per, n_bundled=n,
                   label="this machine")


def resolve_in_driver(spec: SweepSpec, cells: Sequence[Any], cluster: Mapping[str, float], sweep_dir: Any,
                      progress: Callable[[str], None], *, in_cluster: bool) -> SweepSpec:
    """The driver's resolution, after Ray is up: printed, written to ``resources.json`` in the sweep
    directory, and returned as the spec the run uses (its file text keeps ``auto``)."""
    per, n = sizing_inputs(spec, cells)
    label = "the Ray cluster" if in_cluster else "the local Ray"
    res = resolve(spec, cluster, gpu_memory(cluster, local_gpu_memory), member_bytes=per, n_bundled=n,
                  label=label)
    for line in res.describe():
        progress(line)
    sweep_dir.write_bytes(json.dumps(res.to_dict(), indent=1).encode(), "resources.json")
    return spec.model_copy(update={"resources": res.resources})
