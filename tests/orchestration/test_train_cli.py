"""`deepsad train`: a real run end to end, and every bad input as one line + exit code 2."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orchestration.cli import main
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


def test_help_is_instant_and_imports_no_torch() -> None:
    code = "import sys, orchestration.cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["False", "False"], out.stderr
    assert time.perf_counter() - t0 < 5
