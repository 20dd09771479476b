"""The result store's Delta tables as a sweep uses them (issue 16): maintenance every N commits keeps a
sweep in a handful of files, `deepsad results compact` does it for any sweep (and converts one of the
file-per-trial layout, leaving the old files in place), epochs read once per attempt, and a reader
sees the same rows before and after compaction."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable

from orchestration.store.legacy import write_row_file
from orchestration.store.results import Committer, ResultStore, tables
from orchestration.store.schema import epoch_rows, trial_rows
from orchestration.store.storage import Storage
from tests.orchestration.sweeps_helpers import cli, small_spec, write_spec


def _files(table: Path) -> int:
    return len(DeltaTable(str(table)).file_uris())


def test_the_committer_compacts_every_n_commits(tmp_path: Path) -> None:
    sweep = Storage.from_uri(str(tmp_path / "sweep"))
    committer = Committer(sweep, sole_writer=True, maintain_every=10)
    store = ResultStore(sweep, committer)
    for i in range(19):
        store.write_trial({"trial_key": f"k{i:02d}", "status": "finished", "seed": i})
    # commits 1..10 compacted into one file at the 10th; 9 more appended since
    assert _files(tmp_path / "sweep" / "results" / "trials.delta") == 10
    store.write_trial({"trial_key": "k19", "status": "finished", "seed": 19})
    assert _files(tmp_path / "sweep" / "results" / "trials.delta") == 1
    assert store.trials().column("seed").to_pylist() == list(range(20))


def test_epochs_are_appended_and_read_once_for_the_latest_attempt(tmp_path: Path) -> None:
    sweep = Storage.from_uri(str(tmp_path / "sweep"))
    store = ResultStore(sweep)
    store.write_epochs("k", [{"phase": "sad", "epoch": e, "attempt": 1, "loss": 1.0} for e in (1, 2, 3)])
    store.write_epochs("k", [{"phase": "sad", "epoch": 3, "attempt": 1, "loss": 1.0}])  # a retried commit
    store.write_epochs("k", [{"phase": "sad", "epoch": e, "attempt": 2, "loss": 2.0} for e in (1, 2)])  # a rerun
    store.write_epochs("j", [{"phase": "ae", "epoch": 1, "attempt": 1}, {"phase": "sad", "epoch": 1, "attempt": 1}])
    t = store.epochs()
    assert [(r["trial_key"], r["phase"], r["epoch"], r["attempt"]) for r in t.to_pylist()] == [
        ("j", "ae", 1, 1), ("j", "sad", 1, 1), ("k", "sad", 1, 2), ("k", "sad", 2, 2)]
    assert tables(sweep)[1].read().table.num_rows == 8  # as written


def test_results_compact_converts_an_old_sweep_and_compacts_a_new_one(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, small_spec("old"))
    store_dir = tmp_path / "s"
    sweep = Storage.from_uri(str(store_dir / "old"))
    sweep.write_bytes(spec.read_bytes(), "spec.yaml")
    for i in range(3):  # a sweep of an earlier version: one file per trial
        write_row_file(sweep, trial_rows([{"trial_key": f"k{i}", "status": "finished", "val_auroc": i / 10}]))
        write_row_file(sweep, epoch_rows(f"k{i}", [{"phase": "sad", "epoch": 1, "attempt": 1}]))

    run = cli(["results", "compact", "old", "--storage", str(store_dir)], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "old: trials: " in run.stdout and "-> 1" in run.stdout, run.stdout
    assert "3 trial rows of the file-per-trial layout copied" in run.stderr
    store = ResultStore(sweep)
    assert store.trials().column("trial_key").to_pylist() == ["k0", "k1", "k2"]
    assert store.epochs().num_rows == 3
    assert sorted(p.name for p in (store_dir / "old" / "results" / "trials").iterdir()) == [
        "k0.parquet", "k1.parquet", "k2.parquet"], "the old files are left in place"

    for i in range(3, 8):
        store.write_trial({"trial_key": f"k{i}", "status": "running"})
    before = store.trials()
    assert _files(store_dir / "old" / "results" / "trials.delta") > 1
    run = cli(["results", "compact", "old", "--storage", str(store_dir)], cwd=tmp_path)
    assert run.returncode == 0 and "-> 2" in run.stdout, run.stdout  # one file per status partition
    assert store.trials().equals(before)

    missing = cli(["results", "compact", "nope", "--storage", str(store_dir)], cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: no sweep 'nope'"), missing.stderr


def test_a_key_stored_twice_reads_as_its_latest_attempt(tmp_path: Path) -> None:
    """The sole writer never stores a key twice; should a second writer have raced it (two drivers on
    one sweep), every reader of the store sees one row per key: the latest attempt's."""
    sweep = Storage.from_uri(str(tmp_path / "sweep"))
    trials, _ = tables(sweep)
    trials.append(trial_rows([{"trial_key": "k", "status": "finished", "attempt": 2, "val_auroc": 0.9},
                              {"trial_key": "k", "status": "running", "attempt": 1},
                              {"trial_key": "j", "status": "running", "attempt": 1}]))
    got = ResultStore(sweep).trials().to_pylist()
    assert [(r["trial_key"], r["attempt"]) for r in got] == [("j", 1), ("k", 2)]
    assert ResultStore(sweep).best("val_auroc", 1).column("trial_key").to_pylist() == ["k"]
