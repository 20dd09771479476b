"""The AE-cache lock: two concurrent trials that need the same autoencoder never both train it.

Two halves, both Ray-free (:mod:`orchestration.engine.tune_trial` puts the table in a named Ray actor and
reaches it through :class:`HeartbeatLock`):

* :class:`LockTable` — the state: key → (owner, lease expiry). A lease that is not renewed for
  ``lease_s`` seconds is free again, so a trial that died while pretraining blocks nobody for long.
* :class:`HeartbeatLock` — the holder's side: once a key is acquired, a daemon thread renews its
  lease every ``lease_s / 4`` until it is released. The lease therefore lasts exactly as long as the
  holder *process* lives, however long pretraining takes (a large bundle on a GPU: hours); when the
  process dies the renewals stop and the lease runs out ``lease_s`` later.

Whoever takes the lock must look into the cache again before training (the previous holder may have
stored the entry between our miss and our acquire) — see :func:`orchestration.jobs.autoencoder.cached_autoencoders`, the one routine for
a trial and a bundle.

The lease is :data:`DEFAULT_LEASE_S` unless ``DEEPSAD_AE_LOCK_LEASE_S`` says otherwise (read by the
driver when it creates the table; tests shorten it below a pretraining's length).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from deepsad.errors import ConfigError

log = logging.getLogger(__name__)

LEASE_ENV = "DEEPSAD_AE_LOCK_LEASE_S"
DEFAULT_LEASE_S = 300.0


def lease_seconds() -> float:
    """The lease of a new lock table: ``$DEEPSAD_AE_LOCK_LEASE_S`` or :data:`DEFAULT_LEASE_S`.

    Raises ConfigError if the variable is not a finite number > 0.
    """
    raw = os.environ.get(LEASE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{LEASE_ENV}: must be a number of seconds > 0 (got {raw!r})")
    return value


class LockTable:
    """key → (owner, lease expiry). Not thread-safe by itself: a Ray actor runs one call at a time
    (tests that share one table between threads serialise the calls themselves)."""

    def __init__(self, ttl_s: float = DEFAULT_LEASE_S) -> None:
        self.ttl_s = float(ttl_s)
        self.owners: dict[str, tuple[str, float]] = {}

    def lease_s(self) -> float:
        """The lease a holder must renew within."""
        return self.ttl_s

    def acquire(self, key: str, owner: str) -> bool:
        """Take ``key`` for ``owner`` (again, if it holds it) unless someone else's lease is live."""
        now = time.monotonic()
        held = self.owners.get(key)
        if held is None or held[1] < now or held[0] == owner:
            self.owners[key] = (owner, now + self.ttl_s)
            return True
        return False

    def renew(self, key: str, owner: str) -> bool:
        """Extend ``owner``'s lease of ``key``; False if another owner holds it now (``owner``'s lease ran
        out and the key was taken). A key nobody holds is taken again: a table restarted after its node
        died starts empty, and the holders still alive keep their locks by renewing them."""
        held = self.owners.get(key)
        if held is not None and held[0] != owner and held[1] >= time.monotonic():
            return False
        self.owners[key] = (owner, time.monotonic() + self.ttl_s)
        return True

    def release(self, key: str, owner: str) -> None:
        """Free ``key`` if ``owner`` holds it (a release of a lost lease changes nothing)."""
        if key in self.owners and self.owners[key][0] == owner:
            del self.owners[key]


#: How a client reaches its table: ``call(method_name, key, owner)`` → the method's return value.
Call = Callable[[str, str, str], Any]


class HeartbeatLock:
    """A :class:`~orchestration.jobs.base.CacheLock` over a :class:`LockTable` reached through ``call``,
    whose held leases are renewed by a heartbeat thread until released (see the module docstring).

    ``lease_s``: the table's lease; renewals come every quarter of it.
    """

    def __init__(self, call: Call, lease_s: float) -> None:
        self._call = call
        self.interval_s = max(float(lease_s) / 4.0, 0.01)
        self._beats: dict[tuple[str, str], threading.Event] = {}
        self._guard = threading.Lock()

    def acquire(self, key: str, owner: str) -> bool:
        if not bool(self._call("acquire", key, owner)):
            return False
        with self._guard:
            if (key, owner) not in self._beats:
                stop = threading.Event()
                self._beats[(key, owner)] = stop
                threading.Thread(target=self._beat, args=(key, owner, stop), daemon=True,
                                 name=f"ae-lock-heartbeat-{key}").start()
        return True

    def renew(self, key: str, owner: str) -> None:
        """An extra renewal (the heartbeat already renews; kept for callers that renew per epoch)."""
        self._call("renew", key, owner)

    def release(self, key: str, owner: str) -> None:
        with self._guard:
            stop = self._beats.pop((key, owner), None)
        if stop is not None:
            stop.set()
        self._call("release", key, owner)

    def held(self) -> list[tuple[str, str]]:
        """The (key, owner) pairs whose heartbeat runs."""
        with self._guard:
            return list(self._beats)

    def _beat(self, key: str, owner: str, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                still = bool(self._call("renew", key, owner))
            except Exception as e:  # the table is gone (Ray shut down): nothing left to renew
                log.warning("AE-cache lock %s: renewal failed (%s); the lease will run out", key, e)
                return
            if not still and not stop.is_set():
                # starved for a whole lease (or the table restarted): another trial may train it too;
                # the cache entry is content-addressed, so the worst case is duplicated work
                log.warning("AE-cache lock %s: lease lost by %s", key, owner)
                return
