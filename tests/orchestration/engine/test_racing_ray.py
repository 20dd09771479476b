"""Seeds raced on a real local Ray (issue 17): every configuration starts on the first seeds, the rounds
give the next seed only to configurations still in contention, the race ends with nothing left to
race, and the rows are the rows a sweep of every seed would have for those trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestration.plan.racing import race, standings
from tests.orchestration.sweeps_helpers import cli, rows, small_spec, write_spec

pytestmark = pytest.mark.integration

SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("search", [
    {"algorithm": "grid", "space": {"eta": {"distribution": "choice", "values": [0.01, 1.0, 100.0]}}},
    {"algorithm": "tpe", "num_trials": 3, "seed": 0,
     "space": {"eta": {"distribution": "log_uniform", "low": 0.01, "high": 100.0}}},
], ids=["grid", "tpe-bundles"])  # fmt: skip
def test_a_raced_sweep_runs_the_next_seeds_only_where_the_race_is_open(tmp_path: Path, search: dict[str, Any]) -> None:
    spec = write_spec(tmp_path, small_spec(
        "raced", seeds=SEEDS, search=search, racing={"start": 2, "confidence": 0.9}, train__epochs=4,
        train__milestones=[3], resources__bundle_size=4, resources__cpus_per_trial=2,
        resources__max_concurrent_trials=1))
    store = tmp_path / "s"
    dry = cli(["sweep", "submit", str(spec), "--storage", str(store), "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0 and "racing: every configuration starts on seeds [0, 1] (of 4)" in dry.stdout, dry.stdout
    run = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path, timeout=500)
    assert run.returncode == 0, run.stdout + run.stderr
    got = rows(store, "raced")
    assert len({r["trial_key"] for r in got}) == len(got) and {r["status"] for r in got} == {"finished"}
    by_config: dict[str, list[int]] = {}
    for r in got:
        by_config.setdefault(r["params_json"], []).append(r["seed"])
    assert len(by_config) == 3
    for seeds in by_config.values():  # each started on seeds 0 and 1 and went on in order
        assert sorted(seeds) == SEEDS[: len(seeds)] and len(seeds) >= 2
    # the race is over: nothing left to race on these rows
    final = race(standings(got, "val_auroc"), SEEDS, 0.9, start=2)
    assert final.runs == [] and final.trainings == len(got) <= 12
    record = json.loads((store / "raced" / "racing.json").read_text())
    assert record["rounds"][-1]["runs"] == [] and record["rounds"][-1]["trainings"] == len(got)
    assert sum(len(r["runs"]) for r in record["rounds"]) == len(got) - 6  # the rounds ran the rest
    assert "racing: leader" in run.stdout
    # ranking by the lower confidence bound, and a resubmit that finds nothing to do
    shown = cli(["results", "show", "raced", "--storage", str(store), "--configs", "--by", "lcb"], cwd=tmp_path)
    assert shown.returncode == 0 and "ranked by val_auroc: lower bound of the 95% interval" in shown.stdout, shown.stdout
    again = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert len(rows(store, "raced")) == len(got)
