"""Packing a sweep's trials into bundles: many trials per process (per GPU), each trained as if alone.

A bundle is a list of trials that :func:`deepsad.bundle.train_bundle` can train at once: the same
network, rep_dim, batch sizes and epoch schedules, the same data set (so its samples are stored once);
seeds, η, learning rates, weight decays and splits may differ. One Ray Tune trial runs one bundle;
results stay one row per trial (with the ``bundle`` it ran in and the bundle's size).

Bundles are planned up front (grid/random search), in the order of the cells, so that a resubmitted
or resumed sweep plans the same bundles for the same pending trials. Size: ``resources.bundle_size``
(an integer caps it); ``auto`` takes :data:`CPU_AUTO` members on CPU trials and, on GPU trials, as
many as fit in :data:`GPU_MEMORY_FRACTION` of the GPU share by :func:`deepsad.bundle.member_bytes`
(the GPU's memory: ``DEEPSAD_GPU_MEMORY_GB`` if set, else the planning machine's first GPU, else
:data:`GPU_MEMORY_DEFAULT_GB`), at most :data:`MAX_BUNDLE`. A cluster's driver plans on the head,
which often has no GPU: ``deepsad sweep submit --address`` forwards ``DEEPSAD_GPU_MEMORY_GB``.
A sweep's driver resolves ``auto`` to one number first, from the resources of the Ray cluster it
runs on (:mod:`orchestration.plan.resources`); ``size == "auto"`` here serves callers without a driver.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orchestration.plan.trial import TrialConfig

CPU_AUTO = 8
MAX_BUNDLE = 512
GPU_MEMORY_FRACTION = 0.7
GPU_MEMORY_DEFAULT_GB = 16.0


def bundle_id(trials: list[TrialConfig]) -> str:
    """A stable name for a bundle: its members' keys, hashed."""
    return keys_id([t.key for t in trials])


def keys_id(keys: list[str]) -> str:
    """The bundle id of the members with row keys ``keys`` (order does not matter)."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return f"b{len(keys)}-{digest[:12]}"


def configs_per_batch(bundle_size: int, n_seeds: int) -> int:
    """TPE in bundles: configurations per batch, as many as fill a bundle with all their seeds (at
    least one; :mod:`orchestration.engine.batched`)."""
    return max(1, bundle_size // max(n_seeds, 1))


def _group_key(trial: TrialConfig) -> tuple[Any, ...]:
    from deepsad.bundle import bundle_key

    # the device is resolved where the bundle runs; every member resolves it the same way
    return (trial.dataset, trial.data_dir, trial.device_request, bundle_key(replace(trial.train, device="cpu")))


def auto_size(trial: TrialConfig, gpus_per_trial: float | str) -> int:
    """Members per bundle for ``bundle_size: auto`` (see the module docstring). ``gpus_per_trial: auto``
    (not resolved yet: a plan the driver makes again after resolving it) sizes as on a CPU."""
    if gpus_per_trial == "auto" or float(gpus_per_trial) <= 0 or trial.device_request == "cpu":
        return CPU_AUTO
    from deepsad.sizing import member_bytes

    gb = os.environ.get("DEEPSAD_GPU_MEMORY_GB")
    if gb:
        total = float(gb) * 1e9
    else:
        import torch

        total = (torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available()
                 else GPU_MEMORY_DEFAULT_GB * 1e9)
    return fit_in_gpu(member_bytes(trial.train), total, float(gpus_per_trial))


def fit_in_gpu(per_member: int, gpu_bytes: float, gpus_per_trial: float) -> int:
    """Members of ``per_member`` bytes that fit in :data:`GPU_MEMORY_FRACTION` of a ``gpus_per_trial``
    share of a GPU of ``gpu_bytes`` (1 to :data:`MAX_BUNDLE`)."""
    budget = gpu_bytes * min(gpus_per_trial, 1.0) * GPU_MEMORY_FRACTION
    return max(1, min(MAX_BUNDLE, int(budget // max(per_member, 1))))


def packable_units(units: list[Any]) -> list[Any]:
    """The ablation units that can share a bundle: Deep SAD / Deep SVDD of policy ``fixed``."""
    return [u for u in units if not u.is_baseline and u.policy == "fixed"]


def _pack(items: list[Any], trial_of: Callable[[Any], TrialConfig], size: int | str,
          gpus_per_trial: float) -> list[list[Any]]:
    """Group ``items`` by the compatibility of their trials (in order) and cut each group to size."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for item in items:
        groups.setdefault(_group_key(trial_of(item)), []).append(item)
    out: list[list[Any]] = []
    for members in groups.values():
        k = auto_size(trial_of(members[0]), gpus_per_trial) if size == "auto" else int(size)
        out.extend(members[i : i + k] for i in range(0, len(members), max(k, 1)))
    return out


def make_bundles(trials: list[TrialConfig], size: int | str, gpus_per_trial: float = 0.0) -> list[list[TrialConfig]]:
    """Group compatible trials (in their order) and cut each group into bundles of at most ``size``.

    ``size`` 1 gives one bundle per trial (bundling off).
    """
    return _pack(trials, lambda t: t, size, gpus_per_trial)


def make_unit_bundles(units: list[Any], size: int | str, gpus_per_trial: float = 0.0) -> list[list[Any]]:
    """Ablation units in bundles: Deep SAD / Deep SVDD units of policy ``fixed`` are grouped like
    trials (:func:`make_bundles`); baselines and tuned units (a study each) stay alone."""
    packable = packable_units(units)
    alone = [[u] for u in units if u.is_baseline or u.policy != "fixed"]
    return _pack(packable, lambda u: u.trial, size, gpus_per_trial) + alone
