"""The whole user story on S3: a TPE sweep with two seeds into a bucket; then, from a fresh directory
that has nothing but the bucket, status / results / resume / pull the best configuration / export /
score — and the exported model scores like the trained one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from deepsad.data.sources import load_dataset
from deepsad.model import DeepSADModel
from tests.orchestration.sweeps_helpers import cli, small_spec, write_spec
from tests.s3_servers import BUCKET, S3Server, use_server

pytestmark = pytest.mark.integration


def test_tpe_sweep_on_s3_then_pull_export_score_from_a_fresh_directory(
    moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_server(monkeypatch, moto_server, tmp_path)
    storage = f"s3://{BUCKET}/story-{uuid.uuid4().hex[:8]}"
    spec = small_spec("story", seeds=[0, 1], train__epochs=4, pretrain__epochs=3,
                      search={"algorithm": "tpe", "num_trials": 3, "seed": 0,
                              "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10.0}}})
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    run = cli(["sweep", "submit", str(write_spec(tmp_path, spec)), "--storage", storage], cwd=laptop, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "trials: 6 (0 failed, 6 finished" in run.stdout

    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    status = cli(["sweep", "status", "story", "--storage", storage], cwd=fresh)
    assert status.returncode == 0 and "6 finished" in status.stdout, status.stdout + status.stderr
    shown = cli(["results", "show", "story", "--storage", storage, "--format", "json"], cwd=fresh)
    rows = json.loads(shown.stdout)
    assert len(rows) == 6 and len({r["params_json"] for r in rows}) == 3
    resumed = cli(["sweep", "submit", str(write_spec(tmp_path, spec)), "--storage", storage], cwd=fresh)
    assert resumed.returncode == 0 and "nothing to do" in resumed.stdout, resumed.stdout + resumed.stderr

    pulled = cli(["checkpoint", "pull", "story", "--to", str(fresh / "best"), "--storage", storage,
                  "--policy", "median"], cwd=fresh)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    selection = json.loads((fresh / "best" / "selection.json").read_text())
    by_config: dict[str, list[float]] = {}
    for r in rows:
        by_config.setdefault(r["params_json"], []).append(r["val_auroc"])
    assert selection["mean"] == pytest.approx(max(float(np.mean(v)) for v in by_config.values()))
    assert selection["n"] == 2 and selection["policy"] == "median" and selection["sweep_uri"].startswith("s3://")
    picked = [v["value"] for v in selection["values"] if v["trial_key"] == selection["trial_key"]]
    assert picked == [min(v["value"] for v in selection["values"])]  # the lower median of two seeds

    exported = cli(["export", str(fresh / "best"), "--format", "onnx", "--out", str(fresh / "onnx")], cwd=fresh)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    raw = load_dataset("digits", None).x_train[:50]
    np.savez(fresh / "inputs.npz", X=raw)
    scored = cli(["score", str(fresh / "inputs.npz"), "--model", str(fresh / "onnx"), "--out",
                  str(fresh / "scores.csv")], cwd=fresh)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    import csv

    with open(fresh / "scores.csv", newline="") as fh:
        scores = np.array([float(r["score"]) for r in csv.DictReader(fh)])
    original = DeepSADModel.load(fresh / "best").score_raw(raw)
    np.testing.assert_allclose(scores, original, rtol=1e-5, atol=1e-6)
