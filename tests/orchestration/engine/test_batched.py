"""TPE in bundles (orchestration.engine.batched): batches of configurations asked of the real, persisted
Optuna study, planned as bundles that keep a configuration's seeds together, each configuration told
once — the mean over its seeds read from the real result store. Without Ray: the searcher is driven as
Tune drives it (suggest, then on_trial_complete); the sweeps on Ray are in test_sweeps_ray.py."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from orchestration.jobs.kinds import job_from_dict
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.sweeps_helpers import small_spec

ETA = {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10.0}}


def _spec(num_trials: int, seeds: list[int], space: dict[str, Any] | None = None) -> SweepSpec:
    d = small_spec("btpe", seeds=seeds, search={"algorithm": "tpe", "num_trials": num_trials, "seed": 0,
                                                "space": space or ETA})  # fmt: skip
    return parse_spec(yaml.safe_dump(d), "btpe.yaml")


def _searcher(spec: SweepSpec, sweep: Storage, bundle_size: int) -> Any:
    # imported here: Ray fixes its auth mode at import (tests/test_no_ray_at_collection.py)
    from orchestration.engine.batched import BatchedSearch
    from orchestration.engine.search import study_storage

    storage, done = study_storage(spec, sweep)
    return BatchedSearch(spec, sweep, storage, remaining=(spec.search.num_trials or 0) - done,
                         bundle_size=bundle_size, gpus_per_trial=0.0)  # fmt: skip


def _members(job: Any) -> list[Any]:
    """The job's (row key, trial) pairs: a bundle's members, or a single trial."""
    return [(m.key, m.trial) for m in job.members] if hasattr(job, "members") else [(job.trial.key, job.trial)]


def _finish(sweep: Storage, job: Any, value_of: Any) -> None:
    """What a bundle's trial leaves in the store: one finished row per member."""
    store = ResultStore(sweep)
    for key, trial in _members(job):
        store.write_trial({"trial_key": key, "status": "finished", "seed": trial.seed, "eta": trial.train.eta,
                           "val_auroc": value_of(trial)})  # fmt: skip


def _study(spec: SweepSpec, sweep: Storage) -> optuna.Study:
    from orchestration.engine.search import study_storage

    return optuna.load_study(study_name=spec.name, storage=study_storage(spec, sweep)[0])


def test_a_batch_fills_bundles_with_whole_configurations_and_each_is_told_its_mean_over_seeds(tmp_path: Path) -> None:
    spec, sweep = _spec(5, [0, 1]), Storage.from_uri(str(tmp_path / "btpe"))
    search = _searcher(spec, sweep, bundle_size=4)  # 2 configurations × 2 seeds per batch
    assert search.per_batch == 2
    first = search.suggest("t1")
    job = job_from_dict(first["job_spec"])
    assert first["job"] == job.id and len(job.keys) == 4
    trials = [t for _, t in _members(job)]
    assert sorted(t.seed for t in trials) == [0, 0, 1, 1]
    assert len({t.train.eta for t in trials}) == 2  # two configurations, each with both seeds
    value = {0: 0.6, 1: 0.8}
    _finish(sweep, job, lambda t: value[t.seed] + t.train.eta / 100)
    search.on_trial_complete("t1", {"done": True})
    complete = [t for t in _study(spec, sweep).trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    for t in complete:  # the mean over the configuration's two seeds
        assert t.value == statistics.fmean(value[s] + t.params["eta"] / 100 for s in (0, 1))
    # the second batch is asked with the first told; the last batch has the one configuration left
    second = job_from_dict(search.suggest("t2")["job_spec"])
    _finish(sweep, second, lambda t: 0.5)
    search.on_trial_complete("t2", {"done": True})
    third = job_from_dict(search.suggest("t3")["job_spec"])
    assert len(third.keys) == 2 and search.suggest("t4") is None  # t3 runs: nothing more to ask
    search.on_trial_complete("t3", None, error=True)  # it failed without rows: FAIL, not a value
    assert search.suggest("t5") == "FINISHED"
    states = [t.state for t in _study(spec, sweep).trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1


def test_a_batch_that_searches_rep_dim_becomes_one_bundle_per_rep_dim(tmp_path: Path) -> None:
    space = {**ETA, "rep_dim": {"distribution": "choice", "values": [8, 16]}}
    spec, sweep = _spec(8, [0], space), Storage.from_uri(str(tmp_path / "btpe"))
    search = _searcher(spec, sweep, bundle_size=8)  # all 8 configurations in one batch
    jobs = []
    while isinstance(got := search.suggest(f"t{len(jobs)}"), dict):
        jobs.append(job_from_dict(got["job_spec"]))
    assert search.asked == 8 and 1 <= len(jobs) <= 2
    for job in jobs:  # members of a bundle share rep_dim
        assert len({t.train.net.rep_dim for _, t in _members(job)}) == 1
    assert sum(len(j.keys) for j in jobs) == 8


def test_a_configuration_asked_twice_trains_once(tmp_path: Path) -> None:
    # one choice of one value: every suggestion is the same configuration, hence the same trial keys
    spec, sweep = _spec(3, [0, 1], {"eta": {"distribution": "choice", "values": [1.0]}}), Storage.from_uri(
        str(tmp_path / "btpe"))
    search = _searcher(spec, sweep, bundle_size=6)  # 3 configurations per batch, all alike
    job = job_from_dict(search.suggest("t1")["job_spec"])
    assert len(job.keys) == 2 and search.suggest("t2") is None  # the other two wait on its trials
    _finish(sweep, job, lambda t: 0.7 + t.seed / 10)
    search.on_trial_complete("t1", {"done": True})
    study = _study(spec, sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert {round(t.value, 9) for t in study.trials} == {0.75}
    assert search.suggest("t3") == "FINISHED"


def test_a_resumed_study_asks_the_orphaned_batch_first_and_its_finished_members_are_not_trained_again(
        tmp_path: Path) -> None:  # fmt: skip
    from orchestration.engine.search import recover_orphans

    spec, sweep = _spec(2, [0, 1, 2]), Storage.from_uri(str(tmp_path / "btpe"))
    search = _searcher(spec, sweep, bundle_size=2)  # 1 configuration per batch, its 3 seeds in 2 bundles
    a = job_from_dict(search.suggest("t1")["job_spec"])
    b = job_from_dict(search.suggest("t2")["job_spec"])
    assert (len(a.keys), len(b.keys)) == (2, 1)
    _finish(sweep, a, lambda t: 0.9)
    search.on_trial_complete("t1", {"done": True})  # the configuration still waits on b
    assert [t.state for t in _study(spec, sweep).trials] == [TrialState.RUNNING]
    # the driver dies here; the resume fails the orphan and enqueues its configuration
    assert recover_orphans(spec, sweep) == 1
    again = _searcher(spec, sweep, bundle_size=2)
    assert again.remaining == 2
    a2 = job_from_dict(again.suggest("u1")["job_spec"])
    assert set(a2.keys) == set(a.keys)  # the same trials: their finished rows are found and reported
    assert ResultStore(sweep).finished_keys() >= set(a.keys)
    b2 = job_from_dict(again.suggest("u2")["job_spec"])
    assert b2.keys == b.keys
    _finish(sweep, b2, lambda t: 0.6)
    again.on_trial_complete("u1", {"done": True})
    again.on_trial_complete("u2", {"done": True})
    trials = _study(spec, sweep).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].value == statistics.fmean([0.9, 0.9, 0.6])
    # the next configuration is a new one: a new run's sampler does not replay the first run's draws
    # (it once did, and the resumed study asked for its first configuration again)
    nxt = job_from_dict(again.suggest("u3")["job_spec"])
    assert not set(nxt.keys) & (set(a.keys) | set(b.keys))
