"""TPE in bundles: Optuna asked for a batch of configurations at once, each batch trained as bundles.

One-at-a-time TPE trains one configuration per Tune trial; :class:`BatchedSearch` instead asks the
sweep's persisted study for ``configs_per_batch`` configurations (``bundle_size`` members over the
seeds: a configuration's seeds go into one bundle), builds every (configuration, seed) trial, packs
them into bundles as grid sweeps do (:func:`orchestration.jobs.kinds.plan_jobs`: members must share
the network, ``rep_dim``, batch sizes and epochs, so a batch that searches ``rep_dim`` can become
several bundles) and hands Tune one bundle per trial. When a configuration's last member has ended,
its value — the mean over its seeds of the objective, read from the result store, the record of
truth — is told to Optuna (FAIL without a finite one). The sampler is TPE with ``constant_liar``:
while a batch is pending, its configurations count as bad results, so the next ones are asked
elsewhere (diverse batches, also with several bundles in flight).

Nothing is kept but the study (``optuna.db``) and the result store: a driver killed mid-batch leaves
the batch's Optuna trials RUNNING; the resume marks them FAIL and enqueues their parameters
(:func:`orchestration.engine.search.recover_orphans`), the next batch asks them first, and their
members that finished find their rows (same parameters and seed: same trial key) and are not trained
again — no trial is lost or run twice, and each configuration is told once.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from orchestration.engine.search import asked_so_far, sampler_seed
from orchestration.jobs.base import Job
from orchestration.jobs.kinds import plan_jobs
from orchestration.plan.bundles import configs_per_batch
from orchestration.plan.cells import build_trial, sample_shape_of
from orchestration.plan.space import optuna_space
from orchestration.spec.model import Choice, SweepSpec
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage

log = logging.getLogger(__name__)


def most_bundles(spec: SweepSpec) -> int:
    """The most bundles a batched study of ``spec`` (resources resolved) runs: per batch, one per
    ``rep_dim`` value it may hold (members must share it), times the bundles a configuration's seeds
    fill."""
    size, seeds = int(spec.resources.bundle_size), len(spec.seeds)
    per = configs_per_batch(size, seeds)
    batches = math.ceil((spec.search.num_trials or 0) / per)
    rep = spec.search.space.rep_dim
    if rep is None:
        kinds = 1
    elif isinstance(rep, Choice):
        kinds = len(rep.values)
    else:  # int_uniform (the checks refuse continuous rep_dim)
        kinds = int(rep.high - rep.low + 1)
    return batches * min(per, kinds) * math.ceil(seeds / size)


@dataclass
class _Asked:
    """One Optuna trial of a batch: its parameters and the row keys of its seeds' trials."""

    trial: Any  # optuna.trial.Trial
    keys: list[str]
    ended: set[str] = field(default_factory=set)


class BatchedSearch(Searcher):
    """A Tune searcher whose every suggestion is a bundle of a batch of TPE configurations (see the
    module docstring). The Tune trial's config is ``{"job": id, "job_spec": Job.to_dict()}``."""

    def __init__(self, spec: SweepSpec, sweep_dir: Storage, storage: Any, *, remaining: int, bundle_size: int,
                 gpus_per_trial: float) -> None:
        import optuna

        objective = spec.search.objective
        super().__init__(metric=objective.metric, mode=objective.mode)
        self.spec, self.sweep_dir, self.remaining = spec, sweep_dir, remaining
        self.bundle_size, self.gpus_per_trial = bundle_size, gpus_per_trial
        self.per_batch = configs_per_batch(bundle_size, len(spec.seeds))
        self.space = optuna_space(spec)
        seed = sampler_seed(spec.search.seed, asked_so_far(spec, storage))
        self.study = optuna.create_study(
            study_name=spec.name, storage=storage, direction="maximize" if objective.mode == "max" else "minimize",
            # constant_liar: pending configurations count as bad results, so a batch spreads out
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True), load_if_exists=True,
        )
        self._shape = sample_shape_of(spec)
        self._queue: collections.deque[Job] = collections.deque()  # planned, not yet handed to Tune
        self._running: dict[str, Job] = {}  # Tune trial id -> its job
        self._waiting: dict[str, list[_Asked]] = {}  # row key in flight -> the configurations that wait on it
        self.asked = 0

    # ------------------------------------------------------------------ Tune's side
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return True  # the sweep's objective is ours; Tune's param_space is empty

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        while not self._queue and self.asked < self.remaining:
            self._ask_batch()
        if not self._queue:
            return Searcher.FINISHED if not self._running else None
        job = self._queue.popleft()
        self._running[trial_id] = job
        return {"job": job.id, "job_spec": job.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        job = self._running.pop(trial_id, None)
        if job is None:
            return
        done: dict[int, _Asked] = {}
        for key in job.keys:
            for a in self._waiting.pop(key, []):
                a.ended.add(key)
                if a.ended == set(a.keys):
                    done[id(a)] = a
        self._tell(list(done.values()))

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study and the result store are the searcher's memory (Tune's pickled
        searcher state is never restored)."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep restores its search from optuna.db, never from Tune's state")

    # ------------------------------------------------------------------ the batch
    def _ask_batch(self) -> None:
        """Ask the next batch and plan its bundles. A configuration asked twice (a categorical space, a
        re-asked orphan) waits on the trials already in flight instead of training them twice."""
        n = min(self.per_batch, self.remaining - self.asked)
        trials = []
        for _ in range(n):
            ot = self.study.ask(fixed_distributions=self.space)
            cells = [build_trial(self.spec, dict(ot.params), seed, sample_shape=self._shape)
                     for seed in self.spec.seeds]  # fmt: skip
            a = _Asked(ot, [c.key for c in cells])
            for c in cells:
                if c.key not in self._waiting:
                    trials.append(c)
                self._waiting.setdefault(c.key, []).append(a)
        self.asked += n
        jobs = plan_jobs(trials, self.bundle_size, self.gpus_per_trial)
        self._queue.extend(jobs)
        log.info("asked %d configurations: %d bundle(s)", n, len(jobs))

    def _tell(self, done: list[_Asked]) -> None:
        """Tell Optuna each finished configuration's mean over its seeds (FAIL without a finite value)."""
        if not done:
            return
        from optuna.trial import TrialState

        keys = [k for a in done for k in a.keys]
        rows = ResultStore(self.sweep_dir).read_trials(["trial_key", "status", self.metric], keys=keys).table
        values = {r["trial_key"]: r[self.metric] for r in rows.to_pylist() if r["status"] == "finished"}
        for a in done:
            scores = [v for k in a.keys if isinstance(v := values.get(k), float) and math.isfinite(v)]
            if scores:
                self.study.tell(a.trial, sum(scores) / len(scores))
            else:
                self.study.tell(a.trial, state=TrialState.FAIL)
