"""`orchestration.store.delta.DeltaRows`, the Delta Lake table layer of the result store (issue 16), on
a local directory and on real S3 servers (moto, SeaweedFS; ``integration``): one row per key by
upsert, partitions moved by MERGE, pinned snapshots while a writer commits, counts from the log alone,
compaction that keeps every row, concurrent writers that lose no row, and readers other than ours."""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from orchestration.store.delta import DeltaRows
from orchestration.store.results import TRIAL_SCHEMA
from orchestration.store.storage import Storage

NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def rows(keys: list[str], status: str, auroc: float = 0.5) -> pa.Table:
    return pa.Table.from_pylist(
        [{"trial_key": k, "status": status, "val_auroc": auroc, "normal_classes": [0, 1], "started_at": NOW,
          "params_json": '{"eta": 1.0}'} for k in keys], schema=TRIAL_SCHEMA)  # fmt: skip


def table_of(storage: Storage) -> DeltaRows:
    return DeltaRows(storage.child("trials"), TRIAL_SCHEMA, key="trial_key", partition="status")


def by_key(t: DeltaRows) -> dict[str, dict[str, Any]]:
    got = t.read().table.to_pylist()
    assert len(got) == len({r["trial_key"] for r in got}), "a key has two rows"
    return {r["trial_key"]: r for r in got}


def test_upserts_keep_one_row_per_key_and_move_partitions(any_storage: Storage) -> None:
    t = table_of(any_storage)
    assert not t.exists() and t.read().table.num_rows == 0 and t.counts() == {}
    t.upsert(rows(["a", "b", "c"], "running"), stored={})
    assert t.counts() == {"running": 3}
    # the writer's ledger routes a.finished into a MERGE of the running partition only
    t.upsert(rows(["a"], "finished", 0.9), stored={"a": "running", "b": "running", "c": "running"})
    # without a ledger: a full MERGE; the last row of a key within one batch wins
    t.upsert(pa.concat_tables([rows(["b"], "failed", 0.1), rows(["b"], "stopped", 0.2), rows(["d"], "running")]))
    # a stale ledger (it says b is running) is settled by a full MERGE, not by a second row
    t.upsert(rows(["b"], "finished", 0.3), stored={"b": "running"})
    got = by_key(t)
    assert {k: (r["status"], r["val_auroc"]) for k, r in got.items()} == {
        "a": ("finished", 0.9), "b": ("finished", 0.3), "c": ("running", 0.5), "d": ("running", 0.5)}
    assert t.counts() == {"finished": 2, "running": 2}
    assert got["a"]["normal_classes"] == [0, 1] and got["a"]["started_at"] == NOW
    assert t.read().table.schema == TRIAL_SCHEMA
    t.delete(["d"])
    assert set(by_key(t)) == {"a", "b", "c"}


def test_a_pinned_snapshot_reads_the_same_rows_after_commits_and_compaction(any_storage: Storage) -> None:
    t = table_of(any_storage)
    for i in range(5):
        t.upsert(rows([f"k{i}"], "running"), stored={f"k{j}": "running" for j in range(i)})
    pinned = t.read()
    t.upsert(rows(["k0", "k1"], "finished", 0.8), stored={f"k{j}": "running" for j in range(5)})
    files = t.maintain()
    assert files["files_after"] < files["files_before"]
    again = t.read(version=pinned.version)
    assert again.table.sort_by("trial_key").equals(pinned.table.sort_by("trial_key"))
    latest = t.read(["trial_key", "status"])
    assert latest.version > pinned.version and latest.table.num_rows == 5
    assert t.counts() == {"finished": 2, "running": 3}


def _writer(root: str, who: int, n: int) -> None:
    t = table_of(Storage.from_uri(root))
    for i in range(n):
        t.upsert(rows([f"w{who}-{i}", "shared"], "finished", float(who)))


@pytest.mark.slow
def test_two_processes_writing_at_once_lose_no_row(any_storage: Storage) -> None:
    """Two writers racing for the same table (locally: atomic renames; on S3: conditional writes, which
    moto and SeaweedFS both honour): every commit lands once, a lost race is retried on the new version."""
    root = any_storage.uri
    table_of(Storage.from_uri(root)).upsert(rows(["shared"], "running"), stored={})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, who, 6)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = by_key(table_of(Storage.from_uri(root)))
    assert set(got) == {"shared"} | {f"w{w}-{i}" for w in (1, 2) for i in range(6)}
    assert got["shared"]["status"] == "finished"


def test_other_readers_see_the_table(tmp_path: Path) -> None:
    """What the README tells users: deltalake, polars, pandas and duckdb read the table as it is."""
    from deltalake import DeltaTable

    root = tmp_path / "sweep"
    t = table_of(Storage.from_uri(root))
    t.upsert(rows(["a", "b"], "running"), stored={})
    t.upsert(rows(["a"], "finished", 0.75), stored={"a": "running", "b": "running"})
    frame = DeltaTable(str(root / "trials")).to_pandas(columns=["trial_key", "status", "val_auroc"])
    assert sorted(map(tuple, frame.values.tolist())) == [("a", "finished", 0.75), ("b", "running", 0.5)]
    import duckdb

    # with pyarrow's file system: delta-rs' default one can abort the process at exit (delta-rs #2184)
    ds = DeltaTable(str(root / "trials")).to_pyarrow_dataset(
        filesystem=pafs.SubTreeFileSystem(str(root / "trials"), pafs.LocalFileSystem()))
    con = duckdb.connect()
    con.register("trials", ds)
    assert con.execute("select trial_key from trials order by val_auroc desc limit 1").fetchall() == [("a",)]


def test_group_commit_acknowledges_each_row_once_committed_in_few_commits(tmp_path: Path) -> None:
    """The driver's one writer: 16 threads × 5 submissions, each acknowledged only once committed;
    concurrent submissions share commits; every key has exactly one row, its last."""
    import threading

    from orchestration.store.delta import GroupCommitter

    t = table_of(Storage.from_uri(tmp_path / "sweep"))
    committer = GroupCommitter(t)
    acked: list[str] = []

    def trial(i: int) -> None:
        for step, status in enumerate(("running", "running", "running", "running", "finished")):
            committer.submit(rows([f"t{i}"], status, auroc=float(step)))
            # acknowledged: the row is in the table (a reader in another process would see it)
            acked.append(f"t{i}:{status}")

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(acked) == 80
    got = by_key(t)
    assert set(got) == {f"t{i}" for i in range(16)}
    assert all(r["status"] == "finished" and r["val_auroc"] == 4.0 for r in got.values())
    assert committer.commits < 80, "concurrent submissions were not grouped"
    assert t.counts() == {"finished": 16}


def test_a_failed_group_commit_fails_its_senders_and_the_next_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.store.delta import GroupCommitter

    t = table_of(Storage.from_uri(tmp_path / "sweep"))
    committer = GroupCommitter(t)
    committer.submit(rows(["a"], "running"))
    real = DeltaRows.upsert

    def broken(self: DeltaRows, *a: Any, **k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(DeltaRows, "upsert", broken)
    with pytest.raises(OSError, match="disk full"):
        committer.submit(rows(["a"], "finished", 0.9))
    monkeypatch.setattr(DeltaRows, "upsert", real)
    assert by_key(t)["a"]["status"] == "running", "a failed commit was acknowledged"
    committer.submit(rows(["a"], "finished", 0.9))
    assert by_key(t)["a"]["status"] == "finished" and t.counts() == {"finished": 1}


def test_a_table_of_an_earlier_schema_reads_and_gains_the_new_columns_when_written(any_storage: Storage) -> None:
    # a sweep written before val_auroc_oracle / val_ap_oracle existed (the last columns of the schema)
    old_schema = pa.schema([f for f in TRIAL_SCHEMA if not f.name.endswith("_oracle")])
    assert len(old_schema) == len(TRIAL_SCHEMA) - 2
    old = DeltaRows(any_storage.child("trials"), old_schema, key="trial_key", partition="status")
    old.upsert(rows(["a"], "finished", 0.9).select(old_schema.names), stored={})
    t = table_of(any_storage)
    assert by_key(t)["a"]["val_auroc_oracle"] is None  # read with today's schema: the new column is null
    t.upsert(rows(["b"], "finished", 0.8).set_column(TRIAL_SCHEMA.get_field_index("val_auroc_oracle"),
                                                     TRIAL_SCHEMA.field("val_auroc_oracle"), pa.array([0.7])))  # fmt: skip
    got = by_key(t)
    assert (got["a"]["val_auroc"], got["a"]["val_auroc_oracle"]) == (0.9, None)
    assert (got["b"]["val_auroc"], got["b"]["val_auroc_oracle"]) == (0.8, 0.7)
    assert t.read().table.schema == TRIAL_SCHEMA


def test_maintenance_sorts_a_clustered_table_by_key_in_small_row_groups(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets `results show --top` read a few keys of a million rows: after maintenance every row group
    covers its own narrow range of keys, so a keyed read skips the others by their statistics."""
    import random

    import pyarrow.parquet as pq

    from orchestration.store import delta

    monkeypatch.setattr(delta, "ROW_GROUP_ROWS", 100)
    rng = random.Random(0)
    keys = [f"{rng.getrandbits(64):016x}" for _ in range(1000)]  # trial keys: hex digests
    t = DeltaRows(Storage.from_uri(str(tmp_path)).child("trials"), TRIAL_SCHEMA, key="trial_key",
                  partition="status", clustered=True)  # fmt: skip
    for i in range(0, 1000, 250):  # four commits of keys in no order
        t.upsert(rows(keys[i : i + 250], "finished"))
    t.maintain()
    (path,) = [p for p in (tmp_path / "trials").rglob("*.parquet") if str(p) in {u.removeprefix("file://")
                                                                                  for u in t._table().file_uris()}]
    meta = pq.ParquetFile(path).metadata
    ranges = [(meta.row_group(g).column(meta.schema.names.index("trial_key")).statistics.min,
               meta.row_group(g).column(meta.schema.names.index("trial_key")).statistics.max)
              for g in range(meta.num_row_groups)]  # fmt: skip
    assert meta.num_rows == 1000 and meta.num_row_groups == 10
    ordered = sorted(ranges)  # (Z-order's curve need not store the groups in key order: disjoint is what counts)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ordered)), ranges
    assert set(by_key(t)) == set(keys)
