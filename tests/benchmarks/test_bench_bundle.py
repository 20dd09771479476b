"""The bundle benchmark's grid projection, and the prepared GPU check run end to end on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_bundle", REPO / "benchmarks" / "bench_bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_on_a_cpu(shared_data: Path, tmp_path: Path) -> None:
    """`gpu_check.sh --dry-run`: every step of the GPU session, tiny and on the CPU, so that the one
    short run a GPU machine allows does not fail on the script itself."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(shared_data), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu_check: 0 step(s) failed" in done.stdout
    assert "paper MNIST γ_l grid: 450 runs" in done.stdout
    for name in ("core_fp32", "core_bf16"):
        figures = json.loads((tmp_path / f"{name}.json").read_text())
        assert figures["ae"] > 0 and figures["sad"] > 0
    fp32 = json.loads((tmp_path / "bundle_fp32.json").read_text())
    assert set(fp32["medians"]) == {"K=1", "K=2", "separate"}
    assert fp32["args"]["strategy"] == "vmap" and fp32["args"]["device"] == "cpu"
    assert all(fp32["medians"][k]["sad_samples_per_s"] > 0 for k in fp32["medians"])
    assert set(fp32["grid_seconds"]) == {"K=1", "K=2"} and min(fp32["grid_seconds"].values()) > 0
    bf16 = json.loads((tmp_path / "bundle_bf16.json").read_text())
    assert bf16["args"]["bf16"] and set(bf16["grid_seconds"]) == {"K=2"}
