"""The search side of a sweep: Optuna TPE (persisted in the sweep directory), seeds, ASHA.

Ray's ``OptunaSearch`` needs three repairs for our sweeps (each seen on Ray 2.60 / Optuna 5.0):

* a trial that the scheduler stopped early (ASHA) or that was interrupted reaches Optuna as COMPLETE
  with its truncated value, and TPE then learns from it — we tell Optuna PRUNED instead;
* a replayed result for a finished Optuna trial raises ``UpdateFinishedTrialError`` and crashes the
  sweep — we ignore the replay;
* Optuna trials left RUNNING by a killed driver stay RUNNING forever — a resume marks them FAIL and
  asks for the same configurations again (:func:`recover_orphans`).

A sweep never restores the searcher from Tune's saved state (a pickle): the study in ``optuna.db``
(SQLite) is the searcher's whole memory, and every run starts a new searcher on it.

Each suggestion runs once per seed (:class:`SeedRepeater`); Optuna gets the mean over seeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from orchestration.plan.space import optuna_space
from orchestration.spec.model import SweepSpec
from orchestration.store.layout import STUDY_FILE
from orchestration.store.storage import Storage

log = logging.getLogger(__name__)

PRUNED = "__pruned__"


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records early-stopped trials as PRUNED and survives restores."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if result is not None and result.get(PRUNED) and ot_trial is not None:
            if trial_id in self._completed_trials:
                return
            value = result.get(self.metric)
            study: Any = self._ot_study
            with contextlib.suppress(Exception):
                if isinstance(value, float) and math.isfinite(value):
                    ot_trial.report(value, step=0)  # Optuna keeps the last intermediate value
                study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        try:
            super().on_trial_complete(trial_id, result, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("ignoring a replayed result of a finished Optuna trial (Tune trial %s)", trial_id)


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last epoch.

    Ray 2.60 marks the last result of a trial that the scheduler stopped ``done=True``, exactly like
    the result of a trial that ran to its end, so a searcher cannot tell them apart from the result:
    the scheduler's own decision is the record (:attr:`stopped_early`, Tune trial ids)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        at = result.get(self._time_attr)
        if decision == TrialScheduler.STOP and isinstance(at, int | float) and at < self._max_t:
            self.stopped_early.add(trial.trial_id)
        return str(decision)


class SeedRepeater(Repeater):
    """Runs each suggestion once per seed; Optuna gets the mean, or PRUNED if the scheduler stopped any
    seed's trial before its last epoch (``stopped_early``: :attr:`RecordingASHA.stopped_early`)."""

    def __init__(self, searcher: OptunaSearch, repeat: int, stopped_early: set[str] | None = None) -> None:
        super().__init__(searcher, repeat=repeat, set_index=True)
        self._pruned: set[str] = set()
        self._stopped_early = stopped_early if stopped_early is not None else set()

    def on_trial_complete(  # type: ignore[override]
        self, trial_id: str, result: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is None:
            return
        if not kwargs.get("error") and (trial_id in self._stopped_early or not (result or {}).get("done")):
            self._pruned.add(group.primary_trial_id)
        metric = self.searcher.metric
        score = (result or {}).get(metric)
        group.report(trial_id, float(score) if isinstance(score, int | float) else math.nan)
        if group.finished_reporting():
            scores = [s for s in group.scores() if isinstance(s, float) and math.isfinite(s)]
            mean = sum(scores) / len(scores) if scores else math.nan
            outcome = {metric: mean, PRUNED: group.primary_trial_id in self._pruned}
            if not scores:
                self.searcher.on_trial_complete(group.primary_trial_id, result=None, error=True)
            else:
                self.searcher.on_trial_complete(group.primary_trial_id, result=outcome, **kwargs)


def study_path(sweep_dir: Storage) -> Path:
    """Where the driver keeps the sqlite study: in the sweep directory when it is local; for object
    storage (s3://) a local working copy, fetched from the sweep directory first and pushed back by
    :func:`push_study` (after every finished trial and at the end)."""
    if sweep_dir.is_local:
        sweep_dir.write_bytes(b"", ".keep")  # the directory must exist for sqlite
        return Path(sweep_dir.path(STUDY_FILE))
    local = _working_copy(sweep_dir)
    local.parent.mkdir(parents=True, exist_ok=True)
    if sweep_dir.exists(STUDY_FILE):
        local.write_bytes(sweep_dir.read_bytes(STUDY_FILE))
    return local


def push_study(sweep_dir: Storage) -> None:
    """Copy the driver's working copy of the study back into an object-storage sweep directory."""
    if sweep_dir.is_local:
        return
    local = _working_copy(sweep_dir)
    if local.is_file():
        sweep_dir.write_bytes(local.read_bytes(), STUDY_FILE)


def _working_copy(sweep_dir: Storage) -> Path:
    """The driver's local copy of an object-storage sweep's study (one per sweep URI)."""
    digest = hashlib.sha256(sweep_dir.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "deepsad-studies" / digest / STUDY_FILE


def sampler_seed(seed: int, n_asked: int) -> int:
    """The TPE sampler's seed for a run that starts on a study already holding ``n_asked`` trials.

    A new run makes a new sampler; with the file's seed alone, its first random draws would repeat the
    first run's, so a resumed study asked again for configurations it already has (seen: a resume
    whose next "new" configuration was the first one, skipped as finished, its budget lost). Derived
    from the study's size, the seed stays reproducible: the same file and the same interruption ask
    the same configurations. A study's first run uses the file's seed as it is."""
    return seed if n_asked == 0 else (seed * 1_000_003 + n_asked) % 2**32


def asked_so_far(spec: SweepSpec, storage: Any) -> int:
    """How many trials the sweep's study holds (0 without one)."""
    try:
        return len(optuna.load_study(study_name=spec.name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        return 0


def study_storage(spec: SweepSpec, sweep_dir: Storage) -> tuple[Any, int]:
    """The sweep's Optuna study storage (sqlite) and its finished configurations.

    Finished = COMPLETE or PRUNED; failed configurations are tried again by a resubmit.
    """
    storage = optuna.storages.RDBStorage(url=f"sqlite:///{study_path(sweep_dir)}")
    done = 0
    with contextlib.suppress(KeyError):
        study = optuna.load_study(study_name=spec.name, storage=storage)
        done = sum(1 for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    return storage, done


def recover_orphans(spec: SweepSpec, sweep_dir: Storage) -> int:
    """Mark the study's RUNNING trials (their driver died: call this only when none runs) FAIL and
    enqueue their configurations again, so that the next run asks for them first: their seeds that
    finished find their rows and report them, the others train. Returns how many were enqueued."""
    if not sweep_dir.exists(STUDY_FILE):
        return 0
    storage, _ = study_storage(spec, sweep_dir)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        return 0
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in orphans:
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"rerun_of": t.number}, skip_if_exists=False)
    push_study(sweep_dir)
    return len(orphans)


def search_algorithm(
    spec: SweepSpec, sweep_dir: Storage, stopped_early: set[str] | None = None
) -> tuple[Any, int]:
    """For tpe: the seeded, persisted Optuna search wrapped per seed, and the number of Tune trials
    still to run. ``stopped_early``: the scheduler's record of trials it stopped (a trial in it is told
    to Optuna as PRUNED)."""
    storage, done = study_storage(spec, sweep_dir)
    remaining = max((spec.search.num_trials or 0) - done, 0)
    objective = spec.search.objective
    searcher = SweepOptunaSearch(
        space=optuna_space(spec), metric=objective.metric, mode=objective.mode, study_name=spec.name,
        storage=storage, sampler=optuna.samplers.TPESampler(seed=sampler_seed(spec.search.seed,
                                                                              asked_so_far(spec, storage))),
    )
    return SeedRepeater(searcher, repeat=len(spec.seeds), stopped_early=stopped_early), remaining * len(spec.seeds)
