"""benchmarks/selection_labels.py: from the same rows, each validation metric's choice and its test AUROC;
two runs of an ablation paired by cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.benchmarks.modules import load

REPO = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    return load("selection_labels")


def _row(key: str, seed: int, eta: float, known: float, oracle: float, test: float) -> dict[str, object]:
    return {"trial_key": key, "status": "finished", "seed": seed, "eta": eta, "params_json": json.dumps({"eta": eta}),
            "val_auroc": known, "val_auroc_oracle": oracle, "test_auroc": test}  # fmt: skip


def test_each_metric_chooses_by_its_mean_over_seeds_and_reports_that_choices_test_auroc() -> None:
    m = _module()
    rows = [_row("a0", 0, 1.0, 0.9, 0.6, 0.70), _row("a1", 1, 1.0, 0.7, 0.6, 0.72),  # known mean .8
            _row("b0", 0, 5.0, 0.8, 0.9, 0.90), _row("b1", 1, 5.0, 0.75, 0.9, 0.86),  # known mean .775
            {"trial_key": "f", "status": "failed", "seed": 0, "eta": 9.0, "params_json": '{"eta": 9.0}'}]  # fmt: skip
    rep = m.search_report(rows)
    every = rep["all_seeds"]
    assert every["val_auroc"]["params"] == {"eta": 1.0} and every["val_auroc"]["test_auroc"] == 0.71
    assert every["val_auroc_oracle"]["params"] == {"eta": 5.0} and every["val_auroc_oracle"]["test_auroc"] == 0.88
    assert every["difference"] == -0.17 and every["test_auroc_range"] == [0.71, 0.88] and not every["same_choice"]
    # seed 0 alone: known picks eta 1 (0.9 > 0.8); seed 1 alone: known picks eta 5 (0.75 > 0.7)
    assert rep["per_seed"][0]["val_auroc"]["test_auroc"] == 0.70 and rep["per_seed"][1]["same_choice"]
    assert rep["per_seed_mean_difference"] == -0.1


def test_the_dry_run_reports_both_kinds_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "sel.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "selection_labels.py"), "--dry-run",
                           "--json", str(out)], capture_output=True, text=True, cwd=REPO, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chosen on val_auroc " in done.stdout and "1 baseline cells, 1 chose differently" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["search"]["all_seeds"]["difference"] == 0.1
    assert figures["ablation"]["paired"] == 1 and figures["ablation"]["mean_difference"] == 0.05
