"""The bundle benchmark's grid projection, and the prepared GPU check run end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmarks.modules import load

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    return load("bench_bundle")


def test_the_paper_grid_has_450_distinct_runs() -> None:
    grid = _bench().GRID
    assert len(grid) == len(set(grid)) == 450
    assert all(normal != known for normal, known, _ in grid)
    assert {gamma for *_, gamma in grid} == {0.0, 0.01, 0.05, 0.1, 0.2}
    assert [gamma for *_, gamma in grid[:5]] == [0.0, 0.01, 0.05, 0.1, 0.2]  # γ_l innermost, as the planner


def test_grid_projection_scales_measured_epochs_by_bundle_and_size() -> None:
    bench = _bench()
    fig = {"fixed_s": 10.0, "ae_epoch_s": 2.0, "sad_epoch_s": 1.0, "member_samples": 100.0}
    sizes = [100, 200, 100]
    # vmap: members step in lockstep, so a bundle costs its largest member's epochs
    assert bench.project_grid(fig, 2, sizes, "vmap", 10) == pytest.approx((10 + 10 * 2 * 3) + (10 + 10 * 1 * 3))
    # loop: a bundle's work is its members' total, against the K members the figures were measured with
    assert bench.project_grid(fig, 2, sizes, "loop", 10) == pytest.approx((10 + 10 * 1.5 * 3) + (10 + 10 * 0.5 * 3))
    assert bench.project_grid(fig, 1, sizes, "loop", 10) == pytest.approx(3 * 10 + 10 * 4 * 3)


def test_the_summary_reads_what_the_steps_left_and_says_what_is_missing(tmp_path: Path) -> None:
    """A cut step leaves partial JSON (or none): the summary still has every section."""
    (tmp_path / "core.json").write_text(json.dumps({"machine": "m", "fp32": {"ae": 45_000.0, "sad": 50_000.0},
                                                    "bf16": {"ae": 30_000.0, "sad": 40_000.0}}))
    fig = {"samples_per_s": 1.0e6, "sad_samples_per_s": 1.2e6, "trials_per_hour": 1.0, "ae_epoch_s": 2.0,
           "sad_epoch_s": 1.0, "fixed_s": 1.0, "member_samples": 5650.0}
    (tmp_path / "bundle.json").write_text(json.dumps({"runs": {"K=64": [fig], "K=512": []}, "partial": True}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_summary.py", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert json.loads(done.stdout) == summary
    assert summary["single_run"]["fp32"]["ae_x_reference"] == 5.0 and summary["single_run"]["target_5x_met"]
    assert summary["single_run"]["bf16_over_fp32"] == {"ae": 0.67, "sad": 0.8}
    assert summary["bundles"]["K=64"]["ae_over_sad_epoch"] == 2.0 and summary["bundles"]["partial"]
    assert summary["bundles"]["K=64"]["ae_samples_per_s"] == round(64 * 5650 / 2.0)
    assert summary["bundles"]["target_ae_over_sad_le_2_5_met"] and summary["bundles"]["target_sad_1M_met"]
    for section in ("bundle_step", "fidelity", "ten_classes"):
        assert summary[section] == {"missing": True}


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_on_a_cpu(shared_data: Path, tmp_path: Path) -> None:
    """`gpu_check.sh --dry-run`: every step of the GPU session, tiny and on the CPU, so that the one
    short run a GPU machine allows does not fail on the script itself; at most 7 files, the last a
    summary of them all."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(shared_data), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu_check: 0 step(s) failed" in done.stdout
    assert "paper MNIST γ_l grid: 450 runs" in done.stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bundle.json", "classes.json", "core.json", "fidelity.json", "step.json", "summary.json"]
    core = json.loads((tmp_path / "core.json").read_text())
    assert all(core[p]["ae"] > 0 and core[p]["sad"] > 0 for p in ("fp32", "bf16"))
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    assert set(bundle["medians"]) == {"K=1", "K=2", "separate"}
    assert bundle["args"]["strategy"] == "vmap" and bundle["args"]["device"] == "cpu"
    assert set(bundle["grid_seconds"]) == set(bundle["grid_seconds_by_size"]) == {"K=1", "K=2"}
    step = json.loads((tmp_path / "step.json").read_text())
    cases = {(r["phase"], r["deconv"], r["precision"]) for r in step["results"]}
    assert cases == {("ae", "phase", "fp32"), ("ae", "transpose", "fp32"), ("sad", None, "fp32"),
                     ("ae", "phase", "bf16"), ("sad", None, "bf16")}
    assert all(r["syncs_per_step"] == 0 and r["top"] for r in step["results"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == {name: summary["steps"][name] for name in ("core", "step", "bundle", "tests", "classes")}
    assert all(v["state"] == "ok" for v in summary["steps"].values())
    assert summary["fidelity"]["first_departure"] is None and len(summary["fidelity"]["stages"]) == 12
    assert set(summary["ten_classes"]["per_class"]) == {"0", "1"}
    assert summary["ten_classes"]["mean_difference_points"] is not None
    assert summary["bundles"]["K=2"]["ae_over_sad_epoch"] > 0
    assert '"single_run"' in done.stdout  # the summary it would write is printed
