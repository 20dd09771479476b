"""Delta Lake tables of rows keyed by one column (delta-rs, ``deltalake``): the table format the result
store moves to (issue 16) — ACID commits, one row per key by MERGE, compaction, snapshots that readers
see whole while a writer commits, readable by duckdb, polars, pandas and Spark, local or on S3.

A :class:`DeltaRows` lives in a directory of a :class:`~orchestration.store.storage.Storage` (its
``_delta_log/`` and Parquet data files). Rows are partitioned by one low-cardinality column (a trial's
``status``), so that an upsert touches only the partitions its keys are stored in: with ``stored`` (key
→ partition value, the writer's ledger) new keys are appended and known keys MERGEd within their own
partitions, which keeps a commit cheap on a table of a million rows; without it a full MERGE on the key.
A commit that loses a race with another writer is retried on the table's new version (a MERGE is
idempotent). :meth:`DeltaRows.maintain` compacts small files, removes files that no snapshot of the last
:data:`RETENTION_HOURS` needs, checkpoints the log and drops old log entries.

:class:`GroupCommitter` makes one process the table's single writer for many senders: each submission
returns once committed, and submissions that arrive during a commit share the next one.

On S3 the table is reached with the settings of :mod:`orchestration.store.s3` (endpoint, region,
addressing); credentials stay with the standard AWS chain, which delta-rs reads itself, and are never
passed or stored. Commits use S3's conditional writes, so no lock service is needed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from deepsad.errors import StorageError
from orchestration.store.storage import Storage

#: Removed data files and log entries are kept this long, so that a reader's snapshot stays readable.
RETENTION_HOURS = 1
#: Compaction's target file size.
TARGET_FILE_BYTES = 32 << 20
#: Row groups of a clustered table's compacted files: small enough that a read of a few keys skips
#: almost every group by its min/max statistics (1M rows: `deepsad results show --top 5` 1.08 s, 2.2 s
#: unclustered; benchmarks/bench_store.py), large enough to keep the files' metadata small.
ROW_GROUP_ROWS = 8192
#: Commits retried after losing a race with another writer.
COMMIT_ATTEMPTS = 8
_LOG = "_delta_log"


def storage_options(storage: Storage) -> dict[str, str]:
    """How delta-rs reaches ``storage``: nothing for a local directory; for ``s3://`` the endpoint,
    region and addressing of :class:`orchestration.store.s3.S3Settings` (never credentials)."""
    if storage.is_local:
        return {}
    from orchestration.store.s3 import S3Settings

    s = S3Settings.from_env()
    out = {"AWS_REGION": s.region} if s.region else {}
    if s.endpoint:
        out.update(AWS_ENDPOINT_URL=s.endpoint, AWS_ALLOW_HTTP="true" if s.endpoint.startswith("http://") else "false")
    if s.addressing is not None:
        out["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true" if s.addressing == "virtual" else "false"
    return out


def table_uri(storage: Storage) -> str:
    """The table's URI for delta-rs: an absolute local path, or ``s3://bucket/prefix``."""
    return storage.root if storage.is_local else storage.uri


@dataclass(frozen=True)
class Snapshot:
    """One version of a table, read whole: what every reader sees while writers commit."""

    version: int
    table: pa.Table


class DeltaRows:
    """A Delta table of rows of ``schema``, one per ``key``, partitioned by ``partition`` (see the module
    docstring). Every method raises :class:`StorageError` with one line on a failure."""

    def __init__(self, storage: Storage, schema: pa.Schema, *, key: str, partition: str | None = None,
                 clustered: bool = False) -> None:
        self.storage, self.schema, self.key, self.partition = storage, schema, key, partition
        self.clustered = clustered  # maintain() sorts the files by key (Z-order on one column) in small row groups
        self._uri, self._options = table_uri(storage), storage_options(storage)
        self._writing: Any = None  # the writer's open table, brought up to date before each commit

    # ------------------------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.storage.exists(_LOG)

    def _table(self, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        try:
            return DeltaTable(self._uri, version=version, storage_options=self._options)
        except Exception as e:
            raise StorageError(f"{self.storage.uri}: cannot open the table ({_why(e)})") from e

    def version(self) -> int | None:
        """The latest version, or None if the table was never written."""
        return int(self._table().version()) if self.exists() else None

    def read(self, columns: Sequence[str] | None = None, filter: pc.Expression | None = None,
             version: int | None = None) -> Snapshot:
        """The rows of one version (the latest unless ``version``), typed by the schema."""
        schema = pa.schema([self.schema.field(c) for c in columns]) if columns else self.schema
        if not self.exists():
            return Snapshot(-1, schema.empty_table())
        dt = self._table(version)
        for attempt in range(3):
            try:
                # pyarrow's own file system: delta-rs' default one may abort the process at exit
                fs = pafs.SubTreeFileSystem(self.storage.root, self.storage.filesystem)
                ds: pads.Dataset = dt.to_pyarrow_dataset(filesystem=fs, schema=self.schema)
                table = ds.to_table(columns=list(columns) if columns else None, filter=filter)
                return Snapshot(int(dt.version()), table.cast(schema))
            except FileNotFoundError as e:
                if version is not None or attempt == 2:
                    raise StorageError(f"{self.storage.uri}: a data file of the table is missing ({_why(e)})") from e
                dt = self._table()  # compacted and vacuumed under us: read the newer version
            except (OSError, pa.ArrowException) as e:
                raise StorageError(f"{self.storage.uri}: cannot read the table ({_why(e)})") from e
        raise AssertionError("unreachable")

    def counts(self) -> dict[str, int]:
        """Rows per partition value, from the log alone (no data file is read)."""
        if self.partition is None:
            raise ValueError("counts() needs a partitioned table")
        if not self.exists():
            return {}
        actions = pa.table(self._table().get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return {}
        grouped = actions.group_by(f"partition.{self.partition}").aggregate([("num_records", "sum")])
        return {str(v): int(n) for v, n in zip(grouped.column(0).to_pylist(), grouped.column(1).to_pylist(),
                                               strict=True)}

    # ------------------------------------------------------------------------------------ writing

    def _create(self) -> Any:
        from deltalake import DeltaTable

        return DeltaTable.create(
            self._uri, self.schema, mode="ignore", partition_by=[self.partition] if self.partition else None,
            storage_options=self._options, raise_if_key_not_exists=False,
            configuration={"delta.logRetentionDuration": f"interval {RETENTION_HOURS} hours",
                           "delta.deletedFileRetentionDuration": f"interval {RETENTION_HOURS} hours"},
        )

    def upsert(self, rows: pa.Table, *, stored: Mapping[str, str] | None = None) -> None:
        """Write ``rows`` (of the schema): each key's row replaces the stored one (the last of a key
        within ``rows`` wins). ``stored``: every key the table holds → its partition value, if the
        caller knows it (then new keys are appended and known ones MERGEd in their partitions only)."""
        rows = _last_per_key(rows.cast(self.schema), self.key)
        if rows.num_rows == 0:
            return
        self._commit(lambda dt: self._upsert_once(dt, rows, stored))

    def _upsert_once(self, dt: Any, rows: pa.Table, stored: Mapping[str, str] | None) -> None:
        from deltalake import write_deltalake

        if stored is None:
            self._merge(dt, rows, None)
            return
        keys = rows.column(self.key).to_pylist()
        known = pa.array([k in stored for k in keys])
        new, old = rows.filter(pc.invert(known)), rows.filter(known)
        if old.num_rows:
            parts = sorted({stored[k] for k in old.column(self.key).to_pylist()})
            updated = self._merge(dt, old, parts)
            if updated != old.num_rows:  # the ledger was stale: settle these keys by a full MERGE
                self._merge(dt, old, None)
        if new.num_rows:
            write_deltalake(dt, new, mode="append")

    def _merge(self, dt: Any, rows: pa.Table, partitions: Sequence[str] | None) -> int:
        predicate = f"t.{self.key} = s.{self.key}"
        if partitions is not None and self.partition:
            predicate += f" AND t.{self.partition} IN ({', '.join(_quote(p) for p in partitions)})"
        merger = dt.merge(rows, predicate, source_alias="s", target_alias="t", streamed_exec=False)
        merger = merger.when_matched_update_all()
        if partitions is None:
            merger = merger.when_not_matched_insert_all()
        return int(merger.execute().get("num_target_rows_updated", 0))

    def append(self, rows: pa.Table) -> None:
        """Append ``rows`` as they are (no key is replaced: for tables whose rows never change)."""
        from deltalake import write_deltalake

        if rows.num_rows:
            self._commit(lambda dt: write_deltalake(dt, rows.cast(self.schema), mode="append"))

    def delete(self, keys: Sequence[str]) -> None:
        """Remove the rows of ``keys``."""
        if keys and self.exists():
            self._commit(lambda dt: dt.delete(f"{self.key} IN ({', '.join(_quote(k) for k in keys)})"))

    def maintain(self) -> dict[str, int]:
        """Compact small files (a ``clustered`` table: rewrite each partition sorted by key in row groups of
        :data:`ROW_GROUP_ROWS`, so that reads of a few keys skip the rest), remove the files no snapshot of
        the last :data:`RETENTION_HOURS` needs, checkpoint the log and drop old log entries. Returns the
        files before and after."""
        if not self.exists():
            return {"files_before": 0, "files_after": 0}
        dt = self._table()
        before = len(dt.file_uris())
        from deltalake import WriterProperties

        # zstd: rows sorted by key lose the locality that let the default codec compress them well
        props = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="ZSTD")
        if self.clustered:
            self._commit(lambda t: t.optimize.z_order([self.key], target_size=TARGET_FILE_BYTES,
                                                      writer_properties=props))
        else:
            self._commit(lambda t: t.optimize.compact(target_size=TARGET_FILE_BYTES, writer_properties=props))
        dt = self._table()
        try:
            dt.vacuum(retention_hours=RETENTION_HOURS, dry_run=False)
            dt.create_checkpoint()
            dt.cleanup_metadata()
        except Exception as e:
            raise StorageError(f"{self.storage.uri}: cannot clean up the table ({_why(e)})") from e
        return {"files_before": before, "files_after": len(self._table().file_uris())}

    def _commit(self, write: Any) -> None:
        """Run ``write(table)``; retry it on the table's new version when another writer won the race."""
        from deltalake.exceptions import CommitFailedError

        dt = self._writer_table()
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                write(dt)
                return
            except CommitFailedError as e:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise StorageError(f"{self.storage.uri}: commit failed {COMMIT_ATTEMPTS} times ({_why(e)})") from e
                time.sleep(0.05 * 2**attempt)
                dt = self._writer_table()
            except (OSError, ValueError, pa.ArrowException) as e:
                raise StorageError(f"{self.storage.uri}: cannot write the table ({_why(e)})") from e


    def _writer_table(self) -> Any:
        """The table at its latest version: opened once, then only the log entries since are read."""
        if self._writing is None:
            self._writing = self._evolved(self._table()) if self.exists() else self._create()
            return self._writing
        try:
            self._writing.update_incremental()
        except Exception:
            self._writing = self._table()  # e.g. log entries cleaned up meanwhile: open it afresh
        return self._writing

    def _evolved(self, dt: Any) -> Any:
        """``dt`` with the schema's columns that a table of an earlier version lacks added (nullable, at the
        end: their old rows read as null); other columns are never changed."""
        from deltalake.schema import Field

        have = {f.name for f in dt.schema().fields}
        missing = [f for f in self.schema if f.name not in have]
        if missing:
            try:
                dt.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in missing])
            except Exception as e:
                raise StorageError(f"{self.storage.uri}: cannot add the columns {', '.join(f.name for f in missing)} "
                                   f"({_why(e)})") from e
            dt = self._table()
        return dt


def _last_per_key(rows: pa.Table, key: str) -> pa.Table:
    """``rows`` with one row per key: the last one (a MERGE refuses two source rows for one key)."""
    keys = rows.column(key).to_pylist()
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return rows
    return rows.take(sorted(last.values()))


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _why(e: BaseException) -> str:
    from orchestration.store.s3 import scrub

    return scrub(" ".join(str(e).split()) or type(e).__name__)[:300]


class GroupCommitter:
    """The one writer of a :class:`DeltaRows` table in a process that many trials send rows to: each
    :meth:`submit` returns once its rows are committed, and the rows submitted while a commit runs go
    in the next one together (group commit: a handful of commits a second, however many trials report).

    ``routed`` (for the sweep's sole writer only): the ledger (key → partition value of every stored
    row) is read once, when the first batch is committed, and kept up to date by the commits, so that
    every upsert is routed (see :meth:`DeltaRows.upsert`). Without it every upsert is a full MERGE,
    which stays exact when other processes write the same table. ``append``: rows are appended as they
    are (a table whose readers settle repeats). ``maintain_every``: :meth:`DeltaRows.maintain` after
    every that many commits. Nothing is acknowledged before it is committed: a committer that dies
    loses only rows whose senders are still waiting, and they fail (their trial is retried or rerun).
    """

    def __init__(self, table: DeltaRows, *, max_rows: int = 5000, routed: bool = True, append: bool = False,
                 maintain_every: int | None = None) -> None:
        import threading

        self.table, self.max_rows = table, max_rows
        self.routed, self.append, self.maintain_every = routed, append, maintain_every
        self._cond = threading.Condition()
        self._pending: list[pa.Table] = []
        self._batch = 0  # number of the batch that pending rows will go in
        self._done = -1  # last batch committed (or failed)
        self._errors: dict[int, BaseException] = {}
        self._committing = False
        self._ledger: dict[str, str] | None = None
        self.commits = 0

    def submit(self, rows: pa.Table) -> None:
        """Commit ``rows`` (with whatever else is waiting); raise what the commit raised."""
        with self._cond:
            self._pending.append(rows)
            mine = self._batch
            while self._done < mine:
                if not self._committing:
                    self._committing = True
                    break
                self._cond.wait()
            else:
                self._raise_for(mine)
                return
            batch, self._pending, self._batch = self._pending, [], self._batch + 1
        error: BaseException | None = None
        try:
            self._commit(pa.concat_tables(batch))
        except BaseException as e:  # every waiter of the batch gets it
            error = e
            self._ledger = None  # read again: part of the batch may have been committed
        with self._cond:
            if error is not None:
                self._errors[mine] = error
            self._done, self._committing = mine, False
            self._cond.notify_all()
            self._raise_for(mine)

    def delete(self, keys: Sequence[str]) -> None:
        """Remove the rows of ``keys``, between two commits of this writer."""
        with self._alone():
            self.table.delete(keys)
            if self._ledger is not None:
                for k in keys:
                    self._ledger.pop(k, None)

    def maintain(self) -> dict[str, int]:
        """:meth:`DeltaRows.maintain`, between two commits of this writer."""
        with self._alone():
            return self.table.maintain()

    @contextlib.contextmanager
    def _alone(self) -> Iterator[None]:
        with self._cond:
            while self._committing:
                self._cond.wait()
            self._committing = True
        try:
            yield
        finally:
            with self._cond:
                self._committing = False
                self._cond.notify_all()

    def _raise_for(self, batch: int) -> None:
        error = self._errors.get(batch)
        if error is not None:
            raise error

    def _commit(self, rows: pa.Table) -> None:
        for start in range(0, rows.num_rows, self.max_rows):
            part = rows.slice(start, self.max_rows)
            if self.append:
                self.table.append(part)
            elif not self.routed:
                self.table.upsert(part)
            else:
                ledger = self._ledger if self._ledger is not None else self._read_ledger()
                self.table.upsert(part, stored=ledger)
                ledger.update(self._partitions(_last_per_key(part.cast(self.table.schema), self.table.key)))
                self._ledger = ledger
            self.commits += 1
            if self.maintain_every and self.commits % self.maintain_every == 0:
                try:
                    self.table.maintain()
                except StorageError as e:  # the rows are committed; compaction waits for the next round
                    print(f"warning: {e}", file=sys.stderr, flush=True)

    def _read_ledger(self) -> dict[str, str]:
        t = self.table
        return self._partitions(t.read([t.key, t.partition] if t.partition else [t.key]).table)

    def _partitions(self, rows: pa.Table) -> dict[str, str]:
        keys = rows.column(self.table.key).to_pylist()
        part = self.table.partition
        values = rows.column(part).to_pylist() if part else [""] * len(keys)
        return dict(zip(keys, values, strict=True))
