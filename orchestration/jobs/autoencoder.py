"""The pretrained autoencoders of a job's 1…K trainings: from the sweep's AE cache, or trained once
under the cache lock — one routine for a single trial and for a bundle.

Each training with pretraining has a cache key (its AE key × its split's fingerprint). A round looks
every missing key up in the cache; the keys still missing are locked (one owner per key across the
sweep, :mod:`orchestration.jobs.cache_lock`), looked up once more (the previous holder may have
cached it between our miss and our acquire), and the ones this job holds are pretrained together by
the caller's ``train`` and put in the cache. Keys another trial holds are waited for, round after
round, up to ``RunContext.cache_wait_s``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deepsad.training import EpochReport
from orchestration.jobs.base import CacheLock, Reporter, RunContext, decide
from orchestration.store.cache import AECache


def lock_owner(ctx: RunContext) -> str:
    """Who holds a cache lock: this trial's process."""
    return f"{ctx.trial_id}:{os.getpid()}"


def no_cache_columns(ae_key: str | None = None) -> dict[str, Any]:
    """The AE-cache columns of a row before (or without) any cache use."""
    return {"ae_key": ae_key, "cache_hit": False, "ae_seconds": 0.0, "ae_seconds_saved": 0.0}


@dataclass
class Pretrained:
    """What :func:`train` returns for one training it pretrained: the AE's state (None: it failed, see
    ``failure``), its epochs, and the seconds it took."""

    state: dict[str, Any] | None
    history: list[EpochReport] = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None


@dataclass
class Autoencoders:
    """Per training: the AE state (None without pretraining), the row's cache columns, the
    pretraining epochs of this process, and why its AE failed (None if it did not)."""

    states: list[dict[str, Any] | None]
    columns: list[dict[str, Any]]
    histories: list[list[EpochReport]]
    failures: list[str | None]


def cached_autoencoders(
    keys: Sequence[str | None], train: Callable[[list[int]], list[Pretrained]], ctx: RunContext, lock: CacheLock,
    reporter: Reporter, *, owner_of: Callable[[int], dict[str, Any]],
) -> Autoencoders:
    """The AEs of the trainings with cache ``keys`` (None: no pretraining): cache hits, and the misses
    this process holds the lock of, pretrained by ``train(indices)`` and cached.

    ``owner_of(i)``: what the cache entry records of the training that created it (its row key, its
    bundle). Only rank 0 of a data-parallel group writes the cache and releases locks; every rank
    takes the same decisions (:func:`orchestration.jobs.base.decide`).

    Raises:
        TimeoutError: other trials held a needed key for longer than ``ctx.cache_wait_s``.
    """
    n = len(keys)
    out = Autoencoders([None] * n, [no_cache_columns(k) for k in keys], [[] for _ in keys], [None] * n)
    cache, owner = AECache(ctx.storage), lock_owner(ctx)
    main = reporter.rank == 0
    held: set[str] = set()
    deadline = time.monotonic() + ctx.cache_wait_s
    try:
        while True:
            missing = _take_hits(keys, out, cache)
            if _lock_missing(keys, missing, held, cache, lock, owner, reporter):
                continue  # some were cached meanwhile: take those (next round) before pretraining the rest
            mine = [i for i in missing if keys[i] in held]
            if mine:
                for i, res in zip(mine, train(mine), strict=True):
                    out.histories[i] = list(res.history)
                    if res.state is None:
                        out.failures[i] = f"autoencoder: {res.failure}"
                        continue
                    out.states[i] = res.state
                    out.columns[i]["ae_seconds"] = res.seconds
                    key = keys[i]
                    if key is not None and key in held:
                        if main:
                            cache.put(key, res.state, {"ae_seconds": res.seconds, "epochs": len(res.history),
                                                       **owner_of(i), "created_at": datetime.now(UTC).isoformat()})
                            lock.release(key, owner)
                        held.discard(key)
            if all(s is not None or k is None or f for s, k, f in zip(out.states, keys, out.failures, strict=True)):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {ctx.cache_wait_s:.0f} s for another trial to pretrain AE "
                                   f"{', '.join(sorted({k for k, s in zip(keys, out.states, strict=True) if k and s is None}))}")
            time.sleep(0.5)
    finally:
        if main:
            for key in held:
                lock.release(key, owner)


def _take_hits(keys: Sequence[str | None], out: Autoencoders, cache: AECache) -> list[int]:
    """Fill in the cache hits; return the indices still missing."""
    missing = []
    for i, key in enumerate(keys):
        if out.states[i] is not None or key is None or out.failures[i]:
            continue
        hit = cache.get(key)
        if hit is None:
            missing.append(i)
            continue
        out.states[i] = hit[0]
        out.columns[i].update(cache_hit=True, ae_seconds_saved=float(hit[1].get("ae_seconds", 0.0)))
    return missing


def _lock_missing(keys: Sequence[str | None], missing: list[int], held: set[str], cache: AECache, lock: CacheLock,
                  owner: str, reporter: Reporter) -> bool:
    """Take the lock of every missing key not held yet; True if one turned out cached meanwhile."""
    cached_meanwhile = False
    for key in dict.fromkeys(k for i in missing if (k := keys[i]) is not None):
        if key in held or not decide(reporter, lambda key=key: lock.acquire(key, owner)):  # type: ignore[misc]
            continue
        held.add(key)
        if decide(reporter, lambda key=key: cache.exists(key)):  # type: ignore[misc]
            if reporter.rank == 0:
                lock.release(key, owner)
            held.discard(key)
            cached_meanwhile = True
    return cached_meanwhile
