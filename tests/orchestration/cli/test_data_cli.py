"""`deepsad data fetch` and `deepsad data check`."""

from __future__ import annotations

import os
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
from orchestration.cli.data import app

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
    assert "verified" in out and "unverified" not in out
    assert "6 of 11 data sets present" in out


DEEPSAD = Path(sys.executable).parent / "deepsad"  # the installed entry point


def deepsad(*args: str) -> subprocess.CompletedProcess[str]:
    assert DEEPSAD.is_file(), f"the deepsad command is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "DEEPSAD_DEBUG"}
    return subprocess.run([str(DEEPSAD), *args], capture_output=True, text=True, env=env, timeout=300)


def test_mnist_laid_out_as_fashion_mnist_is_not_fashion_mnist(shared_data: Path, tmp_path: Path) -> None:
    """Issue 12, item 8: a folder holding MNIST's files where Fashion-MNIST's belong."""
    data = tmp_path / "data"
    (data / "fashion-mnist").mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():
        (data / "fashion-mnist" / f.name).symlink_to(f)
    proc = deepsad("data", "check", str(data))
    assert proc.returncode == 0, proc.stderr
    fmnist_row = proc.stdout[proc.stdout.index("│ fmnist") : proc.stdout.index("│ cifar10")]
    assert "missing" in fmnist_row and "present" not in fmnist_row
    assert "is MNIST's" in " ".join(fmnist_row.replace("│", " ").split())
    assert "2 of 11 data sets present" in proc.stdout  # the scikit-learn sets only
    out = tmp_path / "run"
    proc = deepsad(
        "train", "--dataset", "fmnist", "--data-dir", str(data), "--out", str(out), "--epochs", "1"
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: fmnist: {data}/fashion-mnist/train-images-idx3-ubyte.gz is MNIST's train-images-idx3-ubyte "
        f"(recognised by its checksum), not Fashion-MNIST's (and 3 more such file(s)); "
        f"run `deepsad data fetch fmnist --to {data}`"
    )
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_check_shows_own_files_as_unverified(tmp_path: Path) -> None:
    from tests.deepsad.data.test_idx import write_mnist

    write_mnist(tmp_path / "mnist")
    proc = deepsad("data", "check", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    mnist_row = " ".join(proc.stdout[proc.stdout.index("│ mnist") : proc.stdout.index("│ fmnist")].split())
    assert "present (IDX)" in mnist_row and "unverified" in mnist_row and "your own data?" in mnist_row


def test_main_turns_errors_into_one_line_and_exit_2(tmp_path: Path) -> None:
    code = (
        f"from orchestration.cli.app import main; main(['data', 'fetch', 'shuttle', '--to', {str(tmp_path)!r}])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: shuttle: there is no verifiable canonical download;")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_command_module_is_light() -> None:
    code = (
        "import sys; import orchestration.cli.data; "
        "bad = [m for m in ('torch', 'deepsad.data.sources', 'numpy') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
