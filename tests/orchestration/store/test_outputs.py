"""One output rule for every command that writes (issue 12, item 3): ``train``, ``export``, ``score``,
``report`` and ``checkpoint pull`` each refuse an empty path, never replace anything without ``--force``,
with ``--force`` replace only their own earlier output, and leave nothing behind when they fail.

The matrix runs each command through the real command line (``orchestration.cli.app.main``) on real inputs: a
trained digits model, a pulled directory, a hand-made result store.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deepsad.errors import ConfigError, StorageError
from orchestration.store.outputs import OutputDir, OutputFile, output_path
from tests.orchestration.cli.test_train_cli import run_cli as run
from tests.orchestration.deploy.test_export import DIGITS_PROTOCOL, train_pulled_dir
from tests.orchestration.deploy.test_registry import STEADY, make_store
from tests.orchestration.report.test_report import NAME as REPORT_SWEEP
from tests.orchestration.report.test_report import SPEC as REPORT_SPEC
from tests.orchestration.report.test_report import grid_rows

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")

FAST_TRAIN = ["--ae-epochs", "1", "--epochs", "1", "--milestone", "1", "--batch-size", "64"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = None if p.is_dir() else p.read_bytes()
    return out


# ----------------------------------------------------------------------------------- the unit rules


def test_empty_paths_are_refused() -> None:
    for raw in ("", "  ", None):
        with pytest.raises(ConfigError, match="--out: an empty path"):
            output_path(raw, "--out")
    assert output_path("~/x", "--to") == Path.home() / "x"


def test_ownership_patterns() -> None:
    out = OutputDir(Path("r"), command="report", flag="--out",
                    owns=("report.md", "figures/*.png", "model/**"))
    for rel in ("report.md", "figures", "figures/a.png", "model", "model/meta.json", "model/x/y"):
        assert out.owned(rel), rel
    for rel in ("notes.txt", "figures/a.txt", "modelx", "report.md.bak", "tables"):
        assert not out.owned(rel), rel


def test_a_directory_is_replaced_whole_and_only_when_owned(tmp_path: Path) -> None:
    target = tmp_path / "out"
    out = OutputDir(target, command="demo", flag="--out", owns=("a.txt", "sub/**"))
    with out.staging() as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("2")
    assert snapshot(target) == {"a.txt": b"1", "sub": None, "sub/b.txt": b"2"}
    with pytest.raises(StorageError, match=r"not empty.*--force"):
        out.check()
    forced = OutputDir(target, command="demo", flag="--out", owns=("a.txt", "sub/**"), force=True)
    with forced.staging() as tmp:
        (tmp / "a.txt").write_text("new")
    assert snapshot(target) == {"a.txt": b"new"}
    (target / "mine.txt").write_text("keep")
    with pytest.raises(StorageError, match=r"holds mine\.txt, which `deepsad demo` did not write"):
        forced.check()
    assert (target / "mine.txt").read_text() == "keep" and (target / "a.txt").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over


def test_a_link_is_never_owned(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (target / "a.txt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError, match=r"a\.txt"):
        OutputDir(target, command="demo", flag="--out", owns=("a.txt",), force=True).check()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        OutputDir(tmp_path / "link", command="demo", flag="--out", owns=("a.txt",), force=True).check()


def test_a_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out"
    out = OutputDir(target, command="demo", flag="--out", owns=("a.txt",))
    with pytest.raises(RuntimeError), out.staging() as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("the work failed")
    assert list(tmp_path.iterdir()) == []  # not even the parents made for it
    file_out = OutputFile(tmp_path / "x" / "s.csv", command="demo", flag="--out", is_own=lambda _p: True)
    with pytest.raises(RuntimeError), file_out.staging() as tmp:
        tmp.write_text("half")
        raise RuntimeError("the work failed")
    assert list(tmp_path.iterdir()) == []


def test_a_file_output_is_replaced_only_when_recognised(tmp_path: Path) -> None:
    target = tmp_path / "s.csv"
    target.write_text("mine\n")
    recognise: Callable[[Path], bool] = lambda p: p.read_text().startswith("ours")  # noqa: E731
    with pytest.raises(StorageError, match="exists; refusing to overwrite it \\(use --force\\)"):
        OutputFile(target, command="demo", flag="--out", is_own=recognise).check()
    with pytest.raises(StorageError, match="not an output of `deepsad demo`"):
        OutputFile(target, command="demo", flag="--out", is_own=recognise, force=True).check()
    assert target.read_text() == "mine\n"
    target.write_text("ours\n")
    with OutputFile(target, command="demo", flag="--out", is_own=recognise, force=True).staging() as tmp:
        tmp.write_text("ours, new\n")
    assert target.read_text() == "ours, new\n"
    with pytest.raises(StorageError, match="is a directory"):
        OutputFile(tmp_path, command="demo", flag="--out", is_own=recognise).check()


def test_an_unwritable_place_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        OutputDir(blocker / "out", command="demo", flag="--out", owns=()).check()
    assert snapshot(tmp_path) == {"file": b"x"}


# ------------------------------------------------------------------------- the matrix: five commands


@dataclass
class Command:
    """How to run one writing command into ``out`` (a directory, or a file for ``score``)."""

    name: str
    argv: Callable[[str], list[str]]
    is_file: bool = False
    #: a spelling of the command that fails after the output check but before any output is written
    failing: Callable[[str], list[str]] | None = None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    pulled = root / "pulled"
    model = train_pulled_dir(pulled, "digits", DIGITS_PROTOCOL)
    store_root = root / "store"
    make_store(store_root, STEADY)
    reports = root / "reports"
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    sweep = Storage.from_uri(str(reports)).child(REPORT_SWEEP)
    sweep.write_bytes(REPORT_SPEC.encode(), "spec.yaml")
    store = ResultStore(sweep)
    for row in grid_rows():
        store.write_trial(row)
    from sklearn.datasets import load_digits

    x = root / "x.npz"
    np.savez(x, X=load_digits().data[:20])
    assert model.meta["trial_key"]
    # a pulled model whose recorded split is not the one it was trained on: export fails after its checks
    tampered = root / "tampered"
    shutil.copytree(pulled, tampered)
    selection = json.loads((tampered / "selection.json").read_text())
    selection["split"]["protocol"]["seed"] += 1
    (tampered / "selection.json").write_text(json.dumps(selection))
    return {"pulled": pulled, "tampered": tampered, "store": store_root, "reports": reports, "x": x, "root": root}


def commands(inputs: dict[str, Path]) -> dict[str, Command]:
    return {
        "train": Command(
            "train",
            lambda out: ["train", "--dataset", "digits", "--n-labeled-anomalies", "5", "--out", out, *FAST_TRAIN],
            failing=lambda out: ["train", "--dataset", str(inputs["root"] / "missing.npz"), "--out", out,
                                 *FAST_TRAIN],
        ),
        "export": Command(
            "export",
            lambda out: ["export", str(inputs["pulled"]), "--out", out],
            failing=lambda out: ["export", str(inputs["tampered"]), "--out", out],
        ),
        "score": Command(
            "score",
            lambda out: ["score", str(inputs["x"]), "--model", str(inputs["pulled"]), "--out", out],
            is_file=True,
            failing=lambda out: ["score", str(inputs["root"] / "missing.npz"), "--model", str(inputs["pulled"]),
                                 "--out", out],
        ),
        "report": Command(
            "report",
            lambda out: ["report", REPORT_SWEEP, "--storage", str(inputs["reports"]), "--out", out],
            failing=lambda out: ["report", "no-such-sweep", "--storage", str(inputs["reports"]), "--out", out],
        ),
        "checkpoint pull": Command(
            "checkpoint pull",
            lambda out: ["checkpoint", "pull", "unit", "--storage", str(inputs["store"]), "--to", out],
            failing=lambda out: ["checkpoint", "pull", "unit", "--storage", str(inputs["store"]), "--to", out,
                                 "--metric", "val_ap", "--min-seeds", "9"],
        ),
    }


COMMANDS = ("train", "export", "score", "report", "checkpoint pull")


def _target(tmp_path: Path, cmd: Command) -> Path:
    return tmp_path / ("scores.csv" if cmd.is_file else "out")


@pytest.mark.parametrize("which", COMMANDS)
def test_output_rule(
    which: str, inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cmd = commands(inputs)[which]
    flag = "--to" if which == "checkpoint pull" else "--out"

    # an empty path is refused, and nothing is written where the command runs
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, _, err = run(cmd.argv(""), capsys)
    assert rc == 2 and err.startswith(f"error: {flag}: an empty path") and err.count("\n") == 1, err
    assert list(work.iterdir()) == []

    # a failure after the output check leaves nothing behind, not even the parents it would have made
    assert cmd.failing is not None
    nested = tmp_path / "new" / "deeper" / ("s.csv" if cmd.is_file else "out")
    rc, _, err = run(cmd.failing(str(nested)), capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()

    # someone else's file or directory: refused with and without --force, untouched
    target = _target(tmp_path, cmd)
    if cmd.is_file:
        target.write_text("name,notes\nmine,keep\n")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("keep")
        (target / "sub").mkdir()
        (target / "sub" / "data.txt").write_text("keep too")
    before = snapshot(tmp_path)
    for force in ([], ["--force"]):
        rc, _, err = run([*cmd.argv(str(target)), *force], capsys)
        assert rc == 2 and err.count("\n") == 1 and str(target) in err, err
        assert ("--force" in err) if not force else ("did not write" in err or "not an output" in err), err
        assert snapshot(tmp_path) == before

    # the command's own earlier output: refused without --force, replaced whole with it
    if cmd.is_file:
        target.unlink()
    else:
        for p in sorted(target.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    rc, _, err = run(cmd.argv(str(target)), capsys)
    assert rc == 0, err
    first = snapshot(tmp_path)
    rc, _, err = run(cmd.argv(str(target)), capsys)
    assert rc == 2 and "--force" in err and snapshot(tmp_path) == first, err
    if not cmd.is_file:  # a stale file of the command's own set is replaced too: the output is whole
        stale = next(p for p in sorted(target.rglob("*")) if p.is_file())
        stale.write_bytes(b"stale")
    rc, _, err = run([*cmd.argv(str(target)), "--force"], capsys)
    assert rc == 0, err
    after = snapshot(tmp_path)
    assert set(after) == set(first) and b"stale" not in after.values()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directories left


def test_report_and_export_write_into_an_empty_directory(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for which in ("report", "export"):
        target = tmp_path / which
        target.mkdir()
        rc, _, err = run(commands(inputs)[which].argv(str(target)), capsys)
        assert rc == 0, err
        assert (target / ("report.md" if which == "report" else "export.json")).is_file()
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["threshold"] is not None
    assert os.access(tmp_path / "export", os.W_OK)
