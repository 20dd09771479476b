"""Usage errors through the installed ``deepsad`` entry point (issue 12, item 1).

typer >= 0.29 raises its own vendored click exceptions, which the entry point once did not catch: every
usage error was a traceback with exit 1 while the in-process tests passed. These tests run the console
script that ``pip install`` made, against the typer that is actually installed, in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def entry_point() -> str:
    """The installed console script beside this interpreter (``.venv/bin/deepsad``)."""
    found = shutil.which("deepsad", path=str(Path(sys.executable).parent))
    assert found, f"no `deepsad` console script beside {sys.executable}: install the project (make setup)"
    return found


def deepsad(*args: str, debug: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSAD_DEBUG"}
    if debug:
        env["DEEPSAD_DEBUG"] = "1"
    return subprocess.run(
        [entry_point(), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd or REPO
    )


USAGE_ERRORS = [
    # (what, argv, text the one line must hold)
    ("unknown command", ["frobnicate"], "deepsad: No such command 'frobnicate'"),
    ("unknown subcommand, with a hint", ["sweep", "statu"], "Did you mean 'status'?"),
    ("unknown option", ["--version"], "No such option: --version"),
    ("missing option", ["score", "x.npz"], "deepsad score: Missing option '--model'"),
    ("missing argument", ["report", "--out", "o"], "deepsad report: Missing argument"),
    ("not an integer", ["train", "--dataset", "digits", "--out", "o", "--epochs", "abc"], "'--epochs'"),
    ("not a number", ["score", "x.npz", "--model", "m", "--threshold", "high"], "'--threshold'"),
    ("below a minimum", ["score", "x.npz", "--model", "m", "--batch-size", "0"], "'--batch-size'"),
    ("option without its value", ["train", "--dataset"], "'--dataset' requires an argument"),
    ("extra argument", ["results", "show", "a", "b"], "unexpected extra argument"),
    ("unknown nested command", ["checkpoint", "push"], "deepsad checkpoint: No such command 'push'"),
]


@pytest.mark.parametrize(("what", "argv", "expected"), USAGE_ERRORS, ids=[u[0] for u in USAGE_ERRORS])
def test_a_usage_error_is_one_line_and_exit_2(what: str, argv: list[str], expected: str, tmp_path: Path) -> None:
    done = deepsad(*argv, cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (what, done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected in lines[0], lines[0]
    assert "--help`" in lines[0]  # says where to look
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize("argv", [[], ["sweep"], ["checkpoint"], ["data"]], ids=["deepsad", "sweep", "checkpoint", "data"])
def test_no_arguments_show_the_help_and_exit_0(argv: list[str]) -> None:
    done = deepsad(*argv)
    assert done.returncode == 0, done.stderr
    assert "Usage: deepsad" in done.stdout and done.stderr == ""


def test_help_exits_0() -> None:
    done = deepsad("train", "--help")
    assert done.returncode == 0 and "--out" in done.stdout and done.stderr == ""


def test_debug_shows_the_traceback() -> None:
    done = deepsad("frobnicate", debug=True)
    assert done.returncode != 0 and "Traceback" in done.stderr and "frobnicate" in done.stderr


def test_a_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = deepsad("sweep", "submit", str(tmp_path / "missing.yaml"), "--dry-run")
    assert done.returncode == 2 and done.stderr == f"error: {tmp_path / 'missing.yaml'}: file not found\n"


def test_a_closed_pipe_ends_quietly() -> None:
    """`deepsad --help | head -1`: no BrokenPipeError traceback."""
    with subprocess.Popen([entry_point(), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        rc = proc.wait(timeout=60)
    assert "Traceback" not in err and rc in (0, 1), (rc, err)
