"""A small synthetic ablation with enough blocks for every rank test: 3 methods × 6 normal classes × 2 γ_l ×
2 seeds (72 finished rows) in a real result store, and its report written once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestration.report.build import build_report, load_sweep
from orchestration.report.render import write_report
from orchestration.store.results import ResultStore
from orchestration.store.schema import trial_rows
from orchestration.store.storage import Storage

ABLATION = "ranked"
ABLATION_SPEC = "name: ranked\nablation:\n  axes: {ratio_known_outlier: [0.0, 0.05]}\n"
AB_METHODS = ("deepsvdd", "isoforest", "deepsad")
AB_CLASSES = tuple(range(6))
AB_GAMMAS = (0.0, 0.05)
AB_SEEDS = (0, 1)


def ablation_rows() -> list[dict[str, Any]]:
    """Deep SAD ahead of Deep SVDD ahead of IF in most blocks (fixed seed), each block a different difficulty."""
    rng = np.random.default_rng(18)
    effect = {"deepsad": 0.04, "deepsvdd": 0.02, "isoforest": 0.0}
    rows = []
    for cls in AB_CLASSES:
        for gamma in AB_GAMMAS:
            for seed in AB_SEEDS:
                for m in AB_METHODS:
                    auroc = (
                        0.8 + 0.02 * cls + effect[m] + (gamma if m == "deepsad" else 0) + rng.normal(0, 0.01)
                    )
                    axes = {"normal_classes": [cls], "ratio_known_outlier": gamma}
                    rows.append({
                        "trial_key": f"r-{m}-{cls}-{gamma}-{seed}", "status": "finished", "sweep": ABLATION,
                        "dataset": "mnist", "normal_classes": [cls], "ratio_known_outlier": gamma, "seed": seed,
                        "method": m, "policy": "fixed", "selected": True, "axes_json": json.dumps(axes, sort_keys=True),
                        "code_version": "v1-abc", "test_auroc": auroc, "test_ap": auroc - 0.1,
                    })  # fmt: skip
    return rows


@pytest.fixture(scope="session")
def ablation_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep storage holding sweep ABLATION (its spec.yaml and :func:`ablation_rows`, one commit)."""
    root = tmp_path_factory.mktemp("ranked") / "sweeps"
    sweep = Storage.from_uri(str(root)).child(ABLATION)
    sweep.write_bytes(ABLATION_SPEC.encode(), "spec.yaml")
    ResultStore(sweep).sink.commit(trials=trial_rows(ablation_rows()))
    return root


@pytest.fixture(scope="session")
def ablation_report(ablation_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of ABLATION (``deepsad report ranked``), written once: its directory."""
    out = tmp_path_factory.mktemp("ranked-report") / "report"
    write_report(build_report(load_sweep(ABLATION, str(ablation_storage))), out)
    return out
