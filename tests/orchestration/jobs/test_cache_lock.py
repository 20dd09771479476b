"""The AE-cache lock holds for as long as its holder lives, and whoever takes it looks into the cache
again: two trials that provably overlap train one autoencoder even when pretraining outlasts the lease.

The overlap tests run two real trials (``execute``: one trial each, or one bundle each) on threads of
this process, sharing a sweep directory and one :class:`LockTable` (as the Ray actor would, one call at
a time). The lease is shortened to :data:`LEASE` seconds and the first pretraining is held until the
other trial has been refused the lock more than two leases after it was taken — so without renewals
the lease would have run out under it (the old bundle path never renewed) and the other trial would
have trained the same autoencoder. Every step is recorded with its time; nothing sleeps and hopes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepsad.errors import ConfigError
from orchestration.jobs import bundle, trial
from orchestration.jobs.base import RunContext
from orchestration.jobs.cache_lock import LEASE_ENV, HeartbeatLock, LockTable, lease_seconds
from orchestration.jobs.kinds import execute
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.jobs.test_bundle import trials as bundle_trials
from tests.orchestration.jobs.test_trial import SWEEP, FakeReporter

LEASE = 1.0
DEADLINE_S = 120.0


class Timeline:
    """(monotonic time, who, what) events from every thread; waits on a condition with a deadline."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._cv = threading.Condition()

    def add(self, who: str, what: str, t: float | None = None) -> float:
        with self._cv:
            t = time.monotonic() if t is None else t
            self.events.append((t, who, what))
            self._cv.notify_all()
            return t

    def wait_for(self, condition: Callable[[list[tuple[float, str, str]]], bool], what: str) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: condition(self.events), timeout=DEADLINE_S):
                raise AssertionError(f"timed out after {DEADLINE_S:.0f} s waiting for {what}: {self.events}")

    def of(self, who: str, what: str) -> list[float]:
        with self._cv:
            return [t for t, w, x in self.events if w == who and x == what]


class RecordedLock:
    """A trial's lock client (a :class:`HeartbeatLock` over the shared table) that records each call."""

    def __init__(self, who: str, call: Any, timeline: Timeline) -> None:
        self.who, self.inner, self.timeline = who, HeartbeatLock(call, LEASE), timeline

    def acquire(self, key: str, owner: str) -> bool:
        asked = time.monotonic()  # the answer came after this instant
        ok = self.inner.acquire(key, owner)
        self.timeline.add(self.who, "acquired" if ok else "refused", asked)
        return ok

    def release(self, key: str, owner: str) -> None:
        self.inner.release(key, owner)
        self.timeline.add(self.who, "released")  # the release happened before this instant

    def renew(self, key: str, owner: str) -> None:
        self.inner.renew(key, owner)


def _shared_table() -> Any:
    table, guard = LockTable(ttl_s=LEASE), threading.Lock()

    def call(method: str, key: str, owner: str) -> Any:
        with guard:  # a Ray actor runs one call at a time
            return getattr(table, method)(key, owner)

    return call


def _hold_first_pretraining(monkeypatch: pytest.MonkeyPatch, timeline: Timeline, module: Any, name: str) -> None:
    """The first pretraining (whoever runs it) waits until the other trial has been refused the lock
    more than two leases after the lock was taken, then trains; every pretraining is recorded."""
    real = getattr(module, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        me = threading.current_thread().name
        other = "B" if me == "A" else "A"
        first = not any(what == "pretrain_start" for _, _, what in timeline.events)
        timeline.add(me, "pretrain_start")
        if first:
            (taken,) = timeline.of(me, "acquired")
            # (or until the other trial got the lock: the lease ran out under us — the test then fails)
            timeline.wait_for(lambda ev: any(w == other and ((x == "refused" and t > taken + 2 * LEASE) or x == "acquired")
                                             for t, w, x in ev), "the other trial to be refused after two leases")
        out = real(*args, **kwargs)
        timeline.add(me, "pretrain_end")
        return out

    monkeypatch.setattr(module, name, held)


def _run_two(tmp_path: Path, jobs: dict[str, list[Any]], timeline: Timeline) -> dict[str, list[dict[str, Any]]]:
    call = _shared_table()
    out: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def run(who: str) -> None:
        try:
            timeline.add(who, "start")
            ctx = RunContext(sweep=SWEEP, storage_uri=str(tmp_path / SWEEP), trial_id=who,
                             checkpoint_interval_s=0.0, cache_wait_s=DEADLINE_S)
            out[who] = execute(jobs[who], FakeReporter(tmp_path / who), ctx,
                               lock=RecordedLock(who, call, timeline))
            timeline.add(who, "end")
        except BaseException as e:  # surfaced below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(who,), name=who) for who in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S * 2)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return out


def _assert_one_trained_while_the_other_waited(timeline: Timeline, rows: dict[str, list[dict[str, Any]]]) -> None:
    starts = [(t, w) for t, w, x in timeline.events if x == "pretrain_start"]
    assert len(starts) == 1, f"the autoencoder was trained {len(starts)} times: {timeline.events}"
    trainer = starts[0][1]
    waiter = "B" if trainer == "A" else "A"
    (taken,) = timeline.of(trainer, "acquired")
    (freed,) = timeline.of(trainer, "released")
    refused = timeline.of(waiter, "refused")
    # the two trials overlapped: the waiter asked for the lock (and was refused) more than two leases
    # after the trainer took it and before it released it — an unrenewed lease would have run out
    assert refused and all(t < freed for t in refused)
    assert taken + 2 * LEASE < max(refused) < freed
    # (the waiter may still take the lock after the release, find the entry and give it back at once)
    assert all(not r["cache_hit"] and r["ae_seconds"] > 0 for r in rows[trainer])
    assert all(r["cache_hit"] and r["ae_seconds"] == 0.0 for r in rows[waiter])
    assert {r["ae_key"] for rs in rows.values() for r in rs} == {rows[trainer][0]["ae_key"]}


def test_two_overlapping_trials_train_one_autoencoder_though_pretraining_outlasts_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline = Timeline()
    _hold_first_pretraining(monkeypatch, timeline, trial, "pretrain")
    a, b = bundle_trials([0.5, 2.0])  # eta does not change the autoencoder: one AE key
    assert a.ae_key == b.ae_key
    rows = _run_two(tmp_path, {"A": [a], "B": [b]}, timeline)
    _assert_one_trained_while_the_other_waited(timeline, rows)


def test_two_overlapping_bundles_train_one_autoencoder_though_pretraining_outlasts_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle path pretrains without epoch callbacks: only the heartbeat keeps its lease."""
    timeline = Timeline()
    _hold_first_pretraining(monkeypatch, timeline, bundle, "pretrain_bundle")
    ts = bundle_trials([0.5, 1.0, 2.0, 4.0])
    rows = _run_two(tmp_path, {"A": ts[:2], "B": ts[2:]}, timeline)
    _assert_one_trained_while_the_other_waited(timeline, rows)
    stored = ResultStore(Storage.from_uri(str(tmp_path / SWEEP))).trials().to_pylist()
    assert len(stored) == 4 and {r["status"] for r in stored} == {"finished"}


class _Cached:
    """A lock whose holder cached the AE just before it released: our acquire succeeds afterwards."""

    def __init__(self, put: Callable[[str], None]) -> None:
        self.put = put
        self.calls: list[str] = []

    def acquire(self, key: str, owner: str) -> bool:
        self.calls.append("acquire")
        self.put(key)  # the entry appears between our miss and our acquire
        return True

    def release(self, key: str, owner: str) -> None:
        self.calls.append("release")

    def renew(self, key: str, owner: str) -> None:
        self.calls.append("renew")


@pytest.mark.parametrize("bundle", [False, True])
def test_an_entry_cached_while_the_lock_was_taken_is_used_not_retrained(tmp_path: Path, bundle: bool) -> None:
    from deepsad.networks import build_autoencoder
    from orchestration.store.cache import AECache

    ts = bundle_trials([0.5, 2.0]) if bundle else bundle_trials([0.5])
    cache = AECache(Storage.from_uri(str(tmp_path / SWEEP)))
    state = build_autoencoder(ts[0].train.net).state_dict()
    lock = _Cached(lambda key: cache.put(key, state, {"ae_seconds": 7.0, "epochs": 4, "trial_key": "other"}))
    ctx = RunContext(sweep=SWEEP, storage_uri=str(tmp_path / SWEEP), checkpoint_interval_s=0.0)
    rows = execute(ts, FakeReporter(tmp_path / "r"), ctx, lock=lock)
    assert lock.calls == ["acquire", "release"]
    assert all(r["cache_hit"] and r["ae_seconds_saved"] == 7.0 for r in rows)


# --------------------------------------------------------------------------- the lock itself


def test_a_lease_runs_out_without_renewals_and_holds_with_the_heartbeat() -> None:
    call = _shared_table()
    table_lease = 0.2
    quiet = LockTable(ttl_s=table_lease)
    assert quiet.acquire("k", "a") and not quiet.acquire("k", "b")
    expired = time.monotonic() + table_lease
    while time.monotonic() <= expired:  # a lease is a span of time: wait it out, with a deadline
        time.sleep(0.01)
    assert quiet.acquire("k", "b"), "a lease nobody renews is free again"
    assert not quiet.renew("k", "a"), "the old holder learns it lost the lease"

    a, b = HeartbeatLock(call, LEASE), HeartbeatLock(call, LEASE)
    assert a.acquire("k", "a") and a.held() == [("k", "a")]
    taken = time.monotonic()
    while time.monotonic() < taken + 3 * LEASE:
        assert not b.acquire("k", "b"), "the heartbeat keeps the lease"
        time.sleep(0.05)
    a.release("k", "a")
    assert a.held() == [] and b.acquire("k", "b")
    b.release("k", "b")


def test_a_holder_whose_heartbeat_stops_loses_the_lease_after_it_runs_out() -> None:
    """A holder process that dies stops renewing: the lock is free one lease later."""
    call = _shared_table()
    a, b = HeartbeatLock(call, LEASE), HeartbeatLock(call, LEASE)
    assert a.acquire("k", "a")
    a._beats.pop(("k", "a")).set()  # the holder "dies": its heartbeat ends without a release
    stopped = time.monotonic()
    deadline = stopped + 10 * LEASE
    while not b.acquire("k", "b"):
        assert time.monotonic() < deadline, "the lease of a dead holder never ran out"
        time.sleep(0.05)
    assert time.monotonic() - stopped >= LEASE * 0.7  # not before the lease could have run out


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_lease_setting_is_one_config_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(LEASE_ENV, raw)
    with pytest.raises(ConfigError, match=rf"^{LEASE_ENV}: must be a number of seconds > 0"):
        lease_seconds()


def test_the_lease_defaults_to_five_minutes_and_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds() == 300.0
    monkeypatch.setenv(LEASE_ENV, "2.5")
    assert lease_seconds() == 2.5


def test_a_restarted_table_gives_the_living_holders_their_locks_back() -> None:
    """The driver's lock table restarts empty when its node dies (Ray restarts the actor): a holder that
    lived renews its lock and so holds it again; another owner is then refused, as before the restart."""
    restarted = LockTable(ttl_s=60.0)
    assert restarted.renew("ae", "trial-a")
    assert not restarted.acquire("ae", "trial-b")
    assert not restarted.renew("ae", "trial-b")
    restarted.release("ae", "trial-a")
    assert restarted.acquire("ae", "trial-b")
