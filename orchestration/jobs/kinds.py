"""Every kind of job, by name, and the planning of a sweep's jobs from its cells.

A new kind of job is a module with a class that follows :class:`orchestration.jobs.base.Job`, and
one line in :data:`KINDS`. The engine needs nothing else: it plans jobs with :func:`plan_jobs`, passes
them to Tune trials as dicts and rebuilds them with :func:`job_from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deepsad.errors import ConfigError
from orchestration.jobs.ablation import BaselineJob, FixedUnitJob, TunedUnitJob, unit_job, unit_member
from orchestration.jobs.base import CacheLock, Job, Member, NoLock, Reporter, RunContext
from orchestration.jobs.bundle import BundleJob
from orchestration.jobs.trial import TrialJob
from orchestration.plan.ablation import AblationUnit
from orchestration.plan.bundles import make_bundles, make_unit_bundles
from orchestration.plan.trial import TrialConfig

KINDS: dict[str, Any] = {k.kind: k for k in (TrialJob, BundleJob, FixedUnitJob, TunedUnitJob, BaselineJob)}


def job_from_dict(d: Mapping[str, Any]) -> Job:
    """Inverse of ``Job.to_dict``.

    Raises:
        ConfigError: an unknown kind, or a malformed entry.
    """
    kind = KINDS.get(str(d.get("kind")))
    if kind is None:
        raise ConfigError(f"job: unknown kind {d.get('kind')!r} (known: {', '.join(KINDS)})")
    try:
        job: Job = kind.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"job {d.get('kind')}: malformed ({type(e).__name__}: {e})") from e
    return job


def plan_jobs(cells: Sequence[TrialConfig | AblationUnit], bundle_size: int | str,
              gpus_per_trial: float) -> list[Job]:
    """The jobs of a sweep's cells (grid/random trials, or ablation units), in the cells' order.

    ``bundle_size`` other than 1: trials — and fixed Deep SAD/SVDD units — of like shape are packed
    into bundles (:mod:`orchestration.plan.bundles`); a bundle of one is a plain job. Bundles are
    planned over every cell, so that a resubmit or resume plans the same bundles for the trials left.
    """
    units = [c for c in cells if isinstance(c, AblationUnit)]
    trials = [c for c in cells if isinstance(c, TrialConfig)]
    if units:
        groups: list[list[Any]] = make_unit_bundles(units, bundle_size, gpus_per_trial) if bundle_size != 1 else []
        bundled = {u.key for g in groups if len(g) > 1 for u in g}
        jobs: list[Job] = [BundleJob(tuple(unit_member(u) for u in g)) for g in groups if len(g) > 1]
        return jobs + [unit_job(u) for u in units if u.key not in bundled]
    if bundle_size == 1:
        return [TrialJob(t) for t in trials]
    return [BundleJob(tuple(Member(t, t.key) for t in g)) if len(g) > 1 else TrialJob(g[0])
            for g in make_bundles(trials, bundle_size, gpus_per_trial)]


def execute(trials: list[TrialConfig], reporter: Reporter, ctx: RunContext, *,
            lock: CacheLock | None = None) -> list[dict[str, Any]]:
    """Run one trial, or a bundle of trials, in this process and return the result rows."""
    job: Job = TrialJob(trials[0]) if len(trials) == 1 else BundleJob(tuple(Member(t, t.key) for t in trials))
    return job.run(reporter, ctx, lock or NoLock())


def execute_unit(unit: AblationUnit, reporter: Reporter, ctx: RunContext, *,
                 lock: CacheLock | None = None) -> list[dict[str, Any]]:
    """Run one ablation unit in this process and return the rows it wrote (tuned: every inner
    training's, the chosen one marked ``selected``). A unit whose selected row is finished reports it
    and trains nothing.

    Raises:
        DataError: every inner training of a tuned unit failed; the errors of a training.
    """
    return unit_job(unit).run(reporter, ctx, lock or NoLock())
