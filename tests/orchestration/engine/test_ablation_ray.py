"""Ablation sweeps on a real local Ray, through the command line (each run its own driver process)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.orchestration.sweeps_helpers import cli, rows, write_spec

pytestmark = pytest.mark.integration


def ablation_spec(name: str, *, seeds: list[int], **ablation: Any) -> dict[str, Any]:
    """Digits 0-4 normal, labeled 5s at γ_l ∈ {0, 0.05}, 10 % pollution; a second or so per training."""
    return {
        "name": name,
        "data": {"dataset": "digits"},
        "protocol": {
            "normal_classes": [0, 1, 2, 3, 4],
            "known_anomaly_classes": [5],
            "ratio_pollution": 0.1,
            "val_fraction": 0.2,
        },
        "train": {"lr": 1e-3, "epochs": 4, "milestones": [3], "batch_size": 32, "device": "cpu"},
        "pretrain": {"lr": 1e-3, "epochs": 3, "milestones": [2], "batch_size": 32},
        "seeds": seeds,
        "ablation": {
            "axes": {"ratio_known_outlier": [0.0, 0.05]},
            "methods": ["deepsad", "isoforest"],
            **ablation,
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2, "checkpoint_interval_s": 0},
    }


def test_a_fixed_ablation_runs_every_cell_once_and_grows_by_its_new_cells(tmp_path: Path) -> None:
    store = tmp_path / "s"
    spec = write_spec(tmp_path, ablation_spec("abl", seeds=[0, 1]))
    run = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ablation over ratio_known_outlier (2), policy fixed" in run.stdout
    assert "trials: 8 (0 failed, 8 finished" in run.stdout
    got = rows(store, "abl")
    assert len(got) == 8 and {r["status"] for r in got} == {"finished"} and all(r["selected"] for r in got)
    assert Counter((r["method"], r["policy"]) for r in got) == {
        ("deepsad", "fixed"): 4,
        ("isoforest", "own"): 4,
    }
    assert {json.loads(r["axes_json"])["ratio_known_outlier"] for r in got} == {0.0, 0.05}
    by_cell = Counter((r["ratio_known_outlier"], r["seed"]) for r in got)
    assert set(by_cell.values()) == {2}, "each cell ran each method once"
    for r in got:
        assert 0.5 < r["test_auroc"] <= 1 and (r["val_auroc"] is None or 0 <= r["val_auroc"] <= 1)

    again = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    grown = write_spec(tmp_path, ablation_spec("abl", seeds=[0, 1, 2]))
    dry = cli(["sweep", "submit", str(grown), "--storage", str(store), "--dry-run"], cwd=tmp_path)
    assert "already finished: 8 of 12 trials" in dry.stdout and "to run: 4" in dry.stdout
    assert cli(["sweep", "submit", str(grown), "--storage", str(store)], cwd=tmp_path).returncode == 0
    after = {r["trial_key"]: r for r in rows(store, "abl")}
    assert len(after) == 12 and all(r["status"] == "finished" for r in after.values())
    for old in got:
        assert after[old["trial_key"]]["started_at"] == old["started_at"], "a finished cell was run again"


def test_a_tuned_cell_runs_its_whole_budget_in_one_trial_and_selects_on_validation(tmp_path: Path) -> None:
    spec_dict = ablation_spec("tuned", seeds=[0], methods=["deepsad"], policy="tuned", budget=3)
    spec_dict["ablation"]["axes"] = {"ratio_known_outlier": [0.05]}
    spec_dict["search"] = {"space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}}
    spec = write_spec(tmp_path, spec_dict)
    run = cli(["sweep", "submit", str(spec), "--storage", str(tmp_path / "s")], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    got = sorted(rows(tmp_path / "s", "tuned"), key=lambda r: r["inner_trial"])
    assert [r["inner_trial"] for r in got] == [0, 1, 2] and {r["status"] for r in got} == {"finished"}
    assert len({r["trial_id"] for r in got}) == 1, "the inner trainings run in one Tune trial"
    assert {r["policy"] for r in got} == {"tuned"} and len({r["eta"] for r in got}) == 3
    (chosen,) = [r for r in got if r["selected"]]
    assert chosen["val_auroc"] == max(r["val_auroc"] for r in got)
    assert sum(r["cache_hit"] for r in got) == 2, "η does not change the autoencoder: pretrained once"


def test_bundled_ablation_units_give_the_rows_of_unbundled_ones(tmp_path: Path) -> None:
    spec = ablation_spec("bundled", seeds=[0, 1], methods=["deepsad", "deepsvdd", "isoforest"])
    spec["resources"]["bundle_size"] = "auto"
    path = write_spec(tmp_path, spec)
    dry = cli(["sweep", "submit", str(path), "--storage", str(tmp_path / "b"), "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    run = cli(["sweep", "submit", str(path), "--storage", str(tmp_path / "b")], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "trials: 12 (0 failed, 12 finished" in run.stdout
    bundled = {(r["method"], r["ratio_known_outlier"], r["seed"]): r for r in rows(tmp_path / "b", "bundled")}
    # the 8 Deep SAD / Deep SVDD units share one bundle (one network, one schedule); baselines run alone
    assert {r["bundle"] for r in bundled.values() if r["method"] != "isoforest"} == {next(
        r["bundle"] for r in bundled.values() if r["method"] == "deepsad")}
    assert all(r["bundle"] is None for r in bundled.values() if r["method"] == "isoforest")
    spec["name"], spec["resources"]["bundle_size"] = "alone", 1
    alone = cli(["sweep", "submit", str(write_spec(tmp_path, spec)), "--storage", str(tmp_path / "a")], cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    for r in rows(tmp_path / "a", "alone"):
        twin = bundled[(r["method"], r["ratio_known_outlier"], r["seed"])]
        assert twin["status"] == "finished" and twin["trial_key"] == r["trial_key"]
        assert twin["test_auroc"] == pytest.approx(r["test_auroc"], abs=0.01)  # float rounding, amplified
    # at γ_l = 0 Deep SVDD and Deep SAD are one computation: bundled, they still agree
    for seed in (0, 1):
        assert bundled[("deepsvdd", 0.0, seed)]["test_auroc"] == pytest.approx(
            bundled[("deepsad", 0.0, seed)]["test_auroc"], abs=1e-9)
