"""A single training as a job: :class:`TrialJob` (one trial of a grid, random or tpe sweep) and
:func:`train_member`, the routine every single Deep SAD training runs — the sweep's trials, an
ablation's fixed units and a tuned unit's inner trainings.

:func:`train_member` is Ray-free glue around the core: it skips a training that already has a finished
row, loads the data, takes the pretrained AE from the sweep's cache (or trains it once, under the cache
lock: :mod:`orchestration.jobs.autoencoder`), fine-tunes, reports every epoch with a resumable
checkpoint, saves the model and writes the row. The :class:`~orchestration.jobs.base.Reporter` is what
differs between a Ray Tune trial (``tune.report``), a Ray Train worker (``ray.train.report``; only rank
0 writes) and a test.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from deepsad.data.splits import SemiSupervisedSplit, make_split
from deepsad.metrics import VALIDATION_METRICS
from deepsad.training import EpochReport, FitResult, TrainConfig, TrainState, finetune, pretrain
from orchestration.jobs import faults
from orchestration.jobs.autoencoder import Pretrained, cached_autoencoders, lock_owner, no_cache_columns
from orchestration.jobs.base import (
    CacheLock,
    Member,
    Reporter,
    RunContext,
    final_metrics,
    load_data,
    resolve_device,
    without_labels,
)
from orchestration.plan.trial import TrialConfig
from orchestration.store.cache import ae_cache_key
from orchestration.store.layout import checkpoint_location
from orchestration.store.results import Attempt, RowWriter
from orchestration.store.storage import Storage


@dataclass(frozen=True)
class TrialJob:
    """One trial of a grid, random or tpe sweep (on one process, or data-parallel on Ray Train)."""

    trial: TrialConfig
    kind: ClassVar[str] = "trial"

    @property
    def id(self) -> str:
        return self.trial.key

    @property
    def keys(self) -> list[str]:
        return [self.trial.key]

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        return [train_member(Member(self.trial, self.trial.key), reporter, ctx, lock)]

    def record_end(self, rows: RowWriter, status: str, error: str | None, last: Mapping[str, Any]) -> None:
        if rows.finished(self.trial.key) is None:
            rows.end(self.trial.key, status, error, columns=self.trial.columns(), params=self.trial.params, last=last)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "trial": self.trial.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialJob:
        return cls(TrialConfig.from_dict(d["trial"]))


def train_member(member: Member, reporter: Reporter, ctx: RunContext, lock: CacheLock, *,
                 final: bool = True) -> dict[str, Any]:
    """Train one member (see the module docstring) and return its row.

    ``final``: report the outcome as the Tune trial's last result (``done``); False inside a tuned
    ablation unit, which reports once, after choosing."""
    rows = ctx.rows()
    main = reporter.rank == 0
    previous = rows.finished(member.key)
    if previous is not None:
        # resubmitted or resumed: never train a finished trial again; tell the searcher its result
        if final:
            reporter.report(final_metrics(previous, skipped=True), None)
        return previous
    trial = member.trial
    attempt = rows.start(member.key, member.row_columns(), params=trial.params, workers=reporter.world_size,
                         write=main)
    faults.checkpoint("trial_start", rank=reporter.rank, trial_key=member.key)
    cfg = replace(trial.train, device=resolve_device(trial.device_request))
    split = make_split(load_data(trial.dataset, trial.data_dir), trial.protocol)
    # the autoencoder ignores labels, so Deep SVDD pretrains on (and shares the cache entry of) the split
    fit_split = split if member.labels else without_labels(split)
    state = reporter.restored()
    progress = _Progress(reporter, ctx, rows, attempt, state)
    ae_state, cache = _autoencoder(member, cfg, split, state, ctx, lock, reporter, progress)
    progress.cache_info.update(cache)
    result = finetune(fit_split, cfg, ae_state=ae_state, on_epoch=progress.on_epoch, prior_history=progress.ae_history,
                      resume=state if state is not None and state.phase == "sad" else None)
    faults.checkpoint("trial_end", rank=reporter.rank, trial_key=member.key)
    row = outcome(result, split, cfg, cache)
    if main:
        row["checkpoint"] = save_model(result, ctx, member, row)
        rows.epochs(attempt, progress.history())
        row = rows.finish(attempt, row)
    else:
        row = {**attempt.base, **row, "status": "finished"}
    if final:
        reporter.report(final_metrics(row, skipped=False), None)
    return row


class _Progress:
    """A training's epochs: to the reporter (throttled), with a checkpoint every
    ``checkpoint_interval_s`` and at each phase's end, when the epoch history is also written."""

    def __init__(self, reporter: Reporter, ctx: RunContext, rows: RowWriter, attempt: Attempt,
                 state: TrainState | None) -> None:
        self.reporter, self.ctx, self.rows, self.attempt, self.state = reporter, ctx, rows, attempt, state
        self.epochs: list[EpochReport] = []
        self.ae_history: list[EpochReport] = []
        self.cache_info: dict[str, Any] = {}
        self.last_checkpoint = time.monotonic()
        self.last_report = 0.0

    def on_epoch(self, report: EpochReport, state_fn: Any) -> None:
        reporter, key = self.reporter, self.attempt.key
        faults.checkpoint(f"{report.phase}_epoch", epoch=report.epoch, rank=reporter.rank, trial_key=key)
        self.epochs.append(report)
        due = time.monotonic() - self.last_checkpoint >= self.ctx.checkpoint_interval_s or report.epoch == report.epochs
        snapshot = state_fn() if due else None
        if due:
            self.last_checkpoint = time.monotonic()
        if snapshot is not None and report.phase == "sad":
            snapshot.meta["cache_info"] = dict(self.cache_info)  # a resumed trial still knows it hit the cache
        now = time.monotonic()
        if (snapshot is None and reporter.world_size == 1 and report.epoch != report.epochs
                and now - self.last_report < self.ctx.report_interval_s):
            return
        self.last_report = now
        reporter.report(epoch_metrics(report, {"trial_key": key, "attempt": self.attempt.number}), snapshot)
        if reporter.rank == 0 and snapshot is not None:  # with the checkpoint: the file is rewritten whole
            self.rows.epochs(self.attempt, self.history())

    def history(self) -> list[EpochReport]:
        """Epochs from before a restart (kept in the checkpoint) followed by this attempt's."""
        if self.state is None:
            return self.epochs
        from deepsad.checkpoint import from_json_value

        old = [EpochReport(**h) for h in from_json_value(self.state.meta.get("history", []))]
        seen = {(r.phase, r.epoch) for r in self.epochs}
        return [r for r in old if (r.phase, r.epoch) not in seen] + self.epochs


def epoch_metrics(report: EpochReport, extra: dict[str, Any]) -> dict[str, Any]:
    """One epoch as a Tune result: the scheduler's time attribute (``epoch``) and the objective appear
    only in Deep SAD epochs."""
    phase = report.phase
    metrics: dict[str, Any] = {"phase": phase, f"{phase}_epoch": report.epoch, f"{phase}_loss": report.loss,
                               "samples_per_s": report.samples_per_s, **extra}
    if phase == "sad":
        metrics.update(epoch=report.epoch, val_auroc=report.val_auroc, val_ap=report.val_ap,
                       val_auroc_oracle=report.val_auroc_oracle, val_ap_oracle=report.val_ap_oracle, loss=report.loss)
    return metrics


def _autoencoder(member: Member, cfg: TrainConfig, split: SemiSupervisedSplit, state: TrainState | None,
                 ctx: RunContext, lock: CacheLock, reporter: Reporter,
                 progress: _Progress) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The pretrained AE of this training and its row's cache columns (the state is None without
    pretraining, or when resuming past it); its pretraining epochs go to ``progress.ae_history``."""
    trial = member.trial
    if cfg.ae is None or trial.ae_key is None:
        return None, no_cache_columns()
    key = ae_cache_key(trial.ae_key, split.fingerprint)
    if state is not None and state.phase == "sad":
        return None, {**no_cache_columns(key), **state.meta.get("cache_info", {})}  # past pretraining already
    owner = lock_owner(ctx)

    def train(_: list[int]) -> list[Pretrained]:
        def renewing(report: EpochReport, state_fn: Any) -> None:
            lock.renew(key, owner)
            progress.on_epoch(report, state_fn)

        ae = pretrain(split, cfg, on_epoch=renewing, resume=state)
        progress.ae_history = list(ae.history)
        return [Pretrained(ae.state_dict, list(ae.history), sum(h.seconds for h in ae.history))]

    got = cached_autoencoders([key], train, ctx, lock, reporter, owner_of=lambda _: {"trial_key": member.key})
    return got.states[0], got.columns[0]


def outcome(result: FitResult, split: SemiSupervisedSplit, cfg: TrainConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """The outcome columns of a finished training's row."""
    return {
        "fingerprint": split.fingerprint, "val_auroc": result.val_auroc, "val_ap": result.val_ap,
        "val_auroc_oracle": result.val_auroc_oracle, "val_ap_oracle": result.val_ap_oracle,
        "test_auroc": result.test_auroc, "test_ap": result.test_ap,
        "epochs_done": sum(1 for h in result.history if h.phase == "sad"),
        "sad_seconds": result.sad_seconds, "device": cfg.device, **cache,
    }


def save_model(result: FitResult, ctx: RunContext, member: Member, row: dict[str, Any]) -> str:
    """Save the trained model (safetensors + JSON) under the sweep's checkpoints; return its URI."""
    checkpoint = checkpoint_location(Storage.from_uri(ctx.storage_uri), member.key)
    with tempfile.TemporaryDirectory() as tmp:
        result.model.meta.update(sweep=ctx.sweep, trial_key=member.key, params=member.trial.params,
                                 metrics={k: row.get(k) for k in (*VALIDATION_METRICS, "test_auroc", "test_ap")},
                                 **({"bundle": row["bundle"]} if row.get("bundle") else {}))
        result.model.save(Path(tmp) / "model")
        checkpoint.upload_dir(Path(tmp) / "model")
    return checkpoint.uri
