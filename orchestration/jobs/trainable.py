"""The unit of work of a sweep: a list of trial configurations run in one process.

``execute(trials, reporter, ctx)`` is Ray-free glue around the core: it skips trials that already
have a finished row, loads the data, takes the pretrained AE from the sweep's cache (or trains it
once, under the cache lock), fine-tunes, reports every epoch with a resumable checkpoint, writes the
model bundle and the trial's row. The :class:`Reporter` is what differs between a Ray Tune trial
(``tune.report``), a Ray Train worker (``ray.train.report``; only rank 0 checkpoints) and a test.
A list of more than one trial is a bundle (``resources.bundle_size``): :mod:`orchestration.jobs.bundle_run`
trains them at once.

``execute_unit(unit, reporter, ctx)`` runs one unit of an ablation (:mod:`orchestration.plan.ablation`):
Deep SAD as above; Deep SVDD as Deep SAD with the training part's semi-targets zeroed; Isolation
Forest and OC-SVM through :func:`deepsad.baselines.fit_baseline` on the same split; policy ``tuned``
as a seeded in-process Optuna TPE study of ``budget`` trainings that sees only validation metrics.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.data.sources import load_dataset
from deepsad.data.splits import SemiSupervisedSplit, make_split
from deepsad.errors import DataError, StorageError
from deepsad.jsonio import load_json_bounded
from deepsad.training import EpochReport, FitResult, TrainConfig, TrainState, finetune, pretrain
from orchestration.jobs import faults
from orchestration.plan.trial import TrialConfig
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.results import ResultStore, code_version
from orchestration.store.storage import Storage

if TYPE_CHECKING:
    from orchestration.plan.ablation import AblationUnit


class Reporter(Protocol):
    """Where a trial's progress goes (Ray Tune, Ray Train, or a list in a test)."""

    rank: int
    world_size: int

    def restored(self) -> TrainState | None:
        """The checkpoint this (retried or resumed) trial starts from, if any."""

    def report(self, metrics: dict[str, Any], state: TrainState | None) -> None:
        """Report one result; ``state`` (if given) becomes the trial's latest checkpoint."""


class CacheLock(Protocol):
    """Makes sure two concurrent trials never both train the same autoencoder."""

    def acquire(self, key: str, owner: str) -> bool: ...
    def release(self, key: str, owner: str) -> None: ...
    def renew(self, key: str, owner: str) -> None: ...


class NoLock:
    """For a single process: every acquire succeeds."""

    def acquire(self, key: str, owner: str) -> bool:
        return True

    def release(self, key: str, owner: str) -> None:
        return None

    def renew(self, key: str, owner: str) -> None:
        return None


@dataclass(frozen=True)
class RunContext:
    """What a trial needs besides its configuration."""

    sweep: str
    storage_uri: str
    trial_id: str = "local"
    checkpoint_interval_s: float = 10.0
    # a report is a round trip to the Tune driver (~7 ms): epochs of a few ms are reported at most
    # this often (always with a checkpoint, at a phase end, and every epoch on Ray Train, whose
    # report is a barrier that every rank must reach together)
    report_interval_s: float = 0.5
    cache_wait_s: float = 3600.0


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None) -> Dataset:
    # one load per worker process: every trial of a sweep uses the same data set
    return load_dataset(name, data_dir)


def resolve_device(request: str) -> str:
    """``auto`` → ``cuda`` when this process was given a GPU, else ``cpu``."""
    import torch

    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return request


def _with_state(phase: str, report: EpochReport, extra: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"phase": phase, f"{phase}_epoch": report.epoch, f"{phase}_loss": report.loss,
                               "samples_per_s": report.samples_per_s, **extra}
    if phase == "sad":
        # the scheduler's time attribute and the objective appear only in Deep SAD epochs
        metrics.update(epoch=report.epoch, val_auroc=report.val_auroc, val_ap=report.val_ap, loss=report.loss)
    return metrics


def _epoch_row(trial_key: str, attempt: int, r: EpochReport) -> dict[str, Any]:
    return {"trial_key": trial_key, "attempt": attempt, **r.to_dict()}


def execute(
    trials: list[TrialConfig], reporter: Reporter, ctx: RunContext, *, lock: CacheLock | None = None
) -> list[dict[str, Any]]:
    """Run the trial (see the module docstring), or the bundle of trials, and return the result rows."""
    if len(trials) > 1:
        from orchestration.jobs.bundle_run import run_bundle

        return run_bundle(trials, reporter, ctx, lock or NoLock())
    return [_run_one(t, reporter, ctx, lock or NoLock()) for t in trials]


@dataclass(frozen=True)
class RunAs:
    """How an ablation unit runs one Deep SAD training (None in :func:`_run_one`: a sweep's trial).

    Attributes:
        key: the row's trial key (also names its epochs and checkpoint).
        columns: the ablation's own row columns (method, policy, cell, axes_json, selected, inner_trial);
            the hyperparameter columns come from the trial.
        labels: False for Deep SVDD: the training part's semi-targets are zeroed.
        final: report the outcome as the Tune trial's last result (``done``); False inside a tuned
            unit, which reports once, after choosing.
    """

    key: str
    columns: dict[str, Any]
    labels: bool = True
    final: bool = True


def without_labels(split: SemiSupervisedSplit) -> SemiSupervisedSplit:
    """``split`` with every semi-target of its training part 0 (Deep SVDD); validation and test
    unchanged. Its fingerprint is derived from the original's, so that checkpoints of the two never
    pass for each other."""
    train = replace(split.train, semi_targets=np.zeros_like(split.train.semi_targets))
    fingerprint = hashlib.sha256(f"{split.fingerprint}:semi-targets-zeroed".encode()).hexdigest()
    return replace(split, train=train, fingerprint=fingerprint)


def _run_one(
    trial: TrialConfig, reporter: Reporter, ctx: RunContext, lock: CacheLock, run_as: RunAs | None = None
) -> dict[str, Any]:
    sweep_storage = Storage.from_uri(ctx.storage_uri)
    store = ResultStore(sweep_storage)
    main = reporter.rank == 0
    key = run_as.key if run_as is not None else trial.key
    final = run_as is None or run_as.final
    previous = store.row(key)
    if previous is not None and previous.get("status") == "finished":
        # resubmitted or resumed: never train a finished trial again; tell the searcher its result
        if final:
            reporter.report(_final_metrics(previous, skipped=True), None)
        return previous
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    attempt = int(previous["attempt"]) + 1 if previous is not None and previous.get("attempt") else 1
    base_row: dict[str, Any] = {
        "sweep": ctx.sweep, "trial_key": key, "trial_id": ctx.trial_id, "attempt": attempt,
        "code_version": code_version(), "workers": reporter.world_size, **trial.columns(),
        **(run_as.columns if run_as is not None else {}),
        "params_json": json.dumps(trial.params, sort_keys=True), "started_at": started,
    }
    if main:
        store.write_trial({**base_row, "status": "running"})
    faults.checkpoint("trial_start", rank=reporter.rank, trial_key=key)

    device = resolve_device(trial.device_request)
    cfg = replace(trial.train, device=device)
    split = make_split(_dataset(trial.dataset, trial.data_dir), trial.protocol)
    # the autoencoder ignores labels, so Deep SVDD pretrains on (and shares the cache entry of) the split
    fit_split = split if run_as is None or run_as.labels else without_labels(split)
    state = reporter.restored()
    epochs: list[EpochReport] = []
    cache_info: dict[str, Any] = {}
    last_checkpoint = [time.monotonic()]
    last_report = [0.0]

    def on_epoch(report: EpochReport, state_fn: Any) -> None:
        faults.checkpoint(f"{report.phase}_epoch", epoch=report.epoch, rank=reporter.rank, trial_key=key)
        epochs.append(report)
        due = time.monotonic() - last_checkpoint[0] >= ctx.checkpoint_interval_s or report.epoch == report.epochs
        snapshot = state_fn() if due else None
        if due:
            last_checkpoint[0] = time.monotonic()
        if snapshot is not None and report.phase == "sad":
            snapshot.meta["cache_info"] = dict(cache_info)  # a resumed trial still knows it hit the cache
        now = time.monotonic()
        if (snapshot is None and reporter.world_size == 1 and report.epoch != report.epochs
                and now - last_report[0] < ctx.report_interval_s):
            return
        last_report[0] = now
        extra = {"trial_key": key, "attempt": attempt}
        reporter.report(_with_state(report.phase, report, extra), snapshot)
        if main and snapshot is not None:  # with the checkpoint, not every epoch: the file is rewritten whole
            store.write_epochs(key, [_epoch_row(key, attempt, r) for r in _history(state, epochs)])

    ae_state, cache, ae_history = _autoencoder(trial, cfg, split, state, ctx, sweep_storage, lock, on_epoch,
                                               reporter, key)  # fmt: skip
    cache_info.update(cache)
    result = finetune(fit_split, cfg, ae_state=ae_state, on_epoch=on_epoch, prior_history=ae_history,
                      resume=state if state is not None and state.phase == "sad" else None)
    faults.checkpoint("trial_end", rank=reporter.rank, trial_key=key)
    row = {**base_row, **_outcome(result, split, cfg, cache), "status": "finished",
           "total_seconds": time.perf_counter() - t0, "finished_at": datetime.now(UTC)}
    if main:
        checkpoint = sweep_storage.child("checkpoints", key)
        with tempfile.TemporaryDirectory() as tmp:
            result.model.meta.update(sweep=ctx.sweep, trial_key=key, params=trial.params,
                                     metrics={k: row[k] for k in ("val_auroc", "val_ap", "test_auroc", "test_ap")})
            result.model.save(Path(tmp) / "model")
            checkpoint.upload_dir(Path(tmp) / "model")
        row["checkpoint"] = checkpoint.uri
        store.write_epochs(key, [_epoch_row(key, attempt, r) for r in _history(state, epochs)])
        store.write_trial(row)
    if final:
        reporter.report(_final_metrics(row, skipped=False), None)
    return row


def _history(state: TrainState | None, new: list[EpochReport]) -> list[EpochReport]:
    """Epochs from before a restart (kept in the checkpoint) followed by this attempt's."""
    if state is None:
        return new
    from deepsad.checkpoint import from_json_value

    old = [EpochReport(**h) for h in from_json_value(state.meta.get("history", []))]
    seen = {(r.phase, r.epoch) for r in new}
    return [r for r in old if (r.phase, r.epoch) not in seen] + new


def _autoencoder(
    trial: TrialConfig, cfg: TrainConfig, split: SemiSupervisedSplit, state: TrainState | None, ctx: RunContext,
    storage: Storage, lock: CacheLock, on_epoch: Any, reporter: Reporter, row_key: str,
) -> tuple[dict[str, Any] | None, dict[str, Any], list[EpochReport]]:
    """The pretrained AE of this trial: from the cache, or trained once under the cache lock.

    Returns the AE state dict (None without pretraining or when resuming past it), the cache columns
    of the result row, and the pretraining history of this process."""
    if cfg.ae is None or trial.ae_key is None:
        return None, {"ae_key": None, "cache_hit": False, "ae_seconds": 0.0, "ae_seconds_saved": 0.0}, []
    key = ae_cache_key(trial.ae_key, split.fingerprint)
    info: dict[str, Any] = {"ae_key": key, "cache_hit": False, "ae_seconds": 0.0, "ae_seconds_saved": 0.0}
    if state is not None and state.phase == "sad":
        return None, {**info, **state.meta.get("cache_info", {})}, []  # past pretraining already
    cache = AECache(storage)
    owner = f"{ctx.trial_id}:{os.getpid()}"
    deadline = time.monotonic() + ctx.cache_wait_s
    while True:
        hit = cache.get(key)
        if hit is not None:
            tensors, meta = hit
            return tensors, {**info, "cache_hit": True, "ae_seconds_saved": float(meta.get("ae_seconds", 0.0))}, []
        if _decide(reporter, lambda: lock.acquire(key, owner)):
            # the previous holder may have cached it between our miss and our acquire: look again
            if not _decide(reporter, lambda: cache.exists(key)):
                break
            if reporter.rank == 0:
                lock.release(key, owner)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {ctx.cache_wait_s:.0f} s for another trial to pretrain AE {key}")
        time.sleep(0.5)
    try:
        def renewing(report: EpochReport, state_fn: Any) -> None:
            lock.renew(key, owner)
            on_epoch(report, state_fn)

        ae = pretrain(split, cfg, on_epoch=renewing, resume=state if state is not None else None)
        seconds = sum(h.seconds for h in ae.history)
        if reporter.rank == 0:
            cache.put(key, ae.state_dict, {"ae_seconds": seconds, "epochs": len(ae.history),
                                           "trial_key": row_key, "created_at": datetime.now(UTC).isoformat()})
        return ae.state_dict, {**info, "ae_seconds": seconds}, ae.history
    finally:
        if reporter.rank == 0:
            lock.release(key, owner)


def _decide(reporter: Reporter, fn: Any) -> bool:
    """Rank 0 decides (e.g. takes a lock); every rank of a data-parallel group gets the same answer."""
    if reporter.world_size == 1:
        return bool(fn())
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(bool(fn())) if reporter.rank == 0 else 0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _outcome(result: FitResult, split: SemiSupervisedSplit, cfg: TrainConfig, cache: dict[str, Any]) -> dict[str, Any]:
    return {
        "fingerprint": split.fingerprint, "val_auroc": result.val_auroc, "val_ap": result.val_ap,
        "test_auroc": result.test_auroc, "test_ap": result.test_ap,
        "epochs_done": sum(1 for h in result.history if h.phase == "sad"),
        "sad_seconds": result.sad_seconds, "device": cfg.device, **cache,
    }


def _final_metrics(row: dict[str, Any], *, skipped: bool) -> dict[str, Any]:
    keys = ("trial_key", "val_auroc", "val_ap", "test_auroc", "test_ap", "cache_hit", "epochs_done")
    return {**{k: row.get(k) for k in keys}, "epoch": row.get("epochs_done"), "done": True, "skipped": skipped}


# --------------------------------------------------------------------------- ablation units


def execute_unit(
    unit: AblationUnit, reporter: Reporter, ctx: RunContext, *, lock: CacheLock | None = None
) -> list[dict[str, Any]]:
    """Run one ablation unit and return the rows it wrote (tuned: every inner training's, the chosen
    one marked ``selected``). A unit whose selected row is finished reports it and trains nothing.

    Raises:
        DataError: every inner training of a tuned unit failed; the errors of :func:`execute`.
    """
    lock = lock or NoLock()
    if unit.is_baseline:
        return [_run_baseline(unit, reporter, ctx)]
    if unit.policy == "fixed":
        run_as = RunAs(unit.key, unit.ablation_columns(), labels=unit.method == "deepsad")
        return [_run_one(unit.trial, reporter, ctx, lock, run_as)]
    return _run_tuned(unit, reporter, ctx, lock)


def _run_baseline(unit: AblationUnit, reporter: Reporter, ctx: RunContext) -> dict[str, Any]:
    from deepsad.baselines import BaselineData, default_grid, fit_baseline

    store = ResultStore(Storage.from_uri(ctx.storage_uri))
    previous = store.row(unit.key)
    if previous is not None and previous.get("status") == "finished":
        reporter.report(_final_metrics(previous, skipped=True), None)
        return previous
    t0 = time.perf_counter()
    attempt = int(previous["attempt"]) + 1 if previous is not None and previous.get("attempt") else 1
    base_row: dict[str, Any] = {
        "sweep": ctx.sweep, "trial_key": unit.key, "trial_id": ctx.trial_id, "attempt": attempt,
        "code_version": code_version(), "workers": 1, **unit.columns(), "started_at": datetime.now(UTC),
    }
    store.write_trial({**base_row, "status": "running"})
    faults.checkpoint("trial_start", rank=0, trial_key=unit.key)
    split = make_split(_dataset(unit.trial.dataset, unit.trial.data_dir), unit.trial.protocol)
    name: Any = unit.method
    if (split.val.labels == 1).any():
        data = BaselineData(split.train.x, split.val.x, split.val.labels, split.test.x, split.test.labels)
        result = fit_baseline(name, data, seed=unit.seed)
        params: dict[str, Any] = dict(result.hyperparameters)
        val_auroc: float | None = result.val_auroc
        val_ap: float | None = result.val_ap
    else:
        # γ_l = γ_p = 0: validation cannot rank the candidates, so all tie and the first is taken (the
        # tie rule of fit_baseline). With one candidate nothing is chosen, so the test part may stand
        # in for the validation argument (which must hold both classes); its val metrics are dropped.
        data = BaselineData(split.train.x, split.test.x, split.test.labels, split.test.x, split.test.labels)
        result = fit_baseline(name, data, seed=unit.seed, grid=[default_grid(name)[0]])
        params = {**result.hyperparameters, "selection": "first candidate (no anomalies in validation)"}
        val_auroc = val_ap = None
    faults.checkpoint("trial_end", rank=0, trial_key=unit.key)
    row = {**base_row, "status": "finished", "fingerprint": split.fingerprint, "val_auroc": val_auroc,
           "val_ap": val_ap, "test_auroc": result.test_auroc, "test_ap": result.test_ap,
           "params_json": json.dumps(params, sort_keys=True), "device": "cpu",
           "total_seconds": time.perf_counter() - t0, "finished_at": datetime.now(UTC)}  # fmt: skip
    store.write_trial(row)
    reporter.report(_final_metrics(row, skipped=False), None)
    return row


class _Handed:
    """A reporter whose restored checkpoint is the one given (the unit's, for the training it belongs to)."""

    def __init__(self, inner: Reporter, state: TrainState | None) -> None:
        self.inner, self.state = inner, state
        self.rank, self.world_size = inner.rank, inner.world_size

    def restored(self) -> TrainState | None:
        return self.state

    def report(self, metrics: dict[str, Any], state: TrainState | None) -> None:
        self.inner.report(metrics, state)


def _belongs_to(state: TrainState | None, trial: TrialConfig) -> bool:
    if state is None:
        return False
    return bool(state.meta.get("config") == replace(trial.train, device=resolve_device(trial.device_request)).to_dict())


def _run_tuned(unit: AblationUnit, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
    """The nested study of a tuned unit: ``budget`` trainings suggested by a seeded TPE sampler that
    is told only the objective (a validation metric); the best is marked selected (first on ties).

    A retried unit replays the inner trainings that have finished rows (same suggestions: the sampler
    is seeded and told the same values), and resumes the interrupted one from its checkpoint.
    """
    import math

    import optuna

    from orchestration.plan.ablation import clear_unit_row, with_params

    storage = Storage.from_uri(ctx.storage_uri)
    store = ResultStore(storage)
    done = [r for i in range(unit.budget) if (r := store.row(unit.row_key(i))) is not None and r.get("selected")]
    if done and done[0].get("status") == "finished":
        reporter.report({**_final_metrics(done[0], skipped=True), "trial_key": unit.key}, None)
        return [done[0]]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # small budgets: Optuna's default of 10 random start-up trials would leave TPE nothing to do
    sampler = optuna.samplers.TPESampler(seed=unit.search_seed, n_startup_trials=min(10, max(2, unit.budget // 2)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = _distributions(unit.space)
    restored = reporter.restored()
    rows: list[dict[str, Any]] = []
    for i in range(unit.budget):
        asked = study.ask(space)
        trial = with_params(unit.trial, asked.params)
        key = unit.row_key(i)
        previous = store.row(key)
        if (previous is not None and previous.get("status") == "finished"
                and load_json_bounded(previous.get("params_json") or "{}", f"row {key}: params_json",
                                      error=StorageError) == trial.params):
            row = previous
        else:
            handed, restored = (restored, None) if _belongs_to(restored, trial) else (None, restored)
            run_as = RunAs(key, unit.ablation_columns(selected=False, inner=i), labels=unit.method == "deepsad",
                           final=False)  # fmt: skip
            try:
                row = _run_one(trial, _Handed(reporter, handed), ctx, lock, run_as)
            except DataError as e:  # e.g. a diverged training (NaN scores): it fails alone
                row = {**(store.row(key) or {}), "trial_key": key, "status": "failed", "error": str(e)[:500],
                       "finished_at": datetime.now(UTC)}  # fmt: skip
                store.write_trial(row)
        value = row.get(unit.objective) if row.get("status") == "finished" else None
        if isinstance(value, float) and math.isfinite(value):
            study.tell(asked, value)
        else:
            study.tell(asked, state=optuna.trial.TrialState.FAIL)
        rows.append(row)
    scored = [(i, r) for i, r in enumerate(rows)
              if isinstance(r.get(unit.objective), float) and math.isfinite(r[unit.objective])]  # fmt: skip
    if not scored:
        raise DataError(f"ablation unit {unit.key}: all {unit.budget} inner trainings failed or had no "
                        f"{unit.objective}")  # fmt: skip
    best_i, best = max(scored, key=lambda ir: (ir[1][unit.objective], -ir[0]))
    chosen = {**best, "selected": True}
    store.write_trial(chosen)
    rows[best_i] = chosen
    clear_unit_row(storage, unit)
    reporter.report({**_final_metrics(chosen, skipped=False), "trial_key": unit.key, "inner_trial": best_i}, None)
    return rows


def _distributions(space: dict[str, Any]) -> dict[str, Any]:
    """``search.space`` entries (plain JSON) as Optuna distributions (as orchestration.engine.search, which
    imports Ray)."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key, d in space.items():
        kind = d["distribution"]
        if kind == "log_uniform":
            out[key] = od.FloatDistribution(d["low"], d["high"], log=True)
        elif kind == "uniform":
            out[key] = od.FloatDistribution(d["low"], d["high"])
        elif kind == "int_uniform":
            out[key] = od.IntDistribution(int(d["low"]), int(d["high"]))
        else:
            out[key] = od.CategoricalDistribution(list(d["values"]))
    return out
