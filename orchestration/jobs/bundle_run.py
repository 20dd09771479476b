"""One Tune trial = one bundle: K trials trained at once by :func:`deepsad.bundle.train_bundle`.

What :func:`orchestration.jobs.trainable.execute` does for one trial, for a bundle: finished members are
skipped (a resubmitted or resumed sweep never trains them again); the others get a ``running`` row;
their autoencoders come from the sweep's cache, and the missing ones are pretrained together
(:func:`deepsad.bundle.pretrain_bundle`, one per distinct split and seed) under the cache lock and
put in the cache; then the members fine-tune together. Every epoch goes to Tune (throttled), with a
resumable :class:`deepsad.bundle.BundleState` at checkpoints, so a retried bundle continues from its
last checkpoint. At the end each member gets its own row (``bundle``: the bundle's id, ``bundle_size``),
epochs and model checkpoint; a member that diverged fails alone, with its reason.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepsad.bundle import BundleProgress, BundleState, pretrain_bundle, train_bundle
from deepsad.checkpoint import to_json_value
from deepsad.data.splits import make_split
from deepsad.training import EpochReport, TrainConfig
from orchestration.jobs import faults
from orchestration.jobs.trainable import (
    CacheLock,
    Reporter,
    RunContext,
    _dataset,
    _epoch_row,
    _final_metrics,
    _outcome,
    resolve_device,
    without_labels,
)
from orchestration.plan.bundles import keys_id
from orchestration.plan.trial import TrialConfig
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.results import ResultStore, code_version
from orchestration.store.storage import Storage


@dataclass(frozen=True)
class Member:
    """One training of a bundle: its trial, the row key, extra row columns (an ablation unit's) and
    whether the training part keeps its labels (False: Deep SVDD)."""

    trial: TrialConfig
    key: str
    columns: dict[str, Any] = field(default_factory=dict)
    labels: bool = True


def run_units(units: list[Any], reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
    """A bundle of ablation units (policy fixed, Deep SAD or Deep SVDD): rows keyed by unit."""
    return run_bundle([Member(u.trial, u.key, u.ablation_columns(), u.method == "deepsad") for u in units],
                      reporter, ctx, lock)


def run_bundle(members: list[Member] | list[TrialConfig], reporter: Reporter, ctx: RunContext,
               lock: CacheLock) -> list[dict[str, Any]]:
    """Train the bundle (see the module docstring; trial configurations or :class:`Member` s) and
    return the members' rows."""
    ms = [m if isinstance(m, Member) else Member(m, m.key) for m in members]
    storage = Storage.from_uri(ctx.storage_uri)
    store = ResultStore(storage)
    bid = keys_id([m.key for m in ms])
    previous = {m.key: store.row(m.key) for m in ms}
    done = {k: r for k, r in previous.items() if r is not None and r.get("status") == "finished"}
    pending = [m for m in ms if m.key not in done]
    if not pending:
        reporter.report(_bundle_final(list(done.values()), bid, len(ms), skipped=True), None)
        return list(done.values())
    t0 = time.perf_counter()
    todo = [m.trial for m in pending]
    device = resolve_device(todo[0].device_request)
    cfgs = [replace(t.train, device=device) for t in todo]
    splits = [make_split(_dataset(t.dataset, t.data_dir), t.protocol) for t in todo]
    # Deep SVDD members fine-tune without labels; every member pretrains (and caches) on its split
    fit_splits = [s if m.labels else without_labels(s) for m, s in zip(pending, splits, strict=True)]
    keys = [m.key for m in pending]
    base: dict[str, dict[str, Any]] = {}
    for m in pending:
        prev = previous[m.key] or {}
        base[m.key] = {
            "sweep": ctx.sweep, "trial_key": m.key, "trial_id": ctx.trial_id,
            "attempt": int(prev["attempt"]) + 1 if prev.get("attempt") else 1, "code_version": code_version(),
            "workers": 1, "bundle": bid, "bundle_size": len(ms), **m.trial.columns(), **m.columns,
            "params_json": json.dumps(m.trial.params, sort_keys=True), "started_at": datetime.now(UTC),
        }
        store.write_trial({**base[m.key], "status": "running"})
    faults.checkpoint("trial_start", trial_key=bid)

    state = reporter.restored()
    if not (isinstance(state, BundleState) and state.meta.get("configs") == [c.to_dict() for c in cfgs]):
        state = None  # another bundle's (its members changed): start over
    cache_cols: list[dict[str, Any]] = (
        [dict(c) for c in state.meta.get("cache_info", [])] if state is not None else [])
    ae_hist: list[list[EpochReport]] = [[] for _ in todo]
    ae_fail: list[str | None] = [None] * len(todo)
    ae_states: list[dict[str, Any] | None] | None = None
    if state is None:
        ae_states, cache_cols, ae_hist, ae_fail = _autoencoders(todo, keys, cfgs, splits, ctx, storage, lock, bid)
    else:
        from deepsad.checkpoint import from_json_value

        ae_hist = [[EpochReport(**h) for h in hist] for hist in from_json_value(state.meta.get("ae_histories", []))]
        ae_fail = list(state.meta.get("ae_failures", ae_fail))
    if not cache_cols:
        cache_cols = [{"ae_key": None, "cache_hit": False, "ae_seconds": 0.0, "ae_seconds_saved": 0.0}
                      for _ in todo]
    last_ckpt, last_report = [time.monotonic()], [0.0]

    def on_epoch(p: BundleProgress, state_fn: Any) -> None:
        for key, r in zip(keys, p.reports, strict=True):
            if r is not None:
                faults.checkpoint(f"{p.phase}_epoch", epoch=p.epoch, trial_key=key)
        due = time.monotonic() - last_ckpt[0] >= ctx.checkpoint_interval_s or p.epoch == p.epochs
        now = time.monotonic()
        if not due and now - last_report[0] < ctx.report_interval_s:
            return
        last_report[0] = now
        snapshot = None
        if due:
            last_ckpt[0] = now
            snapshot = state_fn()
            snapshot.meta.update(cache_info=cache_cols, ae_failures=ae_fail, ae_histories=to_json_value(
                [[h.to_dict() for h in hist] for hist in ae_hist]))
            _write_epochs(store, keys, base, ae_hist, snapshot)
        reporter.report(_progress_metrics(p, bid), snapshot)

    results = train_bundle(fit_splits, cfgs, on_epoch=on_epoch, ae_states=ae_states, resume=state)
    rows = []
    for m, cfg, split, res, hist0, cache, ae_failure in zip(pending, cfgs, splits, results, ae_hist, cache_cols,
                                                           ae_fail, strict=True):
        t = m.trial
        history = hist0 + res.history  # the bundle fine-tunes only: its history holds no AE epochs
        store.write_epochs(m.key, [_epoch_row(m.key, base[m.key]["attempt"], h) for h in history])
        failure = ae_failure or res.failure  # a member whose AE diverged trained from nothing: it fails
        if res.fit is None or ae_failure:
            row = {**base[m.key], **cache, "status": "failed", "error": f"bundle member: {failure}",
                   "device": device, "finished_at": datetime.now(UTC)}
            store.write_trial(row)
            rows.append(row)
            continue
        faults.checkpoint("trial_end", trial_key=m.key)
        row = {**base[m.key], **_outcome(res.fit, split, cfg, cache), "status": "finished",
               "total_seconds": time.perf_counter() - t0, "finished_at": datetime.now(UTC)}
        row["checkpoint"] = _save_model(res.fit, storage, ctx, m.key, t, row)
        store.write_trial(row)
        rows.append(row)
    reporter.report(_bundle_final(rows + list(done.values()), bid, len(ms), skipped=False), None)
    return rows + list(done.values())


def _autoencoders(
    todo: list[TrialConfig], row_keys: list[str], cfgs: list[TrainConfig], splits: list[Any], ctx: RunContext,
    storage: Storage, lock: CacheLock, bid: str,
) -> tuple[list[dict[str, Any] | None] | None, list[dict[str, Any]], list[list[EpochReport]], list[str | None]]:
    """The members' pretrained AEs: cache hits, and the misses pretrained together under the cache
    lock. Returns (states or None without pretraining, cache columns, AE history and AE failure per
    member)."""
    none = {"ae_key": None, "cache_hit": False, "ae_seconds": 0.0, "ae_seconds_saved": 0.0}
    fails: list[str | None] = [None] * len(todo)
    if cfgs[0].ae is None:
        return None, [dict(none) for _ in todo], [[] for _ in todo], fails
    keys = [ae_cache_key(t.ae_key, s.fingerprint) if t.ae_key else None for t, s in zip(todo, splits, strict=True)]
    cache, owner = AECache(storage), f"{ctx.trial_id}:{os.getpid()}"
    states: list[dict[str, Any] | None] = [None] * len(todo)
    cols = [{**none, "ae_key": k} for k in keys]
    hist: list[list[EpochReport]] = [[] for _ in todo]
    held: set[str] = set()
    deadline = time.monotonic() + ctx.cache_wait_s
    try:
        while True:
            missing = []
            for i, key in enumerate(keys):
                if states[i] is not None or key is None:
                    continue
                hit = cache.get(key)
                if hit is not None:
                    states[i] = hit[0]
                    cols[i].update(cache_hit=True, ae_seconds_saved=float(hit[1].get("ae_seconds", 0.0)))
                else:
                    missing.append(i)
            cached_meanwhile = False
            for key in dict.fromkeys(k for i in missing if (k := keys[i]) is not None):
                if key not in held and lock.acquire(key, owner):
                    held.add(key)
                    # the previous holder may have cached it between our miss and our acquire
                    if cache.exists(key):
                        lock.release(key, owner)
                        held.discard(key)
                        cached_meanwhile = True
            if cached_meanwhile:
                continue  # take those entries (next round) before pretraining the rest
            mine = [i for i in missing if keys[i] in held]
            if mine:
                t0 = time.perf_counter()
                out = pretrain_bundle([splits[i] for i in mine], [cfgs[i] for i in mine])
                seconds = time.perf_counter() - t0
                for i, res in zip(mine, out, strict=True):
                    hist[i] = list(res.history)
                    if res.ae is None:
                        fails[i] = f"autoencoder: {res.failure}"
                        continue
                    states[i] = res.ae.state_dict
                    cols[i]["ae_seconds"] = seconds / len(mine)
                    key = keys[i]
                    assert key is not None
                    if key in held:
                        cache.put(key, res.ae.state_dict, {"ae_seconds": seconds / len(mine),
                                                           "epochs": len(res.history), "trial_key": row_keys[i],
                                                           "bundle": bid, "created_at": datetime.now(UTC).isoformat()})
                        lock.release(key, owner)
                        held.discard(key)
            if all(s is not None or k is None or fails[i] for i, (s, k) in enumerate(zip(states, keys, strict=True))):
                return states, cols, hist, fails
            if time.monotonic() > deadline:
                raise TimeoutError(f"bundle {bid}: waited {ctx.cache_wait_s:.0f} s for other trials to pretrain")
            time.sleep(0.5)
    finally:
        for key in held:
            lock.release(key, owner)


def _write_epochs(store: ResultStore, keys: list[str], base: dict[str, dict[str, Any]],
                  ae_hist: list[list[EpochReport]], snapshot: BundleState) -> None:
    from deepsad.checkpoint import from_json_value

    for key, hist0, hist in zip(keys, ae_hist, from_json_value(snapshot.meta["histories"]), strict=True):
        reports = hist0 + [EpochReport(**h) for h in hist]
        store.write_epochs(key, [_epoch_row(key, base[key]["attempt"], r) for r in reports])


def _save_model(fit: Any, storage: Storage, ctx: RunContext, key: str, t: TrialConfig, row: dict[str, Any]) -> str:
    checkpoint = storage.child("checkpoints", key)
    with tempfile.TemporaryDirectory() as tmp:
        fit.model.meta.update(sweep=ctx.sweep, trial_key=key, params=t.params, bundle=row["bundle"],
                              metrics={k: row[k] for k in ("val_auroc", "val_ap", "test_auroc", "test_ap")})
        fit.model.save(Path(tmp) / "model")
        checkpoint.upload_dir(Path(tmp) / "model")
    return checkpoint.uri


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
    out: dict[str, Any] = _final_metrics(best, skipped=skipped) if best else {"done": True, "skipped": skipped}
    out.update(trial_key=bid, bundle=bid, members=size, finished=len(finished), failed=len(rows) - len(finished))
    return out
