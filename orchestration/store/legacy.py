"""The result layout of sweeps written before the Delta tables (issue 16): one Parquet file per trial.

    results/trials/<trial_key>.parquet   exactly one row: the trial's configuration and outcome
    results/epochs/<trial_key>.parquet   that trial's per-epoch history (both phases)

:class:`LegacyTables` reads it, for :class:`~orchestration.store.results.ResultStore`, until the sweep's
first write converts it into the Delta tables (the files are left in place). One bad file never blocks
the others: a row file that cannot be read (zero bytes, torn, not Parquet) is skipped with one warning
line on stderr naming it, and its trial counts as ``corrupt`` — resume and resubmit run it again. A file
that is not named like a row is left alone with a warning. Nothing is ever deleted by a reader.

:func:`write_row_file` writes this layout; only tests and ``benchmarks/bench_store.py`` (which measures
it against the tables) call it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from deepsad.errors import StorageError
from orchestration.store.schema import EPOCH_SCHEMA, KEY_PATTERN, TRIAL_SCHEMA, check_trial_key
from orchestration.store.storage import Storage

#: Reads of a file: attempts, and the first pause between them (doubling), see LegacyTables.read.
READ_ATTEMPTS = 5
READ_RETRY_S = 0.05


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
    corrupt: tuple[UnreadableFile, ...] = ()
    strays: tuple[UnreadableFile, ...] = ()


class LegacyTables:
    """The file-per-trial tables of one sweep directory (read only)."""

    def __init__(self, storage: Storage) -> None:
        self.trials = storage.child("results", "trials")
        self.epochs = storage.child("results", "epochs")

    def exists(self) -> bool:
        return self.trials.exists()

    def _dataset(self, where: Storage, schema: pa.Schema) -> pads.Dataset | None:
        if not where.exists():
            return None
        try:
            # One discovery over the directory; pyarrow reads the files in parallel. Files starting with
            # "." or "_" (temp files) are ignored by default.
            return pads.dataset(where.root, schema=schema, format="parquet", filesystem=where.filesystem)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage {where.uri}: cannot open result table ({e})") from e

    def read(self, where: Storage, schema: pa.Schema, **scan: Any) -> TableRead:
        """Discover and read the table; skip (and report) the files that are not readable rows.

        The fast path reads every file at once. When that fails, each file is read on its own, whole
        (up to :data:`READ_ATTEMPTS` times): discovery records every file's size and S3 reads trust it,
        so a row replaced between the listing and the read fails the fast path — "Parquet magic bytes
        not found" — and reads fine on its own. A file that fails every attempt is corrupt: it is
        skipped with one warning on stderr (once per process) and named in :attr:`TableRead.corrupt`;
        nothing is deleted. Files that are not named like a row (``<trial key>.parquet``) are left alone
        and warned about (:attr:`TableRead.strays`).
        """
        columns = scan.get("columns")
        empty = (pa.schema([schema.field(c) for c in columns]) if columns else schema).empty_table()
        ds = self._dataset(where, schema)
        if ds is None:
            return TableRead(empty)
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

    def read_trials(self, **scan: Any) -> TableRead:
        return self.read(self.trials, TRIAL_SCHEMA, **scan)

    def read_epochs(self) -> TableRead:
        return self.read(self.epochs, EPOCH_SCHEMA)

    def row(self, trial_key: str) -> dict[str, Any] | None:
        """The row of ``trial_key``, or None if never written — or if its file cannot be read (a warning
        says so)."""
        key = check_trial_key(trial_key)
        name = f"{key}.parquet"
        if not self.trials.exists(name):
            return None
        try:
            data = self.trials.read_bytes(name)
        except StorageError:
            if not self.trials.exists(name):
                return None  # removed between our look and the read
            raise
        try:
            rows = _parse_row_file(data, TRIAL_SCHEMA).to_pylist()
            if len(rows) != 1:
                raise ValueError(f"expected 1 row, found {len(rows)}")
        except (OSError, pa.ArrowException, ValueError) as e:
            bad = UnreadableFile(f"{self.trials.uri}/{name}", name, key, _why(e))
            _warn_once(bad, f"warning: {bad.uri}: not a readable trial row ({bad.reason}); treated as absent, left "
                            "in place")
            return None
        return dict(rows[0])


def write_row_file(storage: Storage, rows: pa.Table) -> None:
    """Write ``rows`` (of one trial, of :data:`TRIAL_SCHEMA` or :data:`EPOCH_SCHEMA`) in this layout under
    the sweep directory ``storage``: the trial's row, or its whole epoch history, replaced atomically."""
    table = "trials" if rows.schema.metadata.get(b"deepsad.table") == b"trials" else "epochs"
    (key,) = set(rows.column("trial_key").to_pylist())
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    storage.child("results", table).write_bytes(bytes(sink.getvalue().to_pybytes()), f"{check_trial_key(key)}.parquet")


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
        if "/" not in name and stem and KEY_PATTERN.fullmatch(stem):
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
