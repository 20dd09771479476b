"""The result store (Delta tables): fixed schema, one row per key, readable by pandas, DuckDB and pyarrow."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pytest

from deepsad.errors import StorageError
from orchestration.store.results import EPOCH_SCHEMA, TRIAL_SCHEMA, ResultStore, code_version, tables
from orchestration.store.storage import Storage

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def full_row(key: str = "k1", **over: Any) -> dict[str, Any]:
    row = {
        "sweep": "eta",
        "trial_key": key,
        "trial_id": "abc_00001",
        "status": "finished",
        "error": None,
        "attempt": 1,
        "code_version": "v0-1-gabc",
        "bundle": None,
        "bundle_size": None,
        "dataset": "mnist",
        "normal_classes": [0],
        "known_anomaly_classes": (1, 2),
        "n_known_outlier_classes": 1,
        "n_labeled_anomalies": 60,
        "ratio_known_outlier": 0.01,
        "ratio_pollution": 0.1,
        "ratio_known_normal": 0.0,
        "val_fraction": 0.2,
        "seed": 3,
        "net": "mnist_lenet",
        "rep_dim": 32,
        "eta": 1.0,
        "lr": 1e-4,
        "epochs": 30,
        "weight_decay": 5e-7,
        "batch_size": 128,
        "milestones": [25],
        "ae_lr": 1e-4,
        "ae_epochs": 20,
        "ae_weight_decay": 5e-3,
        "bf16": False,
        "reference_compat": True,
        "params_json": '{"eta":1.0}',
        "method": "deepsad",
        "policy": "tuned",
        "cell": "c0ffee",
        "axes_json": '{"ratio_known_outlier":0.01}',
        "selected": True,
        "inner_trial": 2,
        "fingerprint": "f" * 64,
        "val_auroc": 0.9,
        "val_ap": 0.8,
        "test_auroc": 0.95,
        "test_ap": 0.85,
        "epochs_done": 30,
        "best_epoch": 28,
        "ae_key": "a" * 24,
        "cache_hit": True,
        "ae_seconds": 0.0,
        "ae_seconds_saved": 12.5,
        "sad_seconds": 40.0,
        "total_seconds": 41.0,
        "started_at": T0,
        "finished_at": T0 + dt.timedelta(seconds=41),
        "checkpoint": "/x/checkpoints/k1",
        "device": "cpu",
        "workers": 1,
        "val_auroc_oracle": 0.93,
        "val_ap_oracle": 0.83,
    }
    row.update(over)
    return row


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(Storage.from_uri(tmp_path / "sweep"))


def test_row_round_trip(store: ResultStore) -> None:
    store.write_trial(full_row())
    got = store.row("k1")
    assert got is not None
    assert got == {**full_row(), "known_anomaly_classes": [1, 2]}
    assert got["started_at"].tzinfo is not None and got["started_at"] == T0
    assert store.row("missing") is None


def test_missing_columns_are_null(store: ResultStore) -> None:
    store.write_trial({"trial_key": "k", "status": "running"})
    got = store.row("k")
    assert got is not None and got["status"] == "running"
    assert all(got[c] is None for c in TRIAL_SCHEMA.names if c not in ("trial_key", "status"))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"nonsense": 1}, "unknown column"),
        ({"status": None}, "'status' is required"),
        ({"status": "done"}, "status must be one of"),
        ({"val_auroc": True}, "'val_auroc' .*expected a number"),
        ({"seed": 1.0}, "'seed' .*expected an int"),
        ({"seed": "1"}, "'seed' .*expected an int"),
        ({"bf16": 1}, "'bf16' .*expected a bool"),
        ({"normal_classes": [0, "1"]}, "'normal_classes' .*expected an int"),
        ({"normal_classes": 0}, "'normal_classes' .*expected a list"),
        ({"started_at": dt.datetime(2025, 1, 1)}, "timezone-aware"),
        ({"started_at": "2025-01-01"}, "expected a datetime"),
        ({"seed": 2**70}, "out of the int64 range"),
        ({"trial_key": "../x"}, "invalid trial_key"),
        ({"trial_key": None}, "invalid trial_key"),
    ],
)
def test_bad_rows_are_refused(store: ResultStore, over: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageError, match=message):
        store.write_trial(full_row(**over))
    assert store.trials().num_rows == 0


def test_idempotent_writes_no_duplicate_rows(store: ResultStore) -> None:
    for status in ("running", "failed", "finished"):
        store.write_trial(full_row("k1", status=status))
    store.write_trial(full_row("k2", status="failed"))
    t = store.trials()
    assert t.num_rows == 2
    assert dict(zip(t["trial_key"].to_pylist(), t["status"].to_pylist(), strict=True)) == {
        "k1": "finished",
        "k2": "failed",
    }
    assert store.finished_keys() == {"k1"}


def test_empty_store(store: ResultStore) -> None:
    assert store.trials().schema == TRIAL_SCHEMA and store.trials().num_rows == 0
    assert store.epochs().schema == EPOCH_SCHEMA and store.epochs().num_rows == 0
    assert store.finished_keys() == set()
    assert store.summary() == {
        "trials": 0,
        "by_status": {"finished": 0, "failed": 0, "stopped": 0, "running": 0},
        "cache_hits": 0,
        "ae_seconds": 0.0,
        "ae_seconds_saved": 0.0,
        "total_seconds": 0.0,
    }


def test_three_readers_agree_on_types(store: ResultStore, tmp_path: Path) -> None:
    # Nulls in one file, values in another, empty lists: a schema inferred per file would drift.
    store.write_trial(full_row("a"))
    store.write_trial({"trial_key": "b", "status": "failed", "error": "DataError: x", "normal_classes": []})
    store.write_trial(full_row("c", val_auroc=None, cache_hit=False, started_at=None))
    from deltalake import DeltaTable

    trials = str(tmp_path / "sweep" / "results" / "trials.delta")
    dataset = DeltaTable(trials).to_pyarrow_dataset(
        filesystem=pafs.SubTreeFileSystem(trials, pafs.LocalFileSystem()))  # see store.delta.DeltaRows.read

    df = DeltaTable(trials).to_pandas()
    assert len(df) == 3 and set(df["trial_key"]) == {"a", "b", "c"}
    assert str(df["started_at"].dtype).startswith("datetime64[us, UTC]")
    assert df.set_index("trial_key").loc["a", "val_auroc"] == 0.9

    con = duckdb.connect()
    con.register("trials", dataset)
    rel = con.sql("select trial_key, val_auroc, normal_classes, started_at from trials order by 1")
    assert rel is not None
    assert rel.types == ["VARCHAR", "DOUBLE", "BIGINT[]", "TIMESTAMP WITH TIME ZONE"]
    rows = rel.fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c"] and rows[0][1] == 0.9 and rows[1][2] == []

    table = dataset.to_table().select(TRIAL_SCHEMA.names)
    assert table.num_rows == 3
    assert table.schema.equals(TRIAL_SCHEMA)
    assert store.trials().schema.equals(TRIAL_SCHEMA, check_metadata=True)


def test_epochs(store: ResultStore, tmp_path: Path) -> None:
    # Imported here: the spawned writer processes below import this module, and torch is slow to load.
    from deltalake import DeltaTable

    from deepsad.training import EpochReport

    reports = [EpochReport("ae", e, 2, 1.0 / e, 1e-4, 0.5, 1000.0) for e in (1, 2)]
    reports.append(EpochReport("sad", 1, 1, 0.3, 1e-4, 0.4, 900.0, val_auroc=0.7, val_ap=0.6))
    store.write_epochs("k1", [{**r.to_dict(), "attempt": 1} for r in reports])
    store.write_epochs("k0", [{"phase": "sad", "epoch": 1}])
    store.write_epochs("k0", [{"phase": "sad", "epoch": 1}, {"phase": "sad", "epoch": 2}])  # replaces
    t = store.epochs()
    assert t.schema.equals(EPOCH_SCHEMA)
    assert list(
        zip(t["trial_key"].to_pylist(), t["phase"].to_pylist(), t["epoch"].to_pylist(), strict=True)
    ) == [
        ("k0", "sad", 1),
        ("k0", "sad", 2),
        ("k1", "ae", 1),
        ("k1", "ae", 2),
        ("k1", "sad", 1),
    ]
    assert t.filter(pc.field("phase") == "sad").column("val_auroc").to_pylist() == [None, None, 0.7]
    df = DeltaTable(str(tmp_path / "sweep" / "results" / "epochs.delta")).to_pandas()
    assert len(df) == 6  # as written; readers of the store see each trial's epochs once
    with pytest.raises(StorageError, match="belongs to trial 'other'"):
        store.write_epochs("k1", [{"trial_key": "other", "phase": "ae", "epoch": 1}])
    with pytest.raises(StorageError, match="phase must be one of"):
        store.write_epochs("k1", [{"phase": "warmup", "epoch": 1}])
    with pytest.raises(StorageError, match="'epoch' is required"):
        store.write_epochs("k1", [{"phase": "ae"}])


def test_summary(store: ResultStore) -> None:
    store.write_trial(
        full_row("a", cache_hit=False, ae_seconds=12.5, ae_seconds_saved=0.0, total_seconds=50.0)
    )
    store.write_trial(full_row("b", cache_hit=True, ae_seconds_saved=12.5, total_seconds=41.0))
    store.write_trial(full_row("c", status="stopped", ae_seconds_saved=12.5, total_seconds=None))
    store.write_trial({"trial_key": "d", "status": "failed"})
    assert store.summary() == {
        "trials": 4,
        "by_status": {"finished": 2, "failed": 1, "stopped": 1, "running": 0},
        "cache_hits": 2,
        "ae_seconds": 12.5,
        "ae_seconds_saved": 25.0,
        "total_seconds": 91.0,
    }


def test_hundreds_of_trials(store: ResultStore) -> None:
    for i in range(300):
        store.write_trial(full_row(f"t{i:04d}", status="finished" if i % 3 else "failed", seed=i))
    t = store.trials()
    assert t.num_rows == 300 and t["seed"].to_pylist() == list(range(300))
    assert len(store.finished_keys()) == 200


N_WRITES = 25


def _writer(root: str, worker: int, n: int) -> None:
    """Process body: rewrite the shared key and write own keys, as retried trials would."""
    store = ResultStore(Storage.from_uri(root))
    for i in range(n):
        store.write_trial(
            full_row("shared", trial_id=f"w{worker}-{i}", status="running" if i % 2 else "finished")
        )
        store.write_trial(full_row(f"w{worker}-{i % 5}", attempt=i))  # the same few keys, rewritten


def test_concurrent_writers_never_corrupt_or_duplicate(tmp_path: Path) -> None:
    root = str(tmp_path / "sweep")
    store = ResultStore(Storage.from_uri(root))
    raw, _ = tables(Storage.from_uri(root))
    ctx = mp.get_context("spawn")  # not fork: forking a process that has run pyarrow's threads is unsafe
    procs = [ctx.Process(target=_writer, args=(root, w, N_WRITES)) for w in range(2)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads == 0:
        keys = raw.read(["trial_key"]).table["trial_key"].to_pylist()  # as stored: no reader settles repeats
        assert len(keys) == len(set(keys))
        reads += 1
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    t = store.trials()
    keys = t["trial_key"].to_pylist()
    assert sorted(keys) == sorted(["shared"] + [f"w{w}-{i}" for w in range(2) for i in range(5)])
    shared = store.row("shared")
    assert shared is not None and shared["trial_id"] in {f"w0-{N_WRITES - 1}", f"w1-{N_WRITES - 1}"}
    assert shared["status"] == ("running" if (N_WRITES - 1) % 2 else "finished")  # one writer's last, whole
    assert raw.read(["trial_key"]).table.num_rows == 11
    from deltalake import DeltaTable

    files = DeltaTable(str(tmp_path / "sweep" / "results" / "trials.delta")).file_uris()  # the snapshot's data
    assert files and all(f.endswith(".parquet") and Path(f).is_file() for f in files)


def test_code_version() -> None:
    v = code_version()
    assert isinstance(v, str) and v and "\n" not in v
