"""In a sweep of the file-per-trial layout (that of earlier versions), one bad file blocks nothing:
`sweep status`, `results show`, `checkpoint pull` and `report` read every other trial (one warning line
per bad file on stderr), status counts the trial as corrupt, nothing is deleted — and `sweep resume`
converts the sweep to the Delta tables and runs that trial again. In the Delta tables, a data file that
cannot be read is a fault of the storage: every reader says which file in one line, exit 2.

The sweep directory is made without Ray (``execute`` runs both trials of a small grid, the way a Tune
trial does); the commands run through the real entry point. Resuming needs Ray: that test is marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration.jobs.base import RunContext
from orchestration.jobs.kinds import execute
from orchestration.plan.cells import enumerate_cells
from orchestration.spec.load import parse_spec
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.jobs.test_trial import FakeReporter
from tests.orchestration.sweeps_helpers import cli, rows, small_spec, to_file_per_trial, write_spec

NAME = "bad"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-trial sweep under ``<tmp>/s``, as `deepsad sweep submit` leaves it."""
    root = tmp_path_factory.mktemp("corrupt")
    spec_text = yaml.safe_dump(small_spec(NAME))
    spec = parse_spec(spec_text, f"{NAME}.yaml")
    sweep_dir = Storage.from_uri(str(root / "s" / NAME))
    sweep_dir.write_bytes(spec_text.encode(), "spec.yaml")
    sweep_dir.write_bytes(json.dumps({"source": f"{NAME}.yaml", "base_dir": str(root)}).encode(), "submission.json")
    ctx = RunContext(sweep=NAME, storage_uri=sweep_dir.uri, checkpoint_interval_s=0.0)
    for cell in enumerate_cells(spec):
        execute([cell], FakeReporter(root / "snapshots" / cell.key), ctx)
    to_file_per_trial(root / "s" / NAME)
    return root


def _damaged(sweep: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the sweep whose second-best trial's row file is empty, plus a stray file; returns the
    store, the damaged key and the intact (best) key."""
    import shutil

    store = tmp_path / "s"
    shutil.copytree(sweep / "s", store)
    got = sorted(rows(store, NAME), key=lambda r: -r["val_auroc"])
    best, other = got[0]["trial_key"], got[1]["trial_key"]
    (store / NAME / "results" / "trials" / f"{other}.parquet").write_bytes(b"")
    (store / NAME / "results" / "trials" / "README.txt").write_text("notes, not a row")
    return store, other, best


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def _one_warning_per_file(stderr: str, store: Path, bad: str) -> None:
    lines = _warnings(stderr)
    trials = store / NAME / "results" / "trials"
    assert len(lines) == 2, stderr
    assert any(line.startswith(f"warning: {trials}/{bad}.parquet: not a readable trial row (") for line in lines)
    assert any(line.startswith(f"warning: {trials}/README.txt: not a row of this table") for line in lines)


def test_status_counts_a_corrupt_trial_and_shows_the_others(sweep: Path, tmp_path: Path) -> None:
    store, bad, good = _damaged(sweep, tmp_path)
    run = cli(["sweep", "status", NAME, "--storage", str(store)], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 corrupt, 1 finished" in run.stdout, run.stdout
    assert bad in run.stdout and good in run.stdout
    assert f"deepsad sweep resume {NAME}" in run.stdout
    _one_warning_per_file(run.stderr, store, bad)
    assert (store / NAME / "results" / "trials" / f"{bad}.parquet").exists(), "nothing is deleted"
    assert (store / NAME / "results" / "trials" / "README.txt").read_text() == "notes, not a row"


def test_results_show_lists_the_readable_trials(sweep: Path, tmp_path: Path) -> None:
    store, bad, good = _damaged(sweep, tmp_path)
    run = cli(["results", "show", NAME, "--storage", str(store), "--format", "json"], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [r["trial_key"] for r in json.loads(run.stdout)] == [good]
    _one_warning_per_file(run.stderr, store, bad)


def test_checkpoint_pull_chooses_among_the_readable_trials(sweep: Path, tmp_path: Path) -> None:
    store, bad, good = _damaged(sweep, tmp_path)
    run = cli(["checkpoint", "pull", NAME, "--storage", str(store), "--to", str(tmp_path / "best")], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "best" / "selection.json").read_text())["trial_key"] == good
    _one_warning_per_file(run.stderr, store, bad)


def test_report_is_written_from_the_readable_trials(sweep: Path, tmp_path: Path) -> None:
    store, bad, _ = _damaged(sweep, tmp_path)
    run = cli(["report", NAME, "--storage", str(store), "--out", str(tmp_path / "report")], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "report" / "report.md").is_file() and "1 trials" in run.stdout
    _one_warning_per_file(run.stderr, store, bad)


@pytest.mark.integration
@pytest.mark.slow
def test_resume_and_resubmit_run_a_corrupt_trial_again(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, small_spec(NAME, resources__max_concurrent_trials=1))
    store = tmp_path / "s"
    first = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {r["trial_key"]: r for r in rows(store, NAME)}
    bad, good = sorted(before)
    to_file_per_trial(store / NAME)
    trials = store / NAME / "results" / "trials"
    (trials / f"{bad}.parquet").write_bytes(b"PAR1 torn")
    (trials / "README.txt").write_text("notes")

    resumed = cli(["sweep", "resume", NAME, "--storage", str(store)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = {r["trial_key"]: r for r in _readable(store)}
    assert set(after) == {bad, good} and {r["status"] for r in after.values()} == {"finished"}
    assert after[good]["started_at"] == before[good]["started_at"], "a finished trial was rerun"
    assert after[bad]["started_at"] > before[bad]["started_at"], "the corrupt trial ran again"
    assert ResultStore(Storage.from_uri(str(store / NAME))).corrupt_keys() == set()
    assert (trials / "README.txt").read_text() == "notes", "a stray file is left alone"

    to_file_per_trial(store / NAME)
    (trials / f"{good}.parquet").write_bytes(b"")  # and a resubmit runs a corrupt trial again too
    again = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    final = {r["trial_key"]: r for r in _readable(store)}
    assert final[good]["started_at"] > after[good]["started_at"]
    assert final[bad]["started_at"] == after[bad]["started_at"]


def test_a_torn_data_file_of_the_table_is_one_line_naming_it(sweep: Path, tmp_path: Path) -> None:
    """The Delta tables: a reader that meets a data file it cannot read fails with one line naming the
    table and the file (exit 2, no traceback), and deletes nothing."""
    import shutil

    store = tmp_path / "s"
    shutil.copytree(sweep / "s", store)
    ResultStore(Storage.from_uri(str(store / NAME))).maintain()  # converts the sweep: one data file
    from deltalake import DeltaTable

    (uri,) = DeltaTable(str(store / NAME / "results" / "trials.delta")).file_uris()
    data = Path(uri)
    data.write_bytes(data.read_bytes()[:-20])
    for args in (["sweep", "status", NAME], ["results", "show", NAME]):
        run = cli([*args, "--storage", str(store)], cwd=tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        (line,) = run.stderr.strip().splitlines()
        assert line.startswith("error: ") and "trials.delta" in line and data.name in line, line
        assert "Traceback" not in run.stderr
    assert data.exists()


def _readable(store: Path) -> list[dict[str, Any]]:
    return list(ResultStore(Storage.from_uri(str(store / NAME))).trials().to_pylist())
