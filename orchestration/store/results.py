"""The result store of a sweep — the record of truth (Ray Tune's own files are not): two Delta Lake
tables (:mod:`orchestration.store.delta`) under the sweep's :class:`~orchestration.store.storage.Storage`::

    results/trials.delta/   one row per trial (:data:`TRIAL_SCHEMA`), partitioned by ``status``
    results/epochs.delta/   every trial's per-epoch history (:data:`EPOCH_SCHEMA`), appended

Exactly one row per trial key: a write MERGEs on the key, so a retried or resumed trial replaces its
row. Epoch rows are appended as a trial reports them, each attempt's history from its first epoch;
readers keep the latest attempt of each trial (and one row per epoch, should a retried commit have
written one twice). Any reader sees one committed snapshot, while a sweep writes::

    deltalake.DeltaTable("<sweep>/results/trials.delta").to_pandas()
    polars.read_delta("<sweep>/results/trials.delta")
    duckdb.sql("select * from delta_scan('<sweep>/results/trials.delta')")

Writes go through a :class:`RowSink`. In a sweep on Ray every row goes to the driver's committer (a
named actor holding a :class:`Committer` with ``sole_writer``: commits grouped, upserts routed by its
ledger, tables compacted every :data:`MAINTAIN_EVERY` commits and at the sweep's end); elsewhere
(:func:`local_committer`) a process commits its own rows, every upsert a full MERGE, which stays exact
however many processes write at once. Sweeps written in the file-per-trial layout of earlier versions
(:mod:`orchestration.store.legacy`) are read as they are, and converted by their first write (the old
files are left in place).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from orchestration.store.delta import DeltaRows, GroupCommitter
from orchestration.store.legacy import LegacyTables, TableRead
from orchestration.store.schema import CORRUPT as CORRUPT
from orchestration.store.schema import EPOCH_PHASES as EPOCH_PHASES
from orchestration.store.schema import EPOCH_SCHEMA as EPOCH_SCHEMA
from orchestration.store.schema import TRIAL_SCHEMA as TRIAL_SCHEMA
from orchestration.store.schema import TRIAL_STATUSES as TRIAL_STATUSES
from orchestration.store.schema import check_trial_key as check_trial_key
from orchestration.store.schema import epoch_rows, trial_rows
from orchestration.store.storage import Storage

#: The sole writer compacts and vacuums each table after this many of its commits (and at a sweep's end).
MAINTAIN_EVERY = 200


def tables(storage: Storage) -> tuple[DeltaRows, DeltaRows]:
    """The trial and epoch tables of the sweep directory ``storage``."""
    return (DeltaRows(storage.child("results", "trials.delta"), TRIAL_SCHEMA, key="trial_key", partition="status",
                      clustered=True),
            DeltaRows(storage.child("results", "epochs.delta"), EPOCH_SCHEMA, key="trial_key"))


class RowSink(Protocol):
    """Where the rows of a sweep are committed: :class:`Committer` in this process, or the driver's."""

    def commit(self, trials: pa.Table | None = None, epochs: pa.Table | None = None) -> None: ...

    def delete(self, keys: Sequence[str]) -> None: ...


class Committer:
    """Commits a sweep's rows, from any number of threads (see :class:`GroupCommitter`).

    ``sole_writer``: this committer is the only writer of the tables (the driver's, during a sweep),
    so its upserts are routed by its ledger. Before its first write it converts a sweep of the
    file-per-trial layout (the rows a reader of that layout sees; its files are left in place).
    """

    def __init__(self, storage: Storage, *, sole_writer: bool = False, maintain_every: int | None = MAINTAIN_EVERY) -> None:
        self.storage = storage
        trials, epochs = tables(storage)
        self._trials = GroupCommitter(trials, routed=sole_writer, maintain_every=maintain_every)
        self._epochs = GroupCommitter(epochs, append=True, maintain_every=maintain_every)
        self._ready = False
        self._guard = threading.Lock()

    def commit(self, trials: pa.Table | None = None, epochs: pa.Table | None = None) -> None:
        self._convert()
        if epochs is not None and epochs.num_rows:
            self._epochs.submit(epochs)
        if trials is not None and trials.num_rows:
            self._trials.submit(trials)

    def delete(self, keys: Sequence[str]) -> None:
        self._convert()
        self._trials.delete(keys)

    def maintain(self) -> dict[str, dict[str, int]]:
        """Compact and vacuum both tables now; the files of each before and after."""
        self._convert()
        return {"trials": self._trials.maintain(), "epochs": self._epochs.maintain()}

    def _convert(self) -> None:
        with self._guard:
            if self._ready:
                return
            trials, epochs = self._trials.table, self._epochs.table
            legacy = LegacyTables(self.storage)
            if not trials.exists() and legacy.exists():
                old = legacy.read_trials().table
                if not epochs.exists():
                    epochs.append(legacy.read_epochs().table)
                trials.upsert(old)  # a full MERGE: exact if another process converts at the same time
                print(f"results: {self.storage.uri}: {old.num_rows} trial rows of the file-per-trial layout copied "
                      "to results/trials.delta (the old files are left in place)", file=sys.stderr, flush=True)
            self._ready = True


_LOCAL: dict[str, Committer] = {}
_LOCAL_GUARD = threading.Lock()


def local_committer(storage: Storage) -> Committer:
    """This process's committer of the sweep under ``storage`` (one per sweep directory)."""
    with _LOCAL_GUARD:
        if storage.uri not in _LOCAL:
            _LOCAL[storage.uri] = Committer(storage)
        return _LOCAL[storage.uri]


# ---------------------------------------------------------------------------------------- the store


class ResultStore:
    """Trial and epoch tables of one sweep under ``storage`` (the sweep's directory).

    Writes go to ``sink`` (default: :func:`local_committer`); reads see the latest committed snapshot.
    """

    def __init__(self, storage: Storage, sink: RowSink | None = None) -> None:
        self.storage = storage
        self._trials, self._epochs = tables(storage)
        self._legacy = LegacyTables(storage)
        self._sink = sink

    @property
    def sink(self) -> RowSink:
        return self._sink if self._sink is not None else local_committer(self.storage)

    def exists(self) -> bool:
        """Whether any trial row was ever written here."""
        return self._trials.exists() or self._legacy.exists()

    def write_trial(self, row: Mapping[str, Any]) -> None:
        """Create or replace the row of ``row["trial_key"]``.

        Missing columns are stored as null. Raises StorageError on an unknown column, a value of the
        wrong type, a missing ``trial_key``/``status``, a status outside :data:`TRIAL_STATUSES`, or a
        failed write.
        """
        self.sink.commit(trials=trial_rows([row]))

    def write_epochs(self, trial_key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add epochs to the history of ``trial_key``: readers see the rows of its latest ``attempt``
        (an epoch written again within an attempt replaces its row). Rows may omit ``trial_key``; one
        naming another key is an error. Raises StorageError as :meth:`write_trial` does, and on a phase
        outside :data:`EPOCH_PHASES`."""
        self.sink.commit(epochs=epoch_rows(trial_key, rows))

    # ------------------------------------------------------------------------------------- reading

    def _read(self, **scan: Any) -> TableRead:
        """The trial rows of the latest snapshot (``columns``, ``filter``), sorted by trial_key; from the
        file-per-trial layout until the sweep's first write converts it."""
        if not self._trials.exists():
            return self._legacy.read_trials(**scan)
        columns = scan.get("columns")
        wanted = [*columns, "attempt"] if columns and "attempt" not in columns else columns  # to settle repeats
        table = _one_per_key(self._trials.read(wanted, scan.get("filter")).table)
        table = table.select(list(columns)) if columns else table
        return TableRead(table.sort_by("trial_key") if "trial_key" in table.column_names else table)

    def read_trials(self, columns: Sequence[str] | None = None, *, keys: Any = None) -> TableRead:
        """All trial rows, or those of ``keys`` (sorted by trial_key; only ``columns`` if given) and, in a
        sweep of the file-per-trial layout, the files that are not readable rows."""
        return self._read(columns=list(columns) if columns else None,
                          filter=None if keys is None else pc.field("trial_key").isin(keys))

    def best(self, metric: str, k: int) -> pa.Table:
        """The ``k`` rows of highest ``metric`` (rows without one last), best first: two reads, the
        second of those rows only (a million-row table answers in about a second)."""
        scores = self._read(columns=["trial_key", metric]).table
        if scores.num_rows == 0:
            return self._read().table
        # the k best without sorting every row (ties: the smaller key first, as a full sort would)
        best = pc.select_k_unstable(scores, k=min(k, scores.num_rows),
                                    sort_keys=[(metric, "descending"), ("trial_key", "ascending")])
        keys = scores.take(best).sort_by([(metric, "descending"), ("trial_key", "ascending")]).column("trial_key")
        rows = self._read(filter=pc.field("trial_key").isin(keys)).table
        rank = {key: i for i, key in enumerate(keys.to_pylist())}
        found = rows.column("trial_key").to_pylist()
        return rows.take(sorted(range(rows.num_rows), key=lambda i: rank[found[i]]))

    def trials(self) -> pa.Table:
        """All readable trial rows (sorted by trial_key), typed by :data:`TRIAL_SCHEMA`; empty if none."""
        return self.read_trials().table

    def corrupt_keys(self) -> set[str]:
        """Keys of the trials whose row file exists but cannot be read (they run again on resume)."""
        return {bad.key for bad in self.read_trials().corrupt if bad.key is not None}

    def epochs(self) -> pa.Table:
        """The epoch history of every trial's latest attempt, by trial_key, phase (``ae`` first) and
        epoch, typed by :data:`EPOCH_SCHEMA`."""
        if not self._epochs.exists():
            return self._legacy.read_epochs().table
        return _latest_attempts(self._epochs.read().table)

    def row(self, trial_key: str) -> dict[str, Any] | None:
        """The row of ``trial_key`` as a dict (timestamps as aware datetimes), or None if never written
        (or, in the file-per-trial layout, if its file cannot be read: a warning says so)."""
        key = check_trial_key(trial_key)
        if not self._trials.exists():
            return self._legacy.row(key)
        rows = self._read(filter=pc.field("trial_key") == key).table.to_pylist()
        return dict(rows[0]) if rows else None

    def finished_keys(self) -> set[str]:
        """Keys of the trials whose status is ``"finished"`` (those a resubmit skips)."""
        table = self._read(columns=["trial_key"], filter=pc.field("status") == "finished").table
        return set(table.column("trial_key").to_pylist())

    def summary(self) -> dict[str, Any]:
        """Counts and compute totals for reports.

        Returns ``{"trials": n, "by_status": {status: n, ...}, "cache_hits": n, "ae_seconds": s,
        "ae_seconds_saved": s, "total_seconds": s}``; ``ae_seconds_saved`` (the training time of the cached
        autoencoders that trials reused) is the compute the AE cache saved. Null values count as 0.
        Trials whose row file cannot be read count in ``trials`` and as ``by_status["corrupt"]`` (a key
        present only when there are some).
        """
        cols = ["trial_key", "status", "cache_hit", "ae_seconds", "ae_seconds_saved", "total_seconds"]
        read = self._read(columns=cols)
        t = read.table
        by_status = dict.fromkeys(TRIAL_STATUSES, 0)
        counts = pc.value_counts(t.column("status"))
        for status, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            by_status[status] = n
        if read.corrupt:
            by_status[CORRUPT] = len(read.corrupt)

        def total(name: str) -> float:
            s = pc.sum(t.column(name)).as_py()
            return float(s) if s is not None else 0.0

        hits = pc.sum(pc.cast(t.column("cache_hit"), pa.int64())).as_py()
        return {
            "trials": t.num_rows + len(read.corrupt),
            "by_status": by_status,
            "cache_hits": int(hits or 0),
            "ae_seconds": total("ae_seconds"),
            "ae_seconds_saved": total("ae_seconds_saved"),
            "total_seconds": total("total_seconds"),
        }

    def delete_trial(self, trial_key: str) -> None:
        """Remove the row of ``trial_key`` (only :meth:`RowWriter.delete` calls this: a tuned ablation
        unit's failed unit-level row, replaced by its inner rows). Its epochs stay."""
        self.sink.delete([check_trial_key(trial_key)])

    def maintain(self) -> dict[str, dict[str, int]]:
        """Compact and vacuum the tables (converting a sweep of the file-per-trial layout first)."""
        return Committer(self.storage, maintain_every=None).maintain()

    def ledger(self) -> Ledger:
        """What the rows say about every key, read once (see :class:`Ledger`)."""
        t = self._read(columns=["trial_key", "status", "selected"]).table
        keys, statuses = t.column("trial_key").to_pylist(), t.column("status").to_pylist()
        done = {str(k).split("-", 1)[0] for k, s, sel in zip(keys, statuses, t.column("selected").to_pylist(),
                                                             strict=True) if s == "finished" and sel is not False}
        return Ledger(dict(zip(keys, statuses, strict=True)), frozenset(done))


def _one_per_key(table: pa.Table) -> pa.Table:
    """``table`` with one row per trial_key. The sole writer never stores two; should another writer
    have raced it, the row of the latest attempt (then the first found) stands."""
    if "trial_key" not in table.column_names or len(pc.unique(table.column("trial_key"))) == table.num_rows:
        return table  # (unique: half the time of count_distinct on a million keys)
    keys = table.column("trial_key").to_pylist()
    attempts = (table.column("attempt").to_pylist() if "attempt" in table.column_names else [0] * len(keys))
    best: dict[str, int] = {}
    for i, (k, a) in enumerate(zip(keys, attempts, strict=True)):
        if k not in best or (a or 0) > (attempts[best[k]] or 0):
            best[k] = i
    return table.take(sorted(best.values()))


def _latest_attempts(table: pa.Table) -> pa.Table:
    """Epoch rows of each trial's latest attempt (a null attempt counts as 0), one per (phase, epoch),
    ordered by trial_key, phase and epoch."""
    keys = table.column("trial_key").to_pylist()
    attempts = [a or 0 for a in table.column("attempt").to_pylist()]
    latest: dict[str, int] = {}
    for k, a in zip(keys, attempts, strict=True):
        latest[k] = max(latest.get(k, a), a)
    seen: set[tuple[str, str, int]] = set()
    keep = []
    for i, (k, a, p, e) in enumerate(zip(keys, attempts, table.column("phase").to_pylist(),
                                         table.column("epoch").to_pylist(), strict=True)):
        if a == latest[k] and (k, p, e) not in seen:
            seen.add((k, p, e))
            keep.append(i)
    return table.take(keep).sort_by([("trial_key", "ascending"), ("phase", "ascending"), ("epoch", "ascending")])


@dataclass(frozen=True)
class Ledger:
    """The state of a sweep's work by key, from one read of the trial rows.

    ``done``: keys whose work is finished — a row ``<key>`` that finished, or, for an ablation unit of
    policy tuned, an inner row ``<key>-<i>`` that finished and was selected (a finished row marked
    ``selected: false`` is an inner training that was not chosen, and does not count).
    """

    status: Mapping[str, str]
    done: frozenset[str]

    def settled(self, key: str) -> bool:
        """Done, or ended without finishing (failed, stopped): resume leaves it alone (a resubmit runs
        failed ones again). Rowless, ``running`` and unreadable rows are not settled."""
        return key in self.done or self.status.get(key) not in (None, "running")


@dataclass
class Attempt:
    """One run of the trial ``key``: its number and the columns every row of this run repeats."""

    key: str
    number: int
    base: dict[str, Any]
    t0: float
    epochs_sent: int = 0  # how much of the run's history is written


class RowWriter:
    """The only code that builds and writes result rows (jobs in a trial, the driver's callback).

    A trial's rows go ``start`` (``running``) → ``epochs`` (at each checkpoint: the epochs of the
    history not yet written) → ``finish`` or ``fail``; the driver writes ``end`` for a trial that could not write its
    own (failed after its last retry, stopped by the scheduler). Attempt numbers count runs of a key:
    each ``start`` after an earlier row of the key adds one. Every write replaces the key's row, so
    retries and resumes never duplicate one.
    """

    def __init__(self, storage: Storage, sweep: str, trial_id: str = "local", sink: RowSink | None = None) -> None:
        self.store = ResultStore(storage, sink)
        self.sweep, self.trial_id = sweep, trial_id

    def row(self, key: str) -> dict[str, Any] | None:
        return self.store.row(key)

    def finished(self, key: str) -> dict[str, Any] | None:
        """The key's row if it finished (a resubmit or resume never trains it again), else None."""
        row = self.store.row(key)
        return row if row is not None and row.get("status") == "finished" else None

    def start(self, key: str, columns: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
              workers: int = 1, write: bool = True) -> Attempt:
        """Begin a run of ``key`` (attempt = the last row's + 1) and, if ``write``, record it ``running``.

        ``columns``: the configuration columns; ``params``: the searched values (``params_json``).
        ``write`` False: a data-parallel rank other than 0 (it never writes)."""
        previous = self.store.row(key) or {}
        number = int(previous["attempt"]) + 1 if previous.get("attempt") else 1
        base: dict[str, Any] = {
            "sweep": self.sweep, "trial_key": key, "trial_id": self.trial_id, "attempt": number,
            "code_version": code_version(), "workers": workers, **columns,
            **({"params_json": json.dumps(dict(params), sort_keys=True)} if params is not None else {}),
            "started_at": dt.datetime.now(dt.UTC),
        }
        if write:
            self.store.write_trial({**base, "status": "running"})
        return Attempt(key, number, base, time.perf_counter())

    def epochs(self, attempt: Attempt, reports: Sequence[Any]) -> None:
        """The run's whole epoch history so far (objects with ``to_dict()``: EpochReport); the epochs
        written before in this run are not sent again."""
        new = reports[attempt.epochs_sent:] if len(reports) >= attempt.epochs_sent else reports
        if new:
            self.store.write_epochs(attempt.key, [{"trial_key": attempt.key, "attempt": attempt.number, **r.to_dict()}
                                                  for r in new])
        attempt.epochs_sent = len(reports)

    def finish(self, attempt: Attempt, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """Record the run finished with ``outcome`` (metrics, fingerprint, cache columns, ...)."""
        row = {**attempt.base, **outcome, "status": "finished",
               "total_seconds": time.perf_counter() - attempt.t0, "finished_at": dt.datetime.now(dt.UTC)}
        self.store.write_trial(row)
        return row

    def fail(self, attempt: Attempt, error: str, outcome: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record the run failed (e.g. a bundle member that diverged: it fails alone)."""
        row = {**attempt.base, **(outcome or {}), "status": "failed", "error": error,
               "finished_at": dt.datetime.now(dt.UTC)}
        self.store.write_trial(row)
        return row

    def end(self, key: str, status: str, error: str | None, *, columns: Mapping[str, Any] | None = None,
            params: Mapping[str, Any] | None = None, last: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a run that ended without writing its own outcome: ``failed`` (after its last retry, or
        an inner training of a tuned unit) or ``stopped`` (by the scheduler). The key's last row is kept
        where this adds nothing; ``last`` (the run's last report) gives its latest validation metrics."""
        previous = self.store.row(key) or {}
        row: dict[str, Any] = {**{k: v for k, v in previous.items() if v is not None}, **(columns or {}),
                               "sweep": self.sweep, "trial_key": key, "trial_id": self.trial_id, "status": status,
                               "error": error[:500] if error else error, "finished_at": dt.datetime.now(dt.UTC)}
        if params is not None:
            row["params_json"] = json.dumps(dict(params), sort_keys=True)
        last = last or {}
        for k in ("val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle"):
            if isinstance(last.get(k), float):
                row[k] = last[k]
        if isinstance(last.get("epoch"), int):
            row["epochs_done"] = last["epoch"]
        row.setdefault("attempt", 1)
        self.store.write_trial(row)
        return row

    def select(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Mark ``row`` the one chosen on validation (a tuned ablation unit's inner training)."""
        chosen = {**row, "selected": True}
        self.store.write_trial(chosen)
        return chosen

    def delete(self, key: str) -> None:
        """Remove the row of ``key`` (a tuned unit's failed unit-level row, once its inner rows stand)."""
        self.store.delete_trial(key)


# ---------------------------------------------------------------------------------------- code version

_REPO = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """What code produced a result: ``git describe --always --tags`` of this project's checkout if it is
    one (e.g. ``"f50cdde"`` or ``"v0.2-3-gabc1234"``), else the installed package version
    (``"deepsad-sweeps 0.1.0"``), else ``"unknown"``. Cached for the process; never raises.
    """
    if (_REPO / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(_REPO), "describe", "--always", "--tags", "--abbrev=12"],
                capture_output=True,
                text=True,
                timeout=5,
                # Read-only: no --dirty (it refreshes the index) and no optional locks, so this never
                # competes with a concurrent `git commit` for .git/index.lock.
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass  # no git on this machine: fall back to the package version
    try:
        return f"deepsad-sweeps {metadata.version('deepsad-sweeps')}"
    except metadata.PackageNotFoundError:
        return "unknown"
