"""The Parquet result store of a sweep — the record of truth (Ray Tune's own files are not).

Layout under the sweep's :class:`~orchestration.store.storage.Storage`::

    results/trials/<trial_key>.parquet   exactly one row: the trial's configuration and outcome
    results/epochs/<trial_key>.parquet   that trial's per-epoch history (both phases)

Each file is written atomically and *replaced* when the same trial is written again, so retries and
resumes can never duplicate a row: one file per key is the uniqueness constraint. Every file carries
the same explicit schema (:data:`TRIAL_SCHEMA`, :data:`EPOCH_SCHEMA`), so the directories read as one
table with any Parquet reader and no type drift::

    pd.read_parquet("<sweep>/results/trials")
    duckdb.sql("select * from '<sweep>/results/trials/*.parquet'")
    pyarrow.dataset.dataset("<sweep>/results/trials", format="parquet")

Temp files of in-flight writes start with ``.`` and do not end in ``.parquet``, so none of those
readers ever sees them.

One bad file never blocks the others: a row file that cannot be read (zero bytes, torn, not Parquet)
is skipped by :meth:`ResultStore.trials` and friends with one warning line on stderr naming it, and
its trial counts as ``corrupt`` (:meth:`ResultStore.read_trials`, ``sweep status``) — resume and
resubmit run it again, and its new row replaces the file. A file that is not named like a row is
left alone with a warning. Nothing is ever deleted by a reader.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from deepsad.errors import StorageError
from orchestration.store.storage import Storage

SCHEMA_VERSION = "1"
TRIAL_STATUSES = ("finished", "failed", "stopped", "running")
#: What status and summaries call a trial whose row file exists but cannot be read (never stored).
CORRUPT = "corrupt"
EPOCH_PHASES = ("ae", "sad")
#: Reads of the result tables: attempts, and the first pause between them (doubling), see ResultStore._read.
READ_ATTEMPTS = 5
READ_RETRY_S = 0.05

_INT_LIST = pa.list_(pa.int64())
_UTC = pa.timestamp("us", tz="UTC")


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"deepsad.table": table, "deepsad.schema_version": SCHEMA_VERSION})


#: One row per trial. Only ``trial_key`` and ``status`` are required; everything else may be null.
TRIAL_SCHEMA = _schema(
    "trials",
    [
        # identity
        pa.field("sweep", pa.string()),
        pa.field("trial_key", pa.string(), nullable=False),
        pa.field("trial_id", pa.string()),  # Ray Tune's id of the (latest) run of this trial
        pa.field("status", pa.string(), nullable=False),  # one of TRIAL_STATUSES
        pa.field("error", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("code_version", pa.string()),
        pa.field("bundle", pa.string()),  # the bundle (deepsad.bundle) the trial trained in, if any
        pa.field("bundle_size", pa.int64()),  # its number of members
        # configuration
        pa.field("dataset", pa.string()),
        pa.field("normal_classes", _INT_LIST),
        pa.field("known_anomaly_classes", _INT_LIST),
        pa.field("n_known_outlier_classes", pa.int64()),
        pa.field("n_labeled_anomalies", pa.int64()),
        pa.field("ratio_known_outlier", pa.float64()),
        pa.field("ratio_pollution", pa.float64()),
        pa.field("ratio_known_normal", pa.float64()),
        pa.field("val_fraction", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("net", pa.string()),
        pa.field("rep_dim", pa.int64()),
        pa.field("eta", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("epochs", pa.int64()),
        pa.field("weight_decay", pa.float64()),
        pa.field("batch_size", pa.int64()),
        pa.field("milestones", _INT_LIST),
        pa.field("ae_lr", pa.float64()),
        pa.field("ae_epochs", pa.int64()),
        pa.field("ae_weight_decay", pa.float64()),
        pa.field("bf16", pa.bool_()),
        pa.field("reference_compat", pa.bool_()),
        pa.field("params_json", pa.string()),  # the searched parameters, canonical JSON
        # ablation cells (null on rows of plain sweeps and on rows written before ablations existed)
        pa.field("method", pa.string()),  # deepsad | deepsvdd | isoforest | ocsvm; null reads as deepsad
        pa.field("policy", pa.string()),  # fixed | tuned | search
        pa.field("cell", pa.string()),  # short id of the cell: its axis values + seed + method
        pa.field("axes_json", pa.string()),  # the cell's axis values, canonical JSON
        pa.field("selected", pa.bool_()),  # tuned: the inner trial chosen on validation; fixed: true
        pa.field("inner_trial", pa.int64()),  # tuned: 0..budget-1
        # outcome
        pa.field("fingerprint", pa.string()),  # of the semi-supervised split
        pa.field("val_auroc", pa.float64()),
        pa.field("val_ap", pa.float64()),
        pa.field("test_auroc", pa.float64()),
        pa.field("test_ap", pa.float64()),
        pa.field("epochs_done", pa.int64()),  # Deep SAD epochs completed
        pa.field("best_epoch", pa.int64()),
        pa.field("ae_key", pa.string()),
        pa.field("cache_hit", pa.bool_()),
        pa.field("ae_seconds", pa.float64()),  # AE training time spent by this trial (0 on a cache hit)
        pa.field("ae_seconds_saved", pa.float64()),  # the cached AE's original training time, on a hit
        pa.field("sad_seconds", pa.float64()),
        pa.field("total_seconds", pa.float64()),
        pa.field("started_at", _UTC),
        pa.field("finished_at", _UTC),
        pa.field("checkpoint", pa.string()),  # URI of the trial's final model bundle
        pa.field("device", pa.string()),
        pa.field("workers", pa.int64()),
    ],
)

#: One row per finished epoch of either phase (``"ae"`` pretraining, ``"sad"`` Deep SAD); the columns
#: of :class:`deepsad.training.EpochReport` plus the trial key and attempt.
EPOCH_SCHEMA = _schema(
    "epochs",
    [
        pa.field("trial_key", pa.string(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),  # one of EPOCH_PHASES
        pa.field("epoch", pa.int64(), nullable=False),  # from 1 within its phase
        pa.field("epochs", pa.int64()),  # planned epochs of the phase
        pa.field("loss", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("samples_per_s", pa.float64()),
        pa.field("val_auroc", pa.float64()),
        pa.field("val_ap", pa.float64()),
        pa.field("attempt", pa.int64()),
    ],
)

# Trial keys become file names: keep them to a safe alphabet.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_trial_key(key: object) -> str:
    """Return ``key`` if it is a usable trial key (letters, digits, ``_.-``; ≤ 128 chars) else raise StorageError."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise StorageError(f"results: invalid trial_key {key!r} (letters, digits, '_', '.', '-' only)")
    return key


# ---------------------------------------------------------------------------------------- validation


def _check_value(f: pa.Field, v: Any, where: str) -> Any:
    """``v`` as a plain Python value of ``f``'s type; StorageError naming the column if it is not one.

    Stricter than pyarrow's own conversion on purpose: a bool is not a number, 1.0 is not an int and a
    naive datetime has no defined instant.
    """

    def bad(what: str) -> StorageError:
        return StorageError(f"{where}: column {f.name!r} ({f.type}): {what} (got {v!r})")

    t = f.type
    if pa.types.is_boolean(t):
        if not isinstance(v, bool | np.bool_):
            raise bad("expected a bool")
        return bool(v)
    if pa.types.is_integer(t):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
            raise bad("expected an int")
        if not -(2**63) <= int(v) < 2**63:
            raise bad("out of the int64 range")
        return int(v)
    if pa.types.is_floating(t):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
            raise bad("expected a number")
        return float(v)
    if pa.types.is_string(t):
        if not isinstance(v, str):
            raise bad("expected a str")
        return str(v)
    if pa.types.is_list(t):
        if not isinstance(v, list | tuple | np.ndarray):
            raise bad("expected a list")
        item = pa.field(f.name, t.value_type, nullable=False)
        return [_check_value(item, x, where) for x in list(v)]
    if pa.types.is_timestamp(t):
        if not isinstance(v, dt.datetime):
            raise bad("expected a datetime")
        if v.tzinfo is None or v.utcoffset() is None:
            raise bad("expected a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
        return v.astimezone(dt.UTC)
    raise bad(f"unsupported column type {t}")  # a schema edit without a validator


def _validate(row: Mapping[str, Any], schema: pa.Schema, where: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise StorageError(f"{where}: expected a mapping of column -> value, got {type(row).__name__}")
    unknown = sorted(str(k) for k in row if k not in schema.names)
    if unknown:
        raise StorageError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for f in schema:
        v = row.get(f.name)
        if v is None:
            if not f.nullable:
                raise StorageError(f"{where}: column {f.name!r} is required")
            out[f.name] = None
        else:
            out[f.name] = _check_value(f, v, where)
    return out


def _to_parquet(rows: list[dict[str, Any]], schema: pa.Schema, where: str) -> bytes:
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
    except (pa.ArrowException, ValueError, TypeError) as e:  # e.g. an int beyond int64
        raise StorageError(f"{where}: cannot encode as Parquet ({e})") from e
    return bytes(sink.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------------- the store


class ResultStore:
    """Trial and epoch tables of one sweep under ``storage`` (the sweep's directory).

    Writes are atomic per file and idempotent per trial key; any number of processes may write
    concurrently (the last write of a key wins). Readers never see partial files.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._trials = storage.child("results", "trials")
        self._epochs = storage.child("results", "epochs")

    def exists(self) -> bool:
        """Whether any trial row was ever written here."""
        return self._trials.exists()

    def write_trial(self, row: Mapping[str, Any]) -> None:
        """Create or replace the row of ``row["trial_key"]``.

        Missing columns are stored as null. Raises StorageError on an unknown column, a value of the
        wrong type, a missing ``trial_key``/``status``, a status outside :data:`TRIAL_STATUSES`, or a
        failed write.
        """
        key = check_trial_key(row.get("trial_key") if isinstance(row, Mapping) else None)
        where = f"results: trial {key}"
        clean = _validate(row, TRIAL_SCHEMA, where)
        if clean["status"] not in TRIAL_STATUSES:
            raise StorageError(
                f"{where}: status must be one of {', '.join(TRIAL_STATUSES)} (got {clean['status']!r})"
            )
        self._trials.write_bytes(_to_parquet([clean], TRIAL_SCHEMA, where), f"{key}.parquet")

    def write_epochs(self, trial_key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Create or replace the whole epoch history of ``trial_key`` (rows in the order given).

        Rows may omit ``trial_key`` (it is filled in); one naming another key is an error. Raises
        StorageError as :meth:`write_trial` does, and on a phase outside :data:`EPOCH_PHASES`.
        """
        key = check_trial_key(trial_key)
        clean = []
        for i, row in enumerate(rows):
            where = f"results: epochs of trial {key}, row {i}"
            if not isinstance(row, Mapping):
                raise StorageError(f"{where}: expected a mapping, got {type(row).__name__}")
            if row.get("trial_key", key) != key:
                raise StorageError(f"{where}: belongs to trial {row.get('trial_key')!r}")
            c = _validate({**row, "trial_key": key}, EPOCH_SCHEMA, where)
            if c["phase"] not in EPOCH_PHASES:
                raise StorageError(
                    f"{where}: phase must be one of {', '.join(EPOCH_PHASES)} (got {c['phase']!r})"
                )
            clean.append(c)
        self._epochs.write_bytes(
            _to_parquet(clean, EPOCH_SCHEMA, f"results: epochs of trial {key}"), f"{key}.parquet"
        )

    # ------------------------------------------------------------------------------------- reading

    def _dataset(self, where: Storage, schema: pa.Schema) -> pads.Dataset | None:
        if not where.exists():
            return None
        try:
            # One discovery over the directory; pyarrow reads the files in parallel. Files starting with
            # "." or "_" (our temp files) are ignored by default.
            return pads.dataset(where.root, schema=schema, format="parquet", filesystem=where.filesystem)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {where.uri}: cannot open result table ({e})") from e

    def _read(self, where: Storage, schema: pa.Schema, **scan: Any) -> TableRead:
        """Discover and read the table; skip (and report) the files that are not readable rows.

        The fast path reads every file at once. When that fails, each file is read on its own, whole
        (up to :data:`READ_ATTEMPTS` times): discovery records every file's size and S3 reads trust it,
        so a row replaced between the listing and the read (a running sweep rewrites a trial's row as it
        finishes) fails the fast path — "Parquet magic bytes not found" — and reads fine on its own. A
        file that fails every attempt is corrupt: it is skipped with one warning on stderr (once per
        process) and named in :attr:`TableRead.corrupt`; nothing is deleted (the trial's next row
        replaces it). Files that are not named like a row (``<trial key>.parquet``) are left alone and
        warned about (:attr:`TableRead.strays`).
        """
        columns = scan.get("columns")
        empty = (pa.schema([schema.field(c) for c in columns]) if columns else schema).empty_table()
        ds = self._dataset(where, schema)
        if ds is None:
            return TableRead(empty, (), ())
        rows, strays = _split_files(where, ds.files)
        for bad in strays:
            _warn_once(bad, f"warning: {bad.uri}: not a row of this table (only <trial key>.parquet files are); "
                            "ignored, left in place")
        if not rows:
            return TableRead(empty, (), tuple(strays))
        fragments = [f for f in ds.get_fragments() if _name_in(where, f.path) in {r.name for r in rows}]
        try:
            chosen = pads.FileSystemDataset(fragments, schema, ds.format, ds.filesystem) if strays else ds
            table = chosen.to_table(**scan)
            corrupt: tuple[UnreadableFile, ...] = ()
        except (OSError, pa.ArrowException):
            table, corrupt = _read_each(where, schema, rows, scan)
            what = "trial row" if schema is TRIAL_SCHEMA else "epoch history"
            for bad in corrupt:
                then = (f"; trial {bad.key} counts as corrupt until it runs again (`deepsad sweep resume`)"
                        if schema is TRIAL_SCHEMA else "")
                _warn_once(bad, f"warning: {bad.uri}: not a readable {what} ({bad.reason}); skipped, left in "
                                f"place{then}")
        # Stable sort: epochs keep their written order within a trial.
        if "trial_key" in table.column_names:
            table = table.sort_by("trial_key")
        return TableRead(table, corrupt, tuple(strays))

    def read_trials(self) -> TableRead:
        """All trial rows (sorted by trial_key) and the files that are not readable rows."""
        return self._read(self._trials, TRIAL_SCHEMA)

    def trials(self) -> pa.Table:
        """All readable trial rows (sorted by trial_key), typed by :data:`TRIAL_SCHEMA`; empty if none.
        Unreadable files are skipped with a warning (see :meth:`read_trials`)."""
        return self.read_trials().table

    def corrupt_keys(self) -> set[str]:
        """Keys of the trials whose row file exists but cannot be read (they run again on resume)."""
        return {bad.key for bad in self.read_trials().corrupt if bad.key is not None}

    def epochs(self) -> pa.Table:
        """All epoch rows of all trials (grouped by trial_key), typed by :data:`EPOCH_SCHEMA`."""
        return self._read(self._epochs, EPOCH_SCHEMA).table

    def row(self, trial_key: str) -> dict[str, Any] | None:
        """The row of ``trial_key`` as a dict (timestamps as aware datetimes), or None if never written
        — or if its file cannot be read (a warning says so; the trial's next row replaces the file)."""
        key = check_trial_key(trial_key)
        name = f"{key}.parquet"
        if not self._trials.exists(name):
            return None
        try:
            data = self._trials.read_bytes(name)
        except StorageError:
            if not self._trials.exists(name):
                return None  # removed between our look and the read
            raise
        try:
            rows = _parse_row_file(data, TRIAL_SCHEMA).to_pylist()
            if len(rows) != 1:
                raise ValueError(f"expected 1 row, found {len(rows)}")
        except (OSError, pa.ArrowException, ValueError) as e:
            bad = UnreadableFile(f"{self._trials.uri}/{name}", name, key, _why(e))
            _warn_once(bad, f"warning: {bad.uri}: not a readable trial row ({bad.reason}); treated as absent, left "
                            "in place")
            return None
        return rows[0]

    def finished_keys(self) -> set[str]:
        """Keys of the trials whose status is ``"finished"`` (those a resubmit skips)."""
        table = self._read(
            self._trials, TRIAL_SCHEMA, columns=["trial_key"], filter=pc.field("status") == "finished"
        ).table
        return set(table.column("trial_key").to_pylist())

    def summary(self) -> dict[str, Any]:
        """Counts and compute totals for reports.

        Returns ``{"trials": n, "by_status": {status: n, ...}, "cache_hits": n, "ae_seconds": s,
        "ae_seconds_saved": s, "total_seconds": s}``; ``ae_seconds_saved`` (the training time of the cached
        autoencoders that trials reused) is the compute the AE cache saved. Null values count as 0.
        Trials whose row file cannot be read count in ``trials`` and as ``by_status["corrupt"]`` (a key
        present only when there are some).
        """
        cols = ["status", "cache_hit", "ae_seconds", "ae_seconds_saved", "total_seconds"]
        read = self._read(self._trials, TRIAL_SCHEMA, columns=cols)
        t = read.table
        by_status = dict.fromkeys(TRIAL_STATUSES, 0)
        for status, n in zip(*_value_counts(t.column("status")), strict=True):
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
        self._trials.delete(f"{check_trial_key(trial_key)}.parquet")

    def ledger(self) -> Ledger:
        """What the rows say about every key, read once (see :class:`Ledger`)."""
        t = self._read(self._trials, TRIAL_SCHEMA, columns=["trial_key", "status", "selected"]).table
        keys, statuses = t.column("trial_key").to_pylist(), t.column("status").to_pylist()
        done = {str(k).split("-", 1)[0] for k, s, sel in zip(keys, statuses, t.column("selected").to_pylist(),
                                                             strict=True) if s == "finished" and sel is not False}
        return Ledger(dict(zip(keys, statuses, strict=True)), frozenset(done))


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


class RowWriter:
    """The only code that builds and writes result rows (jobs in a trial, the driver's callback).

    A trial's rows go ``start`` (``running``) → ``epochs`` (the whole history, rewritten at each
    checkpoint) → ``finish`` or ``fail``; the driver writes ``end`` for a trial that could not write its
    own (failed after its last retry, stopped by the scheduler). Attempt numbers count runs of a key:
    each ``start`` after an earlier row of the key adds one. Every write replaces the key's row, so
    retries and resumes never duplicate one.
    """

    def __init__(self, storage: Storage, sweep: str, trial_id: str = "local") -> None:
        self.store = ResultStore(storage)
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
        """The run's whole epoch history so far (objects with ``to_dict()``: EpochReport)."""
        self.store.write_epochs(attempt.key, [{"trial_key": attempt.key, "attempt": attempt.number, **r.to_dict()}
                                              for r in reports])

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
        for k in ("val_auroc", "val_ap"):
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


@dataclass(frozen=True)
class UnreadableFile:
    """A file in a result table that is not a readable row.

    ``name``: its name in the table's directory; ``key``: the trial key its name gives (None for a
    stray file, one not named ``<trial key>.parquet``); ``reason``: why (one line).
    """

    uri: str
    name: str
    key: str | None
    reason: str


@dataclass(frozen=True)
class TableRead:
    """A result table as read: the readable rows, the row files that could not be read (``corrupt``:
    their trials count as "corrupt") and the files that are not rows at all (``strays``: ignored)."""

    table: pa.Table
    corrupt: tuple[UnreadableFile, ...]
    strays: tuple[UnreadableFile, ...]


_WARNED: set[tuple[str, str]] = set()
_WARNED_GUARD = threading.Lock()


def _warn_once(bad: UnreadableFile, line: str) -> None:
    """One line on stderr per unreadable file and reason, once per process (a driver reads often)."""
    with _WARNED_GUARD:
        if (bad.uri, bad.reason) in _WARNED:
            return
        _WARNED.add((bad.uri, bad.reason))
    print(line, file=sys.stderr, flush=True)


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _name_in(where: Storage, path: str) -> str:
    root = where.root.rstrip("/")
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def _split_files(where: Storage, paths: Sequence[str]) -> tuple[list[UnreadableFile], list[UnreadableFile]]:
    """The table's files as (row files, strays): a row file is ``<trial key>.parquet`` directly in the
    directory; anything else discovery found (another suffix, a subdirectory's file) is a stray."""
    rows, strays = [], []
    for path in paths:
        name = _name_in(where, path)
        stem = name[: -len(".parquet")] if name.endswith(".parquet") else ""
        entry = UnreadableFile(f"{where.uri}/{name}", name, stem or None, "")
        if "/" not in name and stem and _KEY.fullmatch(stem):
            rows.append(entry)
        else:
            strays.append(UnreadableFile(entry.uri, name, None, "not a row file"))
    return rows, strays


def _parse_row_file(data: bytes, schema: pa.Schema) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), schema=schema)


def _read_each(where: Storage, schema: pa.Schema, files: list[UnreadableFile],
               scan: Mapping[str, Any]) -> tuple[pa.Table, tuple[UnreadableFile, ...]]:
    """Read every file whole, on its own (a few at a time), each up to :data:`READ_ATTEMPTS` times;
    return the readable rows (``scan``'s filter and columns applied) and the files that stayed broken."""
    from concurrent.futures import ThreadPoolExecutor

    def one(f: UnreadableFile) -> pa.Table | UnreadableFile | None:
        for attempt in range(READ_ATTEMPTS):
            try:
                return _parse_row_file(where.read_bytes(f.name), schema)
            except (OSError, pa.ArrowException, StorageError) as e:
                if not where.exists(f.name):
                    return None  # removed meanwhile (e.g. a tuned ablation unit's row): not ours to report
                if attempt == READ_ATTEMPTS - 1:
                    return UnreadableFile(f.uri, f.name, f.key, _why(e))
                time.sleep(READ_RETRY_S * 2**attempt)
        return None

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        results = list(pool.map(one, files))
    tables = [r for r in results if isinstance(r, pa.Table)]
    corrupt = tuple(r for r in results if isinstance(r, UnreadableFile))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    if scan.get("filter") is not None:
        table = table.filter(scan["filter"])
    if scan.get("columns"):
        table = table.select(list(scan["columns"]))
    return table, corrupt


def _value_counts(col: pa.ChunkedArray) -> tuple[list[Any], list[int]]:
    counts = pc.value_counts(col)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


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
