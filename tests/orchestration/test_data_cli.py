"""`deepsad data fetch` and `deepsad data check`."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsad.errors import ConfigError, DataError
from orchestration.commands.data import app

runner = CliRunner()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(shared_data: Path) -> Iterator[str]:
    """`../shared/data` served over HTTP on 127.0.0.1 (an ephemeral port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(shared_data)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch(tmp_path: Path, mirror: str) -> None:
    result = runner.invoke(app, ["fetch", "arrhythmia", "--to", str(tmp_path), "--mirror", mirror])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "uci" / "arrhythmia.data") in result.output
    assert "arrhythmia: 1 file(s) verified" in result.output
    result = runner.invoke(app, ["fetch", "digits", "--to", str(tmp_path)])
    assert result.exit_code == 0 and "nothing to fetch" in result.output


def test_fetch_errors_are_deepsad_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fetch", "thyroid", "--to", str(tmp_path)])
    assert isinstance(result.exception, DataError)
    result = runner.invoke(app, ["fetch", "nope", "--to", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    result = runner.invoke(app, ["fetch", "mnist"])
    assert result.exit_code == 2 and "--to" in result.output


def test_check(shared_data: Path) -> None:
    result = runner.invoke(app, ["check", str(shared_data)])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("mnist", "fmnist", "cifar10", "arrhythmia", "cardio", "thyroid", "breast_cancer"):
        assert name in out
    assert "present (IDX)" in out and "missing" in out and "deepsad data fetch cifar10" in out
    assert "6 of 11 data sets present" in out


def test_main_turns_errors_into_one_line_and_exit_2(tmp_path: Path) -> None:
    code = (
        f"from orchestration.cli import main; main(['data', 'fetch', 'shuttle', '--to', {str(tmp_path)!r}])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr:
        pytest.skip(f"orchestration.cli does not import yet: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: shuttle: there is no verifiable canonical download;")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_command_module_is_light() -> None:
    code = (
        "import sys; import orchestration.commands.data; "
        "bad = [m for m in ('torch', 'deepsad.data.sources', 'numpy') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
