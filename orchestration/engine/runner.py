"""Submit and resume sweeps on Ray Tune (+ Optuna) — the driver side (what runs inside a trial is
:mod:`orchestration.engine.tune_trial`), on a local Ray that listens on 127.0.0.1 only or,
inside a Ray job (``--in-cluster``), on the cluster it runs in (:mod:`orchestration.engine.ray_session`).

The sweep directory (``<storage>/<name>/``) holds everything: the submitted spec, the Parquet result
store (the record of truth), the AE cache, the Optuna study, Tune's experiment dirs and each trial's
final model. A sweep is resumable from that directory alone:

* **submit** starts a new Tune run over the trials that have no finished row yet (grid/random: the
  enumerated cells minus the finished ones; tpe: the study continues until it has ``num_trials``
  configurations);
* **resume** continues after the driver died or was interrupted, from the result store and the
  Optuna study alone, in a new Tune run: the trials without a final row run (finished ones never do;
  a trial that finds its finished row in the store reports it instead of training again). Tune's own
  saved state — pickles — is never loaded (see :func:`_resume_plan`).

The work is planned as jobs (:mod:`orchestration.jobs`): each Tune trial's config names its job, and
neither the Tune grid, the store callback nor resume asks which kind a job is. The sweep is validated
before any of this by :mod:`orchestration.engine.prepare`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from deepsad.errors import StorageError
from orchestration.engine.committer import ActorSink, finish, start_committer
from orchestration.engine.prepare import Prepared, machine
from orchestration.engine.progress import trial_error
from orchestration.engine.ray_session import cluster_ray, local_ray, reap_stale_ray
from orchestration.engine.tune_trial import SweepPayload, tune_trial
from orchestration.jobs.base import Job
from orchestration.jobs.cache_lock import LockTable, lease_seconds
from orchestration.jobs.kinds import plan_jobs
from orchestration.plan.preflight import check_resources
from orchestration.plan.summary import make_plan
from orchestration.spec.model import SweepSpec
from orchestration.store.layout import PLAN_FILE, RACING_FILE, SPEC_FILE, STUDY_FILE, SUBMISSION_FILE
from orchestration.store.results import ResultStore, RowWriter
from orchestration.store.storage import Storage

# --------------------------------------------------------------------------- the driver side


class StoreCallback:
    """Writes the rows a trial cannot write itself: failed trials (after their last retry) and
    trials stopped early by the scheduler — each job records its own end (``Job.record_end``). Made
    a ``tune.Callback`` by :func:`_store_callback`."""

    def __init__(self, payload: SweepPayload) -> None:
        self.payload = payload

    def _write(self, trial: Any, status: str, error: str | None) -> None:
        try:
            job = self.payload.job_for(trial.config)
        except Exception:  # a broken config is reported by the trial's own error; a job of another run
            return
        rows = RowWriter(Storage.from_uri(self.payload.storage_uri), self.payload.name, trial.trial_id,
                         ActorSink(self.payload.rows_name))
        job.record_end(rows, status, error, trial.last_result or {})

    def on_trial_error(self, trial: Any) -> None:
        self._write(trial, "failed", trial_error(trial))

    def on_trial_complete(self, trial: Any) -> None:
        self._write(trial, "stopped", None)


def _store_callback(payload: SweepPayload) -> Any:
    from ray import tune

    class _Callback(tune.Callback):
        def __init__(self) -> None:
            self.inner = StoreCallback(payload)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.inner.on_trial_error(trial)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.inner.on_trial_complete(trial)
            self._push()

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            self._push()

        def _push(self) -> None:
            from orchestration.engine.search import push_study

            with contextlib.suppress(Exception):  # best effort: the study is pushed again at the end
                push_study(Storage.from_uri(payload.storage_uri))

    return _Callback()


# --------------------------------------------------------------------------- submit / resume


def _tuner(prep: Prepared, payload: SweepPayload, run_name: str, callbacks: list[Any], *,
           planned: bool = False) -> Any:
    from ray import tune

    from orchestration.engine.search import RecordingASHA, search_algorithm

    spec, res = prep.spec, prep.spec.resources
    metric, mode = spec.search.objective.metric, spec.search.objective.mode
    trainable: Any = tune.with_parameters(tune_trial, payload=payload)
    if res.workers_per_trial > 1:
        trainable = tune.with_resources(trainable, {"CPU": 0, "trial_slot": 1})
    else:
        trainable = tune.with_resources(trainable, {"CPU": res.cpus_per_trial, "GPU": res.gpus_per_trial})
    scheduler = None
    if spec.search.scheduler is not None:
        scheduler = RecordingASHA(
            time_attr="epoch", metric=metric, mode=mode, max_t=spec.train.epochs,
            grace_period=spec.search.scheduler.grace_period, reduction_factor=spec.search.scheduler.reduction_factor,
            stop_last_trials=False,  # a trial at its last epoch must finish and write its row
        )
    search_alg: Any = None
    param_space: dict[str, Any]
    if planned:  # a racing round: its planned jobs, whatever the search
        num_samples, param_space = 1, {"job": tune.grid_search(list(payload.jobs))}
    elif batched_tpe(spec):
        from orchestration.engine.batched import BatchedSearch
        from orchestration.engine.search import study_storage

        storage, done = study_storage(spec, prep.sweep_dir)
        remaining = max((spec.search.num_trials or 0) - done, 0)
        search_alg = BatchedSearch(spec, prep.sweep_dir, storage, remaining=remaining,
                                   bundle_size=int(res.bundle_size), gpus_per_trial=float(res.gpus_per_trial))
        num_samples, param_space = max(remaining * len(spec.seeds), 1), {}  # at most one Tune trial per training
    elif spec.search.algorithm == "tpe" and spec.ablation is None:
        search_alg, num_samples = search_algorithm(
            spec, prep.sweep_dir, stopped_early=scheduler.stopped_early if scheduler is not None else None
        )
        param_space = {}
    else:  # planned jobs (trials, bundles, ablation units) under one grid parameter
        num_samples, param_space = 1, {"job": tune.grid_search(list(payload.jobs))}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=res.max_concurrent_trials,
                                    # one process serves many single-worker trials: no torch import
                                    # and data load per trial (~4 s each on 2 cores)
                                    reuse_actors=res.workers_per_trial == 1),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=prep.sweep_dir.path("tune"),
            storage_filesystem=prep.sweep_dir.filesystem,
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def batched_tpe(spec: SweepSpec) -> bool:
    """A TPE sweep that searches in bundles (:mod:`orchestration.engine.batched`): ``bundle_size`` (as
    resolved) above 1; ``bundle_size: 1`` keeps one configuration per Tune trial."""
    return (spec.search.algorithm == "tpe" and spec.ablation is None and spec.resources.bundle_size != 1
            and spec.resources.bundle_size != "auto")


def pending_jobs(prep: Prepared) -> list[Job]:
    """The jobs with at least one cell still to run, planned over every cell (so that a resubmitted or
    resumed sweep plans the same bundles for the cells left)."""
    res = prep.spec.resources
    todo = {c.key for c in prep.pending}
    return [j for j in plan_jobs(prep.cells, res.bundle_size, res.gpus_per_trial) if todo.intersection(j.keys)]


def _payload(prep: Prepared, *, planned: bool = False) -> SweepPayload:
    """What every trial receives. ``planned``: jobs planned from ``prep``'s cells whatever the search
    (a racing round)."""
    spec = prep.spec
    plans = planned or spec.search.algorithm != "tpe" or spec.ablation is not None
    return SweepPayload(
        name=spec.name, storage_uri=prep.sweep_dir.uri, spec_text=prep.spec_text,
        source=str(spec.source), base_dir=spec.base_dir,
        jobs={j.id: j.to_dict() for j in pending_jobs(prep)} if plans else {},
        lock_name=f"ae-cache-lock:{prep.sweep_dir.uri}",
        rows_name=f"results:{prep.sweep_dir.uri}",
    )


def _runs(sweep_dir: Storage) -> list[str]:
    return sorted(n for n in sweep_dir.list("tune") if n.startswith("run-"))


def run_sweep(
    prep: Prepared, *, resume: bool, progress: Callable[[str], None], in_cluster: bool = False
) -> dict[str, Any]:
    """Run (or resume) the sweep on a local Ray (or, ``in_cluster``, on the Ray cluster this driver
    runs in) and return the store's summary.

    Raises:
        ConfigError: the machine cannot run the requested concurrency.
        KeyboardInterrupt: after a graceful stop on Ctrl-C (the sweep stays resumable).
    """
    cpus, gpus = machine()
    lease_s = lease_seconds()  # the AE-cache lock's lease: a bad DEEPSAD_AE_LOCK_LEASE_S stops us before Ray
    if not in_cluster:
        check_resources(prep.spec, cpus, gpus)  # again: a resumed sweep may land on a smaller machine
    _record_submission(prep)
    full, prep = prep, racing_start(prep)  # racing: the main phase runs the first seeds only
    if resume:
        left = _resume_plan(prep, progress)
        if left is None:
            if not _race_left(full):
                return ResultStore(prep.sweep_dir).summary()
            left = []
        prep = replace(prep, pending=left)  # resume = a new run of what is left
    elif not _race_left(full) and _nothing_to_do(prep, progress):
        return ResultStore(prep.sweep_dir).summary()
    spec = prep.spec
    plan = make_plan(spec, prep.cells if spec.search.algorithm != "tpe" else None,
                     storage=prep.sweep_dir.uri.rsplit("/", 1)[0])
    prep.sweep_dir.write_bytes(json.dumps(plan.to_dict(), default=str, indent=1).encode(), PLAN_FILE)
    run_name = f"run-{len(_runs(prep.sweep_dir)) + 1:03d}"
    reap_stale_ray(prep.sweep_dir)
    slots = spec.resources.max_concurrent_trials if spec.resources.workers_per_trial > 1 else 1
    ray_ctx = (cluster_ray(prep.sweep_dir) if in_cluster
               else local_ray(cpus, gpus, trial_slots=slots, sweep_dir=prep.sweep_dir))
    with ray_ctx:
        interrupted = _run_on_ray(prep, full, run_name, lease_s, progress, in_cluster=in_cluster)
    summary = ResultStore(prep.sweep_dir).summary()
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _record_submission(prep: Prepared) -> None:
    """prepare() checked that a submitted file only grows the stored one (orchestration.plan.identity):
    it is the sweep's file from now on, even when there is nothing new to run."""
    spec = prep.spec
    prep.sweep_dir.write_bytes(prep.spec_text.encode(), SPEC_FILE)
    submission = {"source": str(spec.source), "base_dir": spec.base_dir, "submitted_at": datetime.now(UTC).isoformat()}
    prep.sweep_dir.write_bytes(json.dumps(submission).encode(), SUBMISSION_FILE)


def _nothing_to_do(prep: Prepared, progress: Callable[[str], None]) -> bool:
    """A submit with nothing left: every planned trial finished, or the study has its configurations."""
    spec = prep.spec
    if spec.search.algorithm != "tpe" or spec.ablation is not None:
        if not prep.pending:
            progress(f"nothing to do: all {len(prep.cells)} trials of {spec.name} are finished")
            return True
        return False
    if prep.sweep_dir.exists(STUDY_FILE):
        from orchestration.engine.search import study_storage

        done = study_storage(spec, prep.sweep_dir)[1]
        if done >= (spec.search.num_trials or 0):
            progress(f"nothing to do: the study of {spec.name} already has {done} finished configurations")
            return True
    return False


def _run_on_ray(prep: Prepared, full: Prepared, run_name: str, lease_s: float, progress: Callable[[str], None], *,
                in_cluster: bool) -> bool:
    """The Tune run, on the Ray this driver has started or joined, then (``racing``) the rounds of the
    race, each a Tune run of planned jobs; True if it was interrupted. ``full``: the sweep with every
    seed (``prep`` is its main phase)."""
    import ray

    from orchestration.engine.progress import ProgressPrinter

    spec = prep.spec
    if in_cluster:
        _check_cluster_resources(spec)
    if spec.resources.has_auto():  # auto → numbers, from the Ray this driver runs on (once, recorded)
        from orchestration.plan.resources import resolve_in_driver

        spec = resolve_in_driver(spec, prep.cells, ray.cluster_resources(), prep.sweep_dir, progress,
                                 in_cluster=in_cluster)
        prep = replace(prep, spec=spec)
    payload = _payload(prep)
    lock = _lock_table(payload.lock_name, lease_s)
    committer = start_committer(payload.rows_name, payload.storage_uri)
    _keep_credentials_out_of_runtime_envs()
    total = (spec.search.num_trials or 0) * len(spec.seeds) if not payload.jobs else len(payload.jobs)
    if batched_tpe(spec):
        from orchestration.engine.batched import most_bundles

        total = most_bundles(spec)
    try:
        if _main_left(prep, payload):
            tuner = _tuner(prep, payload, run_name, [_store_callback(payload), ProgressPrinter(total=total)])
            with _graceful_ctrl_c() as caught:
                tuner.fit()
            if caught[0]:
                return True
        if spec.racing is not None and _race_rounds(full, spec, progress):
            return True
        finish(committer, progress)
        return False
    except KeyboardInterrupt:
        return True
    finally:
        del lock, committer


def _main_left(prep: Prepared, payload: SweepPayload) -> bool:
    """Whether the main phase has work: planned jobs, or (tpe) configurations the study still needs."""
    spec = prep.spec
    if spec.search.algorithm != "tpe" or spec.ablation is not None:
        return bool(payload.jobs)
    from orchestration.engine.search import study_storage

    return study_storage(spec, prep.sweep_dir)[1] < (spec.search.num_trials or 0)


# --------------------------------------------------------------------------- racing

def racing_start(prep: Prepared) -> Prepared:
    """The main phase of a raced sweep: its cells and pending cells on the first ``racing.start`` seeds, and
    a spec with those seeds (TPE asks for configurations on them); ``prep`` itself without ``racing``."""
    racing = prep.spec.racing
    if racing is None:
        return prep
    seeds = tuple(prep.spec.seeds[: racing.start])
    return replace(prep, spec=prep.spec.model_copy(update={"seeds": seeds}),
                   cells=[c for c in prep.cells if getattr(c, "seed", None) in seeds],
                   pending=[c for c in prep.pending if getattr(c, "seed", None) in seeds])


def _race(full: Prepared) -> Any:
    """The race's next round, from the result rows (:func:`orchestration.plan.racing.race`)."""
    from orchestration.plan.racing import race, standings

    spec = full.spec
    assert spec.racing is not None
    metric = spec.search.objective.metric
    rows = ResultStore(full.sweep_dir).read_trials(["trial_key", "status", "seed", "params_json", metric]).table
    return race(standings(rows.to_pylist(), metric), spec.seeds, spec.racing.confidence, spec.racing.start)


def _race_left(full: Prepared) -> bool:
    """A raced sweep with trials still to race (the main phase may be done)."""
    return full.spec.racing is not None and bool(_race(full).runs)


def _race_rounds(full: Prepared, resolved: SweepSpec, progress: Callable[[str], None]) -> bool:
    """Run the race's rounds until it ends (each round: the next seed of every configuration still in
    contention, planned as jobs — bundles — and run as one Tune run); True if interrupted. Each
    decision is printed and kept in ``racing.json``."""
    from orchestration.engine.progress import ProgressPrinter
    from orchestration.plan.cells import build_trial

    metric, history = full.spec.search.objective.metric, []
    spec = resolved.model_copy(update={"seeds": full.spec.seeds})  # the driver's resources, every seed
    while True:
        rnd = _race(full)
        progress(rnd.line(metric))
        history.append({"leader": rnd.leader, "leader_interval": rnd.leader_bounds, "contenders": rnd.contenders,
                        "runs": [{"params": p, "seed": s} for p, s in rnd.runs], "settled": rnd.settled,
                        "trainings": rnd.trainings, "every_seed": rnd.every_seed})  # fmt: skip
        full.sweep_dir.write_bytes(json.dumps({"confidence": spec.racing.confidence if spec.racing else None,
                                               "rounds": history}, indent=1).encode(), RACING_FILE)  # fmt: skip
        if not rnd.runs:
            return False
        trials: list[Any] = [build_trial(spec, params, seed) for params, seed in rnd.runs]
        round_prep = replace(full, spec=spec, cells=trials, pending=list(trials))
        payload = _payload(round_prep, planned=True)
        run_name = f"run-{len(_runs(full.sweep_dir)) + 1:03d}"
        tuner = _tuner(round_prep, payload, run_name, [_store_callback(payload),
                                                       ProgressPrinter(total=len(payload.jobs))], planned=True)
        with _graceful_ctrl_c() as caught:
            tuner.fit()
        if caught[0]:
            return True


def _lock_table(name: str, lease_s: float) -> Any:
    """The sweep's AE-cache lock table, a named actor every trial reaches."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node: the lock table must not die with a worker node. Affinity is soft, and Ray
    # placed it on a worker all the same (seen in CI: a killed worker node took the table with it,
    # and every retry of the trial failed on the dead actor), so it also restarts wherever it can,
    # and calls to it wait for the restart. A restarted table holds no locks: holders that lived
    # renew theirs, and at worst one autoencoder is trained twice (the cache's writes are atomic).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0)(LockTable).options(
        name=name, namespace="deepsad", get_if_exists=True, scheduling_strategy=here,
        max_restarts=-1, max_task_retries=-1,
    ).remote(lease_s)


def _resume_plan(prep: Prepared, progress: Callable[[str], None]) -> list[Any] | None:
    """What a resume runs, in a new Tune run: the cells (grid/random) or units (ablation) without a
    final row (none, "running", or a row file that cannot be read); for tpe, the Optuna study continues
    and the configurations a dead driver left running run again. None: nothing left to run.

    Resume never loads Tune's saved state: ``tuner.pkl``, the searcher's state and the experiment
    state are pickles, and unpickling them runs whatever code the storage holds. The record of truth
    is ours — the result tables and the Optuna study (SQLite) — so a resume needs nothing else. (Tune's
    mid-trial checkpoints of trials that were running are not reused: those trials start over.)

    Raises:
        StorageError: the sweep was never run, or its driver is still running.
    """
    spec = prep.spec
    if not _runs(prep.sweep_dir):
        raise StorageError(f"sweep {prep.sweep_dir.uri}: nothing to resume (it was never submitted)")
    reap_stale_ray(prep.sweep_dir)  # refuses while the last driver lives; its trials would be marked dead
    how = "from its own records (Tune's saved state is never loaded)"
    if spec.search.algorithm == "tpe" and spec.ablation is None:
        from orchestration.engine.search import recover_orphans

        again = recover_orphans(spec, prep.sweep_dir)
        progress(f"resuming {spec.name} {how}: the Optuna study continues"
                 + (f"; {again} configuration(s) the last run left unfinished run again" if again else ""))
        return []
    ledger = ResultStore(prep.sweep_dir).ledger()
    # cells with no final row: none, a row still "running", or a row file that cannot be read (the store
    # skips it: the cell reads as rowless). Failed and early-stopped ones are settled: a resubmit, not a
    # resume, runs failed ones again.
    left = [c for c in prep.cells if not ledger.settled(c.key)]
    if not left:
        progress(f"nothing to resume: every trial of {spec.name} has its final row "
                 "(`deepsad sweep submit` runs failed ones again)")
        return None
    # (a driver killed before Tune saved the trials it had started is no special case here: their
    # rows are missing or "running" like those of any trial in flight)
    progress(f"resuming {spec.name} {how}: the restored run left {len(left)} trial(s) without a final row: "
             "running them in a new run")
    return left


def _keep_credentials_out_of_runtime_envs() -> None:
    """Ray Tune copies AWS credentials from the driver's environment into every trainable's runtime
    environment (``ray.tune.execution.class_cache``), which Ray's runtime-env agent writes to its logs
    and the dashboard shows. Trials do not need the copy: on a local Ray they inherit the driver's
    environment, on a cluster each node has its own identity (instance role, Kubernetes Secret)."""
    from ray.tune.execution import class_cache

    from orchestration.store.s3 import SECRET_VARS

    for name in SECRET_VARS:
        class_cache.ENV_VARS_TO_PROPAGATE.discard(name)


def _check_cluster_resources(spec: SweepSpec) -> None:
    """Ray Train trials need the head's ``trial_slot`` resource (see infra/): say so before Tune waits
    forever for it."""
    import ray

    if spec.resources.workers_per_trial > 1 and not ray.cluster_resources().get("trial_slot"):
        from deepsad.errors import ConfigError

        raise ConfigError(
            f"{spec.source}: resources.workers_per_trial: > 1 needs a `trial_slot` resource on the cluster "
            "(start the head with --resources='{\"trial_slot\": 64}', as infra/ does)")


@contextlib.contextmanager
def _graceful_ctrl_c() -> Iterator[list[bool]]:
    """Note a Ctrl-C during ``Tuner.fit`` (``caught[0]``) and have Tune stop gracefully.

    Tune's own SIGINT handler stops the run and then lets ``fit`` *return* as if the sweep were done,
    so the caller cannot tell. Tune stops the same way on SIGUSR1, so we take SIGINT ourselves and
    forward it. A second Ctrl-C (or one before Tune listens) raises KeyboardInterrupt at once.
    """
    caught = [False]
    if threading.current_thread() is not threading.main_thread():
        yield caught  # signal handlers can only be set in the main thread
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if caught[0] or not tune_listens:
            raise KeyboardInterrupt
        caught[0] = True
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # read by Tune when fit() starts
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)
