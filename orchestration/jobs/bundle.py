"""A bundle as a job (:class:`BundleJob`), one Tune trial: K trials trained at once by :func:`deepsad.bundle.train_bundle`.

What :func:`orchestration.jobs.trial.train_member` does for one training, for a bundle: finished members are
skipped (a resubmitted or resumed sweep never trains them again); the others get a ``running`` row;
their autoencoders come from the sweep's cache, and the missing ones are pretrained together
(:func:`deepsad.bundle.pretrain_bundle`, one per distinct split and seed) under the cache lock and
put in the cache; then the members fine-tune together. Every epoch goes to Tune (throttled), with a
resumable :class:`deepsad.bundle.BundleState` at checkpoints, so a retried bundle continues from its
last checkpoint. At the end each member gets its own row (``bundle``: the bundle's id, ``bundle_size``),
epochs and model checkpoint; a member that diverged fails alone, with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from deepsad.bundle import BundleProgress, BundleState, pretrain_bundle, train_bundle
from deepsad.checkpoint import from_json_value, to_json_value
from deepsad.data.splits import make_split
from deepsad.training import EpochReport
from orchestration.jobs import faults
from orchestration.jobs.autoencoder import Autoencoders, Pretrained, cached_autoencoders, no_cache_columns
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
from orchestration.jobs.trial import outcome, save_model
from orchestration.plan.bundles import keys_id
from orchestration.store.cache import ae_cache_key
from orchestration.store.results import Attempt, RowWriter


@dataclass(frozen=True)
class BundleJob:
    """K trainings (a sweep's trials, or an ablation's fixed units) trained at once in one process."""

    members: tuple[Member, ...]
    kind: ClassVar[str] = "bundle"

    @property
    def id(self) -> str:
        return keys_id(self.keys)

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.members]

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        return run_bundle(list(self.members), reporter, ctx, lock)

    def record_end(self, rows: RowWriter, status: str, error: str | None, last: Mapping[str, Any]) -> None:
        for m in self.members:
            if (rows.row(m.key) or {}).get("status") in ("finished", "failed"):
                continue  # the bundle wrote its member's own outcome (a diverged member fails alone)
            rows.end(m.key, status, error, columns=m.row_columns(), params=m.trial.params)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BundleJob:
        return cls(tuple(Member.from_dict(m) for m in d["members"]))


def run_bundle(members: list[Member], reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
    """Train the bundle (see the module docstring) and return the members' rows."""
    rows = ctx.rows()
    bid = keys_id([m.key for m in members])
    done = {m.key: r for m in members if (r := rows.finished(m.key)) is not None}
    pending = [m for m in members if m.key not in done]
    if not pending:
        reporter.report(_bundle_final(list(done.values()), bid, len(members), skipped=True), None)
        return list(done.values())
    device = resolve_device(pending[0].trial.device_request)
    cfgs = [replace(m.trial.train, device=device) for m in pending]
    splits = [make_split(load_data(m.trial.dataset, m.trial.data_dir), m.trial.protocol) for m in pending]
    # Deep SVDD members fine-tune without labels; every member pretrains (and caches) on its split
    fit_splits = [s if m.labels else without_labels(s) for m, s in zip(pending, splits, strict=True)]
    attempts = [rows.start(m.key, {"bundle": bid, "bundle_size": len(members), **m.row_columns()},
                           params=m.trial.params) for m in pending]
    faults.checkpoint("trial_start", trial_key=bid)

    state = reporter.restored()
    if not (isinstance(state, BundleState) and state.meta.get("configs") == [c.to_dict() for c in cfgs]):
        state = None  # another bundle's (its members changed): start over
    if state is None:
        aes = _autoencoders(pending, cfgs, splits, ctx, lock, reporter, bid)
    else:
        aes = Autoencoders([None] * len(pending),
                           [dict(c) for c in state.meta.get("cache_info", [])] or [no_cache_columns() for _ in pending],
                           [[EpochReport(**h) for h in hist] for hist in from_json_value(state.meta.get("ae_histories", []))],
                           list(state.meta.get("ae_failures", [None] * len(pending))))  # fmt: skip
    progress = _Progress(reporter, ctx, rows, attempts, aes, bid)
    results = train_bundle(fit_splits, cfgs, on_epoch=progress.on_epoch,
                           ae_states=aes.states if cfgs[0].ae is not None and state is None else None, resume=state)
    out = []
    for m, cfg, split, res, attempt, i in zip(pending, cfgs, splits, results, attempts, range(len(pending)), strict=True):
        rows.epochs(attempt, aes.histories[i] + res.history)  # the bundle fine-tunes only: no AE epochs there
        failure = aes.failures[i] or res.failure  # a member whose AE diverged trained from nothing: it fails
        if res.fit is None or aes.failures[i]:
            out.append(rows.fail(attempt, f"bundle member: {failure}", {**aes.columns[i], "device": device}))
            continue
        faults.checkpoint("trial_end", trial_key=m.key)
        result = outcome(res.fit, split, cfg, aes.columns[i])
        result["checkpoint"] = save_model(res.fit, ctx, m, {**attempt.base, **result})
        out.append(rows.finish(attempt, result))
    reporter.report(_bundle_final(out + list(done.values()), bid, len(members), skipped=False), None)
    return out + list(done.values())


def _autoencoders(pending: list[Member], cfgs: list[Any], splits: list[Any], ctx: RunContext, lock: CacheLock,
                  reporter: Reporter, bid: str) -> Autoencoders:
    """The members' pretrained AEs: cache hits, and the misses pretrained together under the cache lock."""
    if cfgs[0].ae is None:
        return Autoencoders([None] * len(pending), [no_cache_columns() for _ in pending], [[] for _ in pending],
                            [None] * len(pending))
    keys = [ae_cache_key(m.trial.ae_key, s.fingerprint) if m.trial.ae_key else None
            for m, s in zip(pending, splits, strict=True)]

    def train(mine: list[int]) -> list[Pretrained]:
        t0 = time.perf_counter()
        out = pretrain_bundle([splits[i] for i in mine], [cfgs[i] for i in mine])
        seconds = (time.perf_counter() - t0) / len(mine)
        return [Pretrained(r.ae.state_dict if r.ae is not None else None, list(r.history), seconds, r.failure)
                for r in out]

    return cached_autoencoders(keys, train, ctx, lock, reporter,
                               owner_of=lambda i: {"trial_key": pending[i].key, "bundle": bid})


class _Progress:
    """The bundle's epochs to the reporter (throttled), with a resumable :class:`BundleState` and the
    members' epoch histories at every checkpoint."""

    def __init__(self, reporter: Reporter, ctx: RunContext, rows: RowWriter, attempts: list[Attempt],
                 aes: Autoencoders, bid: str) -> None:
        self.reporter, self.ctx, self.rows, self.attempts, self.aes, self.bid = reporter, ctx, rows, attempts, aes, bid
        self.last_checkpoint, self.last_report = time.monotonic(), 0.0

    def on_epoch(self, p: BundleProgress, state_fn: Any) -> None:
        for attempt, r in zip(self.attempts, p.reports, strict=True):
            if r is not None:
                faults.checkpoint(f"{p.phase}_epoch", epoch=p.epoch, trial_key=attempt.key)
        due = time.monotonic() - self.last_checkpoint >= self.ctx.checkpoint_interval_s or p.epoch == p.epochs
        now = time.monotonic()
        if not due and now - self.last_report < self.ctx.report_interval_s:
            return
        self.last_report = now
        snapshot = None
        if due:
            self.last_checkpoint = now
            snapshot = state_fn()
            snapshot.meta.update(cache_info=self.aes.columns, ae_failures=self.aes.failures,
                                 ae_histories=to_json_value([[h.to_dict() for h in hist] for hist in self.aes.histories]))
            for attempt, hist0, hist in zip(self.attempts, self.aes.histories, from_json_value(snapshot.meta["histories"]),
                                            strict=True):
                self.rows.epochs(attempt, hist0 + [EpochReport(**h) for h in hist])
        self.reporter.report(_progress_metrics(p, self.bid), snapshot)


def _progress_metrics(p: BundleProgress, bid: str) -> dict[str, Any]:
    """A bundle's epoch for Tune: the best live member's validation metric (what the progress shows)."""
    live = [r for r in p.reports if r is not None]
    vals = [r.val_auroc for r in live if r.val_auroc is not None]
    metrics: dict[str, Any] = {"phase": p.phase, f"{p.phase}_epoch": p.epoch, "trial_key": bid,
                               "members_alive": len(live), "members_failed": sum(f is not None for f in p.failures),
                               "samples_per_s": sum(r.samples_per_s for r in live)}
    if p.phase == "sad":
        metrics.update(epoch=p.epoch, val_auroc=max(vals) if vals else None)
    return metrics


def _bundle_final(rows: list[dict[str, Any]], bid: str, size: int, *, skipped: bool) -> dict[str, Any]:
    finished = [r for r in rows if r.get("status") == "finished"]
    best = max(finished, key=lambda r: r.get("val_auroc") or float("-inf"), default={})
    out: dict[str, Any] = final_metrics(best, skipped=skipped) if best else {"done": True, "skipped": skipped}
    out.update(trial_key=bid, bundle=bid, members=size, finished=len(finished), failed=len(rows) - len(finished))
    return out
