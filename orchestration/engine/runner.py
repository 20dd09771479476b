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
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepsad.errors import StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.engine.ray_session import cluster_ray, local_ray, reap_stale_ray
from orchestration.engine.tune_trial import SweepPayload, tune_trial
from orchestration.jobs.cache_lock import LockTable, lease_seconds
from orchestration.plan.cells import enumerate_cells
from orchestration.plan.preflight import check_resources, validate_spec
from orchestration.plan.trial import TrialConfig
from orchestration.spec.model import SweepSpec, parse_spec
from orchestration.store.layout import (
    DEFAULT_STORAGE,
    PLAN_FILE,
    SPEC_FILE,
    STUDY_FILE,
    SUBMISSION_FILE,
    sweep_location,
)
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage

# --------------------------------------------------------------------------- the driver side


class StoreCallback:
    """Writes the rows a trial cannot write itself: failed trials (after their last retry) and
    trials stopped early by the scheduler. Made a ``tune.Callback`` by :func:`_store_callback`."""

    def __init__(self, payload: SweepPayload) -> None:
        self.payload = payload

    def _trials(self, trial: Any) -> list[TrialConfig]:
        try:
            return self.payload.trials_for(trial.config)
        except Exception:  # a broken config is reported by the trial's own error
            return []

    def _write(self, trial: Any, status: str, error: str | None) -> None:
        if self.payload.ablation:
            from orchestration.plan.ablation import AblationUnit, record_unit_end

            cell = trial.config.get("cell")
            keys = self.payload.bundles.get(cell, [cell])
            store = ResultStore(Storage.from_uri(self.payload.storage_uri))
            for key in keys:
                if len(keys) > 1 and (store.row(key) or {}).get("status") in ("finished", "failed"):
                    continue  # a bundle wrote its member's own outcome (a diverged member fails alone)
                with contextlib.suppress(KeyError):  # a cell of another run: nothing of ours to record
                    record_unit_end(self.payload.name, Storage.from_uri(self.payload.storage_uri),
                                    AblationUnit.from_dict(self.payload.cells[key]), trial_id=trial.trial_id,
                                    status=status, error=error, last={} if len(keys) > 1 else trial.last_result or {})
            return
        members = self._trials(trial)
        for cfg in members:
            self._write_one(trial, cfg, status, error, bundle=len(members) > 1)

    def _write_one(self, trial: Any, cfg: TrialConfig, status: str, error: str | None, *, bundle: bool) -> None:
        store = ResultStore(Storage.from_uri(self.payload.storage_uri))
        previous = store.row(cfg.key) or {}
        done = previous.get("status")
        if done == "finished" or (bundle and done == "failed"):
            return  # a bundle writes its members' own outcomes (a diverged member fails alone)
        last = {} if bundle else (trial.last_result or {})
        row = {**{k: v for k, v in previous.items() if v is not None}, **cfg.columns(),
               "sweep": self.payload.name, "trial_key": cfg.key, "trial_id": trial.trial_id, "status": status,
               "error": error, "params_json": json.dumps(cfg.params, sort_keys=True),
               "finished_at": datetime.now(UTC)}
        for k in ("val_auroc", "val_ap"):
            if isinstance(last.get(k), float):
                row[k] = last[k]
        if isinstance(last.get("epoch"), int):
            row["epochs_done"] = last["epoch"]
        row.setdefault("attempt", 1)
        store.write_trial(row)

    def on_trial_error(self, trial: Any) -> None:
        self._write(trial, "failed", trial_error(trial))

    def on_trial_complete(self, trial: Any) -> None:
        self._write(trial, "stopped", None)


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's error (its exception), read from the driver's local copy:
    the copy in storage is synced later than the callbacks run."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    else:
        with contextlib.suppress(Exception):
            text = str(trial.get_error() or "")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    return (lines[-1] if lines else "trial failed")[:500]


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


@dataclass
class Prepared:
    """A validated sweep, ready to run: nothing has started yet."""

    spec: SweepSpec
    spec_text: str
    sweep_dir: Storage
    # grid/random: every cell; tpe: the probe trials that were validated; ablation: every unit
    cells: list[Any]
    pending: list[Any]  # grid/random: cells without a finished row; ablation: units not done
    finished: set[str]


def prepare(
    spec_path: Path, storage: str | None, *, in_cluster: bool = False, base_dir: str | None = None
) -> Prepared:
    """Load and validate the spec, every trial config, the data and the storage — before any Ray.

    ``in_cluster``: the driver runs on a Ray cluster, whose resources (autoscaled) are not this
    machine's, so the local CPU/GPU check is skipped. ``base_dir``: where relative paths in the file
    are taken from (default: the current directory).

    Raises:
        ConfigError: the sweep file or a trial configuration is invalid (one line per problem).
        DataError: the data set cannot be loaded.
        StorageError: the storage location is not writable.
    """
    from orchestration.spec.model import load_spec

    spec = load_spec(spec_path, base_dir=base_dir)
    text = Path(spec_path).read_text(encoding="utf-8")
    cells: list[Any]
    if spec.ablation is not None:
        from orchestration.plan.ablation import validate_ablation

        cells = validate_ablation(spec)
    else:
        cells = validate_spec(spec)
    if not in_cluster:
        check_resources(spec, *_machine())
    try:
        root = Storage.from_uri(storage or spec.storage or DEFAULT_STORAGE)
        root.check_writable()
    except StorageError as e:
        # say where the location came from: the flag, the sweep file, or the default
        where = "--storage" if storage else f"{spec.source}: storage" if spec.storage else "default storage"
        raise StorageError(f"{where}: {e}") from e
    sweep_dir = root.child(spec.name)
    from orchestration.plan.identity import check_identity

    check_identity(spec, sweep_dir)  # a changed file under an existing sweep's name is refused
    finished = _finished(spec, sweep_dir)
    pending = [] if spec.search.algorithm == "tpe" else [c for c in cells if c.key not in finished]
    return Prepared(spec, text, sweep_dir, cells, pending, finished)


def _finished(spec: SweepSpec, sweep_dir: Storage) -> set[str]:
    """Keys of the finished trials (ablation: of the units whose selected row is finished)."""
    store = ResultStore(sweep_dir)
    if spec.ablation is not None:
        from orchestration.plan.ablation import done_units

        return done_units(store)
    return store.finished_keys()


def _tuner(prep: Prepared, payload: SweepPayload, run_name: str, callbacks: list[Any]) -> Any:
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
    if spec.search.algorithm == "tpe":
        search_alg, num_samples = search_algorithm(
            spec, prep.sweep_dir, stopped_early=scheduler.stopped_early if scheduler is not None else None
        )
        param_space = {}
    elif payload.bundles and not payload.ablation:
        num_samples, param_space = 1, {"bundle": tune.grid_search(pending_bundles(payload, prep.pending))}
    else:  # ablation: units, and bundles of units, under one grid parameter
        bundled = {k for keys in payload.bundles.values() for k in keys}
        cells = pending_bundles(payload, prep.pending) + [c.key for c in prep.pending if c.key not in bundled]
        num_samples, param_space = 1, {"cell": tune.grid_search(cells)}
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


def _payload(prep: Prepared) -> SweepPayload:
    spec, res = prep.spec, prep.spec.resources
    bundles: dict[str, list[str]] = {}
    # ablation: every unit, so that a restored Tune trial of a unit done meanwhile finds it (and skips);
    # bundles: planned over every cell, so that a resumed run finds the bundles it started with
    every = spec.ablation is not None or res.bundle_size != 1
    if res.bundle_size != 1:
        from orchestration.plan.bundles import keys_id, make_bundles, make_unit_bundles

        plan = (make_unit_bundles(prep.cells, res.bundle_size, res.gpus_per_trial) if spec.ablation is not None
                else make_bundles(prep.cells, res.bundle_size, res.gpus_per_trial))
        for members in plan:
            if len(members) > 1 or spec.ablation is None:
                bundles[keys_id([m.key for m in members])] = [m.key for m in members]
    return SweepPayload(
        name=spec.name, storage_uri=prep.sweep_dir.uri, spec_text=prep.spec_text,
        source=str(spec.source), base_dir=spec.base_dir,
        cells={c.key: c.to_dict() for c in (prep.cells if every else prep.pending)},
        lock_name=f"ae-cache-lock:{prep.sweep_dir.uri}", ablation=spec.ablation is not None,
        bundles=bundles,
    )


def pending_bundles(payload: SweepPayload, pending: list[Any]) -> list[str]:
    """The bundles with at least one trial still to run."""
    todo = {c.key for c in pending}
    return [b for b, keys in payload.bundles.items() if todo.intersection(keys)]


def _runs(sweep_dir: Storage) -> list[str]:
    return sorted(n for n in sweep_dir.list("tune") if n.startswith("run-"))


def _machine() -> tuple[float, float]:
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def run_sweep(
    prep: Prepared, *, resume: bool, progress: Callable[[str], None], in_cluster: bool = False
) -> dict[str, Any]:
    """Run (or resume) the sweep on a local Ray (or, ``in_cluster``, on the Ray cluster this driver
    runs in) and return the store's summary.

    Raises:
        ConfigError: the machine cannot run the requested concurrency.
        KeyboardInterrupt: after a graceful stop on Ctrl-C (the sweep stays resumable).
    """
    cpus, gpus = _machine()
    lease_s = lease_seconds()  # the AE-cache lock's lease: a bad DEEPSAD_AE_LOCK_LEASE_S stops us before Ray
    if not in_cluster:
        check_resources(prep.spec, cpus, gpus)  # again: a resumed sweep may land on a smaller machine
    spec = prep.spec
    # prepare() checked that a submitted file only grows the stored one (orchestration.plan.identity): it
    # is the sweep's file from now on, even when there is nothing new to run
    prep.sweep_dir.write_bytes(prep.spec_text.encode(), SPEC_FILE)
    submission = {"source": str(spec.source), "base_dir": spec.base_dir, "submitted_at": datetime.now(UTC).isoformat()}
    prep.sweep_dir.write_bytes(json.dumps(submission).encode(), SUBMISSION_FILE)
    if resume:
        left = _resume_plan(prep, progress)
        if left is None:
            return ResultStore(prep.sweep_dir).summary()
        prep, resume = replace(prep, pending=left), False  # resume = a new run of what is left
    if not resume and spec.search.algorithm != "tpe" and not prep.pending:
        progress(f"nothing to do: all {len(prep.cells)} trials of {spec.name} are finished")
        return ResultStore(prep.sweep_dir).summary()
    if not resume and spec.search.algorithm == "tpe" and prep.sweep_dir.exists(STUDY_FILE):
        from orchestration.engine.search import study_storage

        done = study_storage(spec, prep.sweep_dir)[1]
        if done >= (spec.search.num_trials or 0):
            progress(f"nothing to do: the study of {spec.name} already has {done} finished configurations")
            return ResultStore(prep.sweep_dir).summary()
    from orchestration.plan.cells import make_plan

    plan = make_plan(spec, prep.cells if spec.search.algorithm != "tpe" else None, storage=prep.sweep_dir.uri.rsplit("/", 1)[0])
    prep.sweep_dir.write_bytes(json.dumps(plan.to_dict(), default=str, indent=1).encode(), PLAN_FILE)
    payload = _payload(prep)
    runs = _runs(prep.sweep_dir)
    reap_stale_ray(prep.sweep_dir)
    run_name = f"run-{len(runs) + 1:03d}"
    slots = spec.resources.max_concurrent_trials if spec.resources.workers_per_trial > 1 else 1
    from orchestration.engine.progress import ProgressPrinter

    interrupted = False
    ray_ctx = (cluster_ray(prep.sweep_dir) if in_cluster
               else local_ray(cpus, gpus, trial_slots=slots, sweep_dir=prep.sweep_dir))
    with ray_ctx:
        import ray

        if in_cluster:
            _check_cluster_resources(spec)
        if spec.resources.has_auto():  # auto → numbers, from the Ray this driver runs on (once, recorded)
            from orchestration.plan.resources import resolve_in_driver

            spec = resolve_in_driver(spec, prep.cells, ray.cluster_resources(), prep.sweep_dir, progress,
                                     in_cluster=in_cluster)
            prep = replace(prep, spec=spec)
            payload = _payload(prep)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: the lock table must not die with a worker node. Affinity is soft, and Ray
        # placed it on a worker all the same (seen in CI: a killed worker node took the table with it,
        # and every retry of the trial failed on the dead actor), so it also restarts wherever it can,
        # and calls to it wait for the restart. A restarted table holds no locks: holders that lived
        # renew theirs, and at worst one autoencoder is trained twice (the cache's writes are atomic).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        lock = ray.remote(num_cpus=0)(LockTable).options(
            name=payload.lock_name, namespace="deepsad", get_if_exists=True, scheduling_strategy=here,
            max_restarts=-1, max_task_retries=-1,
        ).remote(lease_s)
        _keep_credentials_out_of_runtime_envs()
        total = _total(prep)
        if payload.bundles:
            bundled = {k for keys in payload.bundles.values() for k in keys}
            total = len(pending_bundles(payload, prep.pending)) + sum(c.key not in bundled for c in prep.pending)
        callbacks = [_store_callback(payload), ProgressPrinter(total=total)]
        tuner = _tuner(prep, payload, run_name, callbacks)
        try:
            with _graceful_ctrl_c() as caught:
                tuner.fit()
            interrupted = caught[0]
        except KeyboardInterrupt:
            interrupted = True
        finally:
            del lock
    summary = ResultStore(prep.sweep_dir).summary()
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _resume_plan(prep: Prepared, progress: Callable[[str], None]) -> list[Any] | None:
    """What a resume runs, in a new Tune run: the cells (grid/random) or units (ablation) without a
    final row (none, "running", or a row file that cannot be read); for tpe, the Optuna study continues
    and the configurations a dead driver left running run again. None: nothing left to run.

    Resume never loads Tune's saved state: ``tuner.pkl``, the searcher's state and the experiment
    state are pickles, and unpickling them runs whatever code the storage holds. The record of truth
    is ours — the Parquet rows and the Optuna study (SQLite) — so a resume needs nothing else. (Tune's
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
    left = _unsettled(prep)
    if not left:
        progress(f"nothing to resume: every trial of {spec.name} has its final row "
                 "(`deepsad sweep submit` runs failed ones again)")
        return None
    # (a driver killed before Tune saved the trials it had started is no special case here: their
    # rows are missing or "running" like those of any trial in flight)
    progress(f"resuming {spec.name} {how}: the restored run left {len(left)} trial(s) without a final row: "
             "running them in a new run")
    return left


def _unsettled(prep: Prepared) -> list[Any]:
    """Cells (grid/random) or units (ablation) with no final row: none, a row still "running", or a
    row file that cannot be read (the store skips it: the trial reads as rowless).

    Failed and early-stopped trials are settled (a resubmit, not a resume, runs failed ones again);
    a tpe study continues on its own (``submit``).
    """
    if prep.spec.search.algorithm == "tpe" and prep.spec.ablation is None:
        return []
    table = ResultStore(prep.sweep_dir).trials()
    status = dict(zip(table.column("trial_key").to_pylist(), table.column("status").to_pylist(), strict=True))
    if prep.spec.ablation is not None:
        from orchestration.plan.ablation import units_done_in

        done = units_done_in(table)
        return [u for u in prep.cells if u.key not in done and status.get(u.key) != "failed"]
    return [c for c in prep.cells if status.get(c.key) in (None, "running")]


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


def _total(prep: Prepared) -> int:
    spec = prep.spec
    if spec.search.algorithm == "tpe":
        return (spec.search.num_trials or 0) * len(spec.seeds)
    return len(prep.cells)


def load_submitted(name: str, storage: str | None) -> Prepared:
    """A submitted sweep, from its directory alone (for ``resume`` and ``status``).

    Raises:
        StorageError: no sweep of that name under ``storage``.
    """
    sweep_dir = sweep_location(name, storage)
    if not sweep_dir.exists(SPEC_FILE):
        raise StorageError(f"no sweep {name!r} under {sweep_dir.uri.rsplit('/', 1)[0]} (no {SPEC_FILE})")
    try:
        text = sweep_dir.read_bytes(SPEC_FILE).decode()
    except UnicodeDecodeError as e:
        raise StorageError(f"{sweep_dir.uri}/{SPEC_FILE}: not UTF-8 text") from e
    submission = (load_json_bounded(sweep_dir.read_bytes(SUBMISSION_FILE), f"{sweep_dir.uri}/submission.json",
                                    error=StorageError) if sweep_dir.exists(SUBMISSION_FILE) else {})
    submission = submission if isinstance(submission, dict) else {}
    source, base_dir = submission.get("source"), submission.get("base_dir")
    spec = parse_spec(text, source if isinstance(source, str) else f"{sweep_dir.uri}/{SPEC_FILE}",
                      base_dir=base_dir if isinstance(base_dir, str) else None)
    finished = _finished(spec, sweep_dir)
    cells: list[Any]
    if spec.ablation is not None:
        from orchestration.plan.ablation import expand_units

        cells = expand_units(spec)
    else:
        cells = [] if spec.search.algorithm == "tpe" else enumerate_cells(spec)
    pending = [c for c in cells if c.key not in finished]
    return Prepared(spec, text, sweep_dir, cells, pending, finished)
