"""`deepsad sweep ...` and `deepsad results show` through the real command line, without Ray.

Every command runs in a fresh interpreter (as a user runs it) through a small wrapper that calls
``orchestration.cli.app.main`` and then prints which heavy modules the command imported, so that the
tests can prove that a bad input starts no Ray and that ``--help`` stays light.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration.plan.cells import enumerate_cells
from orchestration.spec.load import parse_spec
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
from orchestration.store.storage import Storage
from tests.conftest import REPO
from tests.orchestration.sweeps_helpers import TEST_ENV, small_spec, write_spec

BAD = Path(__file__).parents[1] / "bad_specs"
MARK = "@@imported "

# Runs the CLI, then reports on stdout which of ray/torch it imported (stderr stays the CLI's own).
WRAPPER = f"""
import json, sys
from orchestration.cli.app import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print({MARK!r} + json.dumps({{m: m in sys.modules for m in ("ray", "torch")}}), flush=True)
sys.exit(code)
"""


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str  # without the wrapper's line
    stderr: str
    imported: dict[str, bool]
    seconds: float


def deepsad(args: list[str], cwd: Path) -> Outcome:
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO)}
    env.pop("DEEPSAD_DEBUG", None)  # it turns one-line errors into tracebacks
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.monotonic() - t0
    lines = run.stdout.splitlines()
    assert lines and lines[-1].startswith(MARK), f"the wrapper did not finish:\n{run.stdout}\n{run.stderr}"
    return Outcome(
        run.returncode, "\n".join(lines[:-1]), run.stderr, json.loads(lines[-1][len(MARK) :]), seconds
    )


# --------------------------------------------------------------------------- bad input: one line, exit 2


@dataclass(frozen=True)
class Bad:
    """A bad ``sweep submit``: the spec file (a file in bad_specs/, or ``@name`` for one that
    ``MAKERS[name]`` writes), extra arguments, and what its one error line must name besides
    ``error: `` (``{spec}``: the file's path, ``{tmp}``: the test's directory)."""

    spec: str
    names: tuple[str, ...]
    args: tuple[str, ...] = ()
    spec_error: bool = True  # the spec is wrong: nothing at all may be written to the storage


#: More 1-CPU trials at once than this machine has CPUs (8 on the 2-core machines of CI).
TOO_MANY = max(8, (os.cpu_count() or 1) + 1)


def _concurrency(tmp: Path) -> Path:
    return write_spec(tmp, small_spec("toomany", resources__max_concurrent_trials=TOO_MANY))


def _good(tmp: Path) -> Path:
    return write_spec(tmp, small_spec("good"))


MAKERS = {"concurrency": _concurrency, "good": _good}

CASES = {
    "unknown field": Bad(
        "unknown_field.yaml", ("{spec}", "train.epoch", "unknown field", "did you mean epochs?")
    ),
    "wrong type": Bad("wrong_type.yaml", ("{spec}", "train.epochs", "must be an integer", "(got ten)")),
    "empty search space": Bad("empty_space.yaml", ("{spec}", "search.space", "empty", "(got {})")),
    "eta <= 0": Bad("eta_fixed_zero.yaml", ("{spec}", "train.eta", "must be > 0", "(got 0)")),
    "searched eta <= 0": Bad(
        "eta_low_negative.yaml", ("{spec}", "search.space.eta.low", "must be > 0", "(got -1)")
    ),
    "rep_dim < 1": Bad("rep_dim_zero.yaml", ("{spec}", "net.rep_dim", "must be >= 1", "(got 0)")),
    "test metric as objective": Bad(
        "test_metric.yaml", ("{spec}", "search.objective.metric", "(got test_auroc)")
    ),
    "unknown data set": Bad(
        "unknown_dataset.yaml", ("{spec}", "data.dataset", "unknown data set", "(got mnsit)")
    ),
    "missing spec file": Bad(
        "no_such_sweep.yaml",
        (
            "{spec}",
            "file not found",
        ),
    ),
    # the spec is fine; this machine cannot run TOO_MANY trials of 1 CPU at once
    "more concurrency than CPUs": Bad(
        "@concurrency",
        (
            "{spec}",
            "resources.max_concurrent_trials",
            f"{TOO_MANY} concurrent trials",
            f"but {os.cpu_count()} {'is' if os.cpu_count() == 1 else 'are'} available",
        ),
        spec_error=False,
    ),
    # the storage lies below a regular file
    "storage not writable": Bad(
        "@good",
        ("--storage", "{tmp}/a-file/store", "not writable"),
        args=("--storage", "{tmp}/a-file/store"),
        spec_error=False,
    ),
}


@pytest.mark.integration  # each case imports torch in a fresh interpreter: about 2 s on 2 cores
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_submit_prints_one_error_line_exits_2_and_starts_nothing(case: str, tmp_path: Path) -> None:
    bad = CASES[case]
    spec = MAKERS[bad.spec[1:]](tmp_path) if bad.spec.startswith("@") else BAD / bad.spec
    (tmp_path / "a-file").write_text("not a directory")
    store = tmp_path / "store"
    args = [a.replace("{tmp}", str(tmp_path)) for a in bad.args] or ["--storage", str(store)]
    got = deepsad(["sweep", "submit", str(spec), *args], cwd=tmp_path)

    assert got.code == 2, f"exit {got.code}\nstdout:\n{got.stdout}\nstderr:\n{got.stderr}"
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), got.stderr
    for needle in (n.replace("{spec}", str(spec)).replace("{tmp}", str(tmp_path)) for n in bad.names):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not got.imported["ray"], "a bad input imported (and maybe started) Ray"
    if bad.spec_error:
        assert not store.exists(), f"a bad spec wrote to the storage: {sorted(store.rglob('*'))}"
    else:
        assert not (store / "toomany").exists() and not (store / "good").exists(), (
            "a sweep directory was made"
        )


# --------------------------------------------------------------------------- help stays light


@pytest.mark.parametrize(
    "args",
    [["--help"], ["sweep", "--help"], ["sweep", "submit", "--help"], ["results", "show", "--help"]],
    ids=" ".join,
)
def test_help_imports_neither_torch_nor_ray(args: list[str], tmp_path: Path) -> None:
    """What keeps `--help` quick: no heavy import (its time is benchmarks/bench_cli.py's, not a test's)."""
    got = deepsad(args, cwd=tmp_path)
    assert got.code == 0 and got.stderr == "", got.stderr
    assert "Usage" in got.stdout
    assert got.imported == {"ray": False, "torch": False}


def test_sweep_help_lists_its_commands(tmp_path: Path) -> None:
    got = deepsad(["sweep", "--help"], cwd=tmp_path)
    for command in ("submit", "resume", "status"):
        assert command in got.stdout


# --------------------------------------------------------------------------- status and results of a sweep on disk


NAME = "fabricated"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A sweep directory as `sweep submit` leaves it, written without Ray: the spec and three of its
    four trials' rows (one finished well, one finished worse, one failed; one never started)."""
    root = tmp_path_factory.mktemp("fabricated")
    spec_dict = small_spec(NAME, seeds=[0, 1])
    text = yaml.safe_dump(spec_dict, sort_keys=False)
    sweep = root / "store" / NAME
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(text)
    (sweep / "submission.json").write_text(json.dumps({"source": f"{NAME}.yaml", "base_dir": str(root)}))
    cells = enumerate_cells(parse_spec(text, f"{NAME}.yaml", base_dir=root))
    assert len(cells) == 4
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = []
    for i, (cell, status, auroc) in enumerate(
        zip(cells, ["finished", "finished", "failed"], [0.9, 0.8, None], strict=False)
    ):
        row: dict[str, Any] = {
            "sweep": NAME,
            "trial_key": cell.key,
            "status": status,
            "attempt": 1 + (status == "failed"),
            **cell.columns(),
            "params_json": json.dumps(cell.params, sort_keys=True),
            "started_at": start + timedelta(minutes=i),
            "finished_at": start + timedelta(minutes=i, seconds=30),
            "val_auroc": auroc,
            "test_auroc": None if auroc is None else auroc - 0.05,
            "epochs_done": 6 if auroc else 2,
            "cache_hit": i == 1,
            "error": "InjectedFault: injected fault at sad_epoch epoch 2" if status == "failed" else None,
        }
        ResultStore(Storage.from_uri(str(sweep))).write_trial(row)
        rows.append(row)
    return root, rows


@pytest.mark.integration  # the command builds the cells, so it imports torch: over 2 s on 2 cores
def test_sweep_status_shows_counts_and_every_trial(sweep_dir: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = sweep_dir
    got = deepsad(["sweep", "status", NAME, "--storage", str(root / "store")], cwd=root)
    assert got.code == 0 and got.stderr == "", got.stderr
    assert f"{NAME} · grid · 4 trials planned · 1 failed, 2 finished" in got.stdout
    for row in rows:
        assert row["trial_key"] in got.stdout
    assert "InjectedFault" in got.stdout and "hit" in got.stdout
    assert not got.imported["ray"]


def test_results_show_csv_has_every_column_best_first(sweep_dir: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = sweep_dir
    got = deepsad(["results", "show", NAME, "--storage", str(root / "store"), "--format", "csv"], cwd=root)
    assert got.code == 0 and got.stderr == "", got.stderr
    table = list(csv.DictReader(io.StringIO(got.stdout)))
    assert list(table[0]) == TRIAL_SCHEMA.names
    assert [r["trial_key"] for r in table] == [r["trial_key"] for r in rows]  # by val_auroc, failed last
    assert [r["status"] for r in table] == ["finished", "finished", "failed"]
    assert float(table[0]["val_auroc"]) == 0.9 and table[2]["val_auroc"] == ""
    assert json.loads(table[0]["normal_classes"]) == [0, 1, 2, 3, 4]  # lists as JSON
    assert not got.imported["ray"]
    assert not got.imported["torch"]  # reading rows needs no cells: a quick command


def test_results_show_json_top_k(sweep_dir: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = sweep_dir
    store = str(root / "store")
    got = deepsad(["results", "show", NAME, "--storage", store, "--format", "json", "--top", "2"], cwd=root)
    assert got.code == 0 and got.stderr == "", got.stderr
    best = json.loads(got.stdout)
    assert [r["trial_key"] for r in best] == [rows[0]["trial_key"], rows[1]["trial_key"]]
    assert best[0]["val_auroc"] == 0.9 and best[0]["params_json"] == rows[0]["params_json"]
    assert best[0]["started_at"].startswith("2026-01-02 03:04:05")
    assert not got.imported["ray"]
    assert not got.imported["torch"]


def test_a_big_search_sweep_answers_without_torch_and_lists_what_needs_a_look(tmp_path: Path) -> None:
    """A TPE sweep of 60 trials: ``status`` counts all, lists the unfinished ones (past 50 trials) with
    their whole keys, and neither it nor ``results show --top`` imports torch (nothing to plan)."""
    sweep = tmp_path / "store" / "big"
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text((REPO / "sweeps" / "quickstart.yaml").read_text()
                                     .replace("name: quickstart\n", "name: big\n", 1))
    store = ResultStore(Storage.from_uri(str(sweep)))
    keys = [f"{i:016x}" for i in range(60)]
    for i, key in enumerate(keys):
        store.write_trial({"trial_key": key, "status": "running" if i % 20 == 7 else "finished",
                           "val_auroc": None if i % 20 == 7 else i / 100})
    got = deepsad(["sweep", "status", "big", "--storage", str(tmp_path / "store")], cwd=tmp_path)
    assert got.code == 0 and got.stderr == "", got.stderr
    assert "big · tpe · 6 trials planned · 57 finished, 3 running" in got.stdout
    assert [k for k in keys if k in got.stdout] == [keys[7], keys[27], keys[47]]
    assert "57 more trials not listed" in got.stdout
    assert got.imported == {"ray": False, "torch": False}
    top = deepsad(["results", "show", "big", "--storage", str(tmp_path / "store"), "--top", "2"], cwd=tmp_path)
    assert top.code == 0 and top.stderr == "", top.stderr
    assert [k for k in keys if k in top.stdout] == [keys[58], keys[59]]  # whole keys, never shortened
    assert top.stdout.index(keys[59]) < top.stdout.index(keys[58])
    assert top.imported == {"ray": False, "torch": False}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["results", "show", NAME, "--format", "xml"], ["--format", "(got xml)"]),
        (["results", "show", NAME, "--top", "0"], ["--top", "(got 0)"]),
        (["results", "show", "nosuch"], ["'nosuch'", "{store}"]),
        (["sweep", "status", "nosuch"], ["'nosuch'", "{store}"]),
    ],
    ids=["bad format", "bad top", "unknown sweep", "status of an unknown sweep"],
)
def test_bad_results_arguments_print_one_error_line(
    args: list[str], names: list[str], sweep_dir: tuple[Path, list[dict[str, Any]]]
) -> None:
    root, _ = sweep_dir
    store = str(root / "store")
    got = deepsad([*args, "--storage", store], cwd=root)
    lines = got.stderr.splitlines()
    assert got.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), got.stderr
    for needle in names:
        assert needle.replace("{store}", store) in lines[0], lines[0]
    assert not got.imported["ray"]
