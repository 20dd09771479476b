"""`deepsad train`: a real run end to end, and every bad input as one line + exit code 2."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestration.cli.app import main
from tests.conftest import REPO

FAST = ["--ae-epochs", "2", "--epochs", "2", "--milestone", "1", "--batch-size", "32"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_train_on_digits_writes_a_model_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "--dataset", "digits", "--n-labeled-anomalies", "5", "--pollution", "0.05",
                            "--out", str(tmp_path / "run"), *FAST], capsys)
    assert code == 0
    assert "val AUROC" in out and "test AUROC" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["counts"]["n_labeled_anomaly"] == 5 and 0.0 <= metrics["test_auroc"] <= 1.0
    # --milestone is the Deep SAD phase's; the AE keeps a constant lr (the reference's) unless --ae-milestone
    assert (metrics["config"]["sad"]["milestones"], metrics["config"]["ae"]["milestones"]) == ([1], [])
    lrs = [(h["phase"], h["lr"]) for h in metrics["history"]]
    assert lrs == [("ae", 1e-4), ("ae", 1e-4), ("sad", 1e-4), ("sad", pytest.approx(1e-5))]
    assert (tmp_path / "run" / "model" / "tensors.safetensors").is_file()
    # a second run into the same place needs --force
    code, _, err = run_cli(["train", "--dataset", "digits", "--out", str(tmp_path / "run"), *FAST], capsys)
    assert code == 2 and "--force" in err
    code, _, _ = run_cli(["train", "--dataset", "digits", "--out", str(tmp_path / "run2"), "--ae-milestone", "1",
                          *FAST], capsys)
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert code == 0 and metrics["config"]["ae"]["milestones"] == [1]
    assert [h["lr"] for h in metrics["history"] if h["phase"] == "ae"] == [1e-4, pytest.approx(1e-5)]


def corrupt_mnist(root: Path, shared: Path) -> Path:
    d = root / "mnist"
    d.mkdir(parents=True)
    for f in (shared / "mnist").iterdir():
        shutil.copy(f, d / f.name)
    raw = gzip.decompress((d / "train-labels-idx1-ubyte.gz").read_bytes())
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x01" + raw[4:]))
    return root


def truncated_mnist(root: Path, shared: Path) -> Path:
    d = root / "mnist"
    d.mkdir(parents=True)
    for f in (shared / "mnist").iterdir():
        shutil.copy(f, d / f.name)
    raw = gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    return root


def nan_csv(root: Path, _shared: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[7, 2] = np.nan
    y = (np.arange(40) % 5 == 0).astype(int)
    np.savetxt(root / "mine.csv", np.column_stack([x, y]), delimiter=",", header="a,b,c,y", comments="")
    return root / "mine.csv"


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("unknown dataset", ["--dataset", "mnits"], "mnits"),
        ("missing files", ["--dataset", "mnist", "--data-dir", "{tmp}/empty"], "deepsad data fetch mnist"),
        ("corrupt idx", ["--dataset", "mnist", "--data-dir", "{corrupt}"], "magic"),
        ("truncated idx", ["--dataset", "mnist", "--data-dir", "{truncated}"], "t10k-labels"),
        ("too many labeled", ["--dataset", "digits", "--n-labeled-anomalies", "5000"], "5000"),
        ("class out of range", ["--dataset", "digits", "--normal-class", "12"], "12"),
        ("nan in tabular", ["--dataset", "{nan_csv}"], "mine.csv"),
        ("bad ratio", ["--dataset", "digits", "--pollution", "1.5"], "--pollution"),
        ("bad eta", ["--dataset", "digits", "--eta", "-1"], "eta"),
        ("no cuda", ["--dataset", "digits", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str, args: list[str], expected: str, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill = {
        "tmp": str(tmp_path),
        "corrupt": str(corrupt_mnist(tmp_path / "c", shared_data)) if "{corrupt}" in args else "",
        "truncated": str(truncated_mnist(tmp_path / "t", shared_data)) if "{truncated}" in args else "",
        "nan_csv": str(nan_csv(tmp_path / "n", shared_data)) if "{nan_csv}" in args else "",
    }
    args = [a.format(**fill) for a in args]
    out_dir = tmp_path / "out"
    code, _out, err = run_cli(["train", *args, "--out", str(out_dir), *FAST], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert not (out_dir / "model").exists() and not (out_dir / "metrics.json").exists()


def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(["train", "--dataset", "digits", "--out", str(blocker / "run"), *FAST], capsys)
    assert code == 2 and err.startswith("error: --out") and err.count("\n") == 1


def test_help_imports_no_torch() -> None:
    """What keeps the CLI quick to start (its time is benchmarks/bench_cli.py's, not a test's)."""
    code = "import sys, orchestration.cli.app; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["False", "False"], out.stderr


# Issue 12, item 6: every numeric flag checked up front, NaN and inf refused, conflicts refused, each error
# naming its own flag — before any data loads (the data set named here does not exist, so an error about
# the flag proves the data was never read).
BAD_VALUES = [
    (["--weight-decay", "nan"], "--weight-decay: weight_decay: must be a finite number (got nan)"),
    (["--ae-weight-decay", "nan"], "--ae-weight-decay: weight_decay: must be a finite number (got nan)"),
    (["--weight-decay", "inf"], "--weight-decay: weight_decay: must be finite and at most"),
    (["--lr", "1e30"], "--lr: lr: must be finite and at most"),
    (["--ae-lr", "-1"], "--ae-lr: lr: must be > 0"),
    (["--epochs", "-1"], "--epochs: epochs: must be >= 0"),
    (["--ae-epochs", "-1"], "--ae-epochs: must be >= 0"),
    (["--eta", "-1"], "--eta: eta: must be > 0"),
    (["--eta", "nan"], "--eta: eta: must be a finite number"),
    (["--seed", "4294967296"], "--seed: protocol.seed: must be an integer in [0, 2**32)"),
    (["--rep-dim", "100000"], "--rep-dim: must be in [1, 4096]"),
    (["--pollution", "nan"], "--pollution: protocol.ratio_pollution: must be in [0, 1)"),
    (["--known-anomaly-class", "1", "--n-known-classes", "99"], "--n-known-classes 99 conflicts with"),
    (["--batch-size", "1"], "--batch-size: batch_size: must be >= 2"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_named_before_any_data_loads(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", "--dataset", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "out"),
                            *args], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("args", [["--weight-decay", "nan"], ["--ae-epochs", "-1"]], ids=" ".join)
def test_bad_values_through_the_installed_command(args: list[str], tmp_path: Path) -> None:
    from tests.orchestration.cli.test_cli_usage import deepsad

    done = deepsad("train", "--dataset", "digits", "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and args[0] in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


# Issue 15, item 5: a value the core refuses while building the run's TrainConfig — the network too (a LeNet's
# rep_dim must be a multiple of 16) — is named by its flag before any data loads: a registry set's sample
# shape is known without its files. The data directory named here does not exist, so an error about the
# flag proves the data was never read (the last case, with good values, shows the directory is what fails).
REGISTRY_BAD_VALUES = [
    (["--rep-dim", "10"], "--rep-dim: rep_dim: mnist_lenet needs a multiple of 16 (got 10)"),
    (["--eta", "-1"], "--eta: eta: must be > 0 (got -1.0)"),
    (["--lr", "0"], "--lr: lr: must be > 0"),
    (["--epochs", "-1"], "--epochs: epochs: must be >= 0"),
    (["--batch-size", "1"], "--batch-size: batch_size: must be >= 2"),
    (["--weight-decay", "-1"], "--weight-decay: weight_decay: must be >= 0"),
    (["--ae-weight-decay", "-1"], "--ae-weight-decay: weight_decay: must be >= 0"),
    (["--rep-dim", "0"], "--rep-dim: must be in [1, 4096]"),
    (["--rep-dim", "32"], "mnist: data directory"),
]


@pytest.mark.parametrize(("args", "expected"), REGISTRY_BAD_VALUES, ids=[" ".join(a) for a, _ in REGISTRY_BAD_VALUES])
def test_core_config_errors_name_their_flag_before_a_registry_set_loads(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "no-data"),
                            "--out", str(tmp_path / "out"), *args], capsys)  # fmt: skip
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_data_files_network_error_names_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file's sample shape is known once it is loaded: the network's error still names its flag."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", X=x, y=(np.arange(60) % 6 == 0).astype(np.int64))
    code, _, err = run_cli(["train", "--dataset", str(tmp_path / "images.npz"), "--out", str(tmp_path / "out"),
                            "--rep-dim", "10", *FAST], capsys)  # fmt: skip
    assert code == 2, err
    assert err == "error: --rep-dim: rep_dim: mnist_lenet needs a multiple of 16 (got 10)\n", err
    assert not (tmp_path / "out").exists()
