"""benchmarks/bench_search.py: the race replayed on an every-seed sweep's rows reveals only what it asks
for, and the dry run drives both search modes through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.benchmarks.modules import load

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    return load("bench_search")


def _rows(means: dict[float, list[float]]) -> list[dict[str, Any]]:
    return [{"trial_key": f"k{eta}-{seed}", "status": "finished", "seed": seed, "params_json": json.dumps({"eta": eta}),
             "val_auroc": v, **{c: None for c in ("dataset", "net")}}
            for eta, values in means.items() for seed, v in enumerate(values)]  # fmt: skip


def test_the_replayed_race_counts_what_it_would_have_trained() -> None:
    bench = _bench()
    rows = _rows({1.0: [0.90, 0.91, 0.90, 0.92, 0.91], 2.0: [0.50, 0.52, 0.51, 0.50, 0.52],
                  3.0: [0.89, 0.93, 0.88, 0.91, 0.90]})  # fmt: skip
    got = bench.replay_race(rows, "val_auroc", [0, 1, 2, 3, 4], 3, 0.95)
    assert got["every_seed"] == 15 and got["configurations"] == 3
    assert got["raced"] == 3 + 3 + 3 + 2 + 2  # eta 2 stops at its first three seeds; 1 and 3 race on
    assert got["saved"] == 2 and got["leader"] == {"eta": 1.0} and got["same_winner"] and not got["settled"]


@pytest.mark.integration
def test_the_dry_run_searches_in_both_modes_and_races(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_search.py"), "--dry-run", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["1"]["trainings"] == figures["6"]["trainings"] == 6
    assert 0 < figures["6"]["best_val"] <= 1 and figures["race"]["every_seed"] == 6
