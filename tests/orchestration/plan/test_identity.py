"""A sweep's identity: a resubmit under an existing name may only grow the sweep (issue 12, finding 5:
a sweep file with another data set under an existing name exited 0 with "nothing to do")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration.plan.cells import enumerate_cells
from orchestration.plan.identity import differences
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.conftest import REPO
from tests.orchestration.sweeps_helpers import TEST_ENV, small_spec

ABLATION = yaml.safe_load((REPO / "sweeps" / "ablation_smoke.yaml").read_text(encoding="utf-8"))


def _spec(d: dict[str, Any], base_dir: str = "/base") -> SweepSpec:
    return parse_spec(yaml.safe_dump(d, sort_keys=False), "new.yaml", base_dir=base_dir)


def _changed(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    d = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in overrides.items():
        node = d
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        if value is None and last in node and dotted != "net":
            del node[last]
        else:
            node[last] = value
    return d


GRID = small_spec("same")
TPE = _changed(GRID, search__algorithm="tpe", search__num_trials=4,
               search__space={"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}})  # fmt: skip
RANDOM = _changed(TPE, search__algorithm="random")


def _diff(base: dict[str, Any], **overrides: Any) -> list[str]:
    return differences(_spec(base), _spec(_changed(base, **overrides)))


@pytest.mark.parametrize(
    ("base", "overrides"),
    [
        (GRID, {}),
        (GRID, {"seeds": [0, 1, 2]}),
        (GRID, {"seeds": [2, 0]}),
        (GRID, {"search__space__eta__values": [2.0, 0.5, 1.0]}),  # order does not matter
        (GRID, {"description": "now described", "storage": "elsewhere", "data__data_dir": "data"}),
        (GRID, {"train__device": "auto", "resources": {"cpus_per_trial": 2, "max_concurrent_trials": 8}}),
        (GRID, {"net": None}),  # no overrides either way
        (GRID, {"train__lr": 0.001}),  # written otherwise, the same number
        (TPE, {"search__num_trials": 40}),
        (RANDOM, {"search__num_trials": 40, "seeds": [0, 1]}),
        (ABLATION, {"seeds": [0, 1, 2], "ablation__methods": ["deepsad", "deepsvdd", "isoforest", "ocsvm"]}),
        (ABLATION, {"ablation__axes__normal_classes": [[2], [0], [1]],  # sets protocol.normal_classes too
                    "ablation__axes__ratio_known_outlier": [0.0, 0.01, 0.05, 0.1]}),
    ],
    ids=["same", "more seeds", "seeds reordered", "more grid values", "where it runs", "how it runs",
         "net null", "number spelling", "tpe num_trials", "random num_trials and seeds", "ablation seeds and methods",
         "ablation axes"],
)
def test_growing_or_changing_only_where_it_runs_is_allowed(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    assert _diff(base, **overrides) == []


@pytest.mark.parametrize(
    ("base", "overrides", "expected"),
    [
        (GRID, {"data__dataset": "breast_cancer"},
         ["data.dataset: differs from the stored sweep (stored digits, now breast_cancer)"]),
        (GRID, {"train__lr": 0.01, "protocol__ratio_pollution": 0.05},
         ["protocol.ratio_pollution: differs from the stored sweep (stored 0.1, now 0.05)",
          "train.lr: differs from the stored sweep (stored 0.001, now 0.01)"]),
        (GRID, {"seeds": [1]}, ["seeds: seeds may only grow (0 is gone) (stored [0], now [1])"]),
        (GRID, {"search__space__eta__values": [0.5, 3.0]},
         ["search.space.eta.values: a grid's values may only grow (2 is gone) (stored [0.5, 2], now [0.5, 3])"]),
        (GRID, {"search__space__lr": {"distribution": "choice", "values": [0.001]}},
         ["search.space.lr: a grid's values may only grow; its keys and distributions cannot change "
          "(stored null, now {distribution: choice, values: [0.001]})"]),
        (TPE, {"seeds": [0, 1]},
         ["seeds: a TPE study scores configurations by their mean over the seeds; its seeds cannot change "
          "(stored [0], now [0, 1])"]),
        (TPE, {"search__num_trials": 3}, ["search.num_trials: num_trials may only grow (stored 4, now 3)"]),
        (TPE, {"search__seed": 1}, ["search.seed: differs from the stored sweep (stored 0, now 1)"]),
        (RANDOM, {"search__space__eta__high": 20},
         ["search.space.eta: differs from the stored sweep (stored {distribution: log_uniform, low: 0.1, high: 10}, "
          "now {distribution: log_uniform, low: 0.1, high: 20})"]),
        (GRID, {"search__algorithm": "random", "search__num_trials": 2},
         ["search.algorithm: differs from the stored sweep (stored grid, now random)",
          "search.num_trials: differs from the stored sweep (stored null, now 2)"]),
        (ABLATION, {"ablation__axes__ratio_known_outlier": [0.0, 0.05]},
         ["ablation.axes.ratio_known_outlier: an axis' values may only grow (0.01 is gone) (stored [0, 0.01, 0.05], "
          "now [0, 0.05])"]),
        (ABLATION, {"ablation__methods": ["deepsad"]},
         ["ablation.methods: methods may only grow (deepsvdd is gone) (stored [deepsad, deepsvdd, isoforest], "
          "now [deepsad])"]),
        (ABLATION, {"ablation__axes__ratio_pollution": [0.1, 0.2], "protocol__ratio_pollution": None},
         ["ablation.axes.ratio_pollution: an axis cannot be added or removed (its values may only grow) "
          "(stored null, now [0.1, 0.2])"]),
    ],
    ids=["data set", "two fields", "seed removed", "grid value removed", "grid key added", "tpe seeds",
         "tpe num_trials shrinks", "search seed", "random space", "algorithm", "axis value removed",
         "method removed", "axis added"],
)
def test_any_other_change_is_one_line_per_field(
    base: dict[str, Any], overrides: dict[str, Any], expected: list[str]
) -> None:
    assert _diff(base, **overrides) == expected


def test_a_data_file_is_compared_where_it_is(tmp_path: Path) -> None:
    d = _changed(GRID, data__dataset="x.npz", net={"name": "mlp", "h_dims": [8]})
    assert differences(_spec(d, "/a"), _spec(d, "/a")) == []
    assert differences(_spec(d, "/a"), _spec(d, "/b")) == [
        "data.dataset: differs from the stored sweep (stored /a/x.npz, now /b/x.npz)"
    ]


# --------------------------------------------------------------------------- through the command


def _store(root: Path, spec: dict[str, Any], *, finished: bool = False) -> Path:
    """A sweep directory as an earlier `sweep submit` left it (written without Ray)."""
    sweep = root / "runs" / "sweeps" / spec["name"]
    sweep.mkdir(parents=True)
    text = yaml.safe_dump(spec, sort_keys=False)
    (sweep / "spec.yaml").write_text(text)
    (sweep / "submission.json").write_text(json.dumps({"source": "old.yaml", "base_dir": str(root)}))
    if finished:
        for cell in enumerate_cells(parse_spec(text, "old.yaml", base_dir=root)):
            ResultStore(Storage.from_uri(str(sweep))).write_trial(
                {"sweep": spec["name"], "trial_key": cell.key, "status": "finished", "attempt": 1,
                 **cell.columns(), "params_json": json.dumps(cell.params, sort_keys=True), "val_auroc": 0.9})  # fmt: skip
    return sweep


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO)}
    env.pop("DEEPSAD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "orchestration.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_changed_sweep_under_an_existing_name_is_refused_also_in_a_dry_run(tmp_path: Path) -> None:
    old = small_spec("taken")
    sweep = _store(tmp_path, old, finished=True)
    stored = (sweep / "spec.yaml").read_text()
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(_changed(old, data__dataset="breast_cancer",
                                                                protocol__normal_classes=[0],
                                                                protocol__known_anomaly_classes=[1])))  # fmt: skip
    for extra in (["--dry-run"], []):
        run = _cli(["sweep", "submit", "new.yaml", *extra], tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stderr.splitlines() == [
            "error: new.yaml: data.dataset: differs from the stored sweep (stored digits, now breast_cancer)",
            "error: new.yaml: protocol.normal_classes: differs from the stored sweep (stored [0, 1, 2, 3, 4], now [0])",
            "error: new.yaml: protocol.known_anomaly_classes: differs from the stored sweep (stored [5], now [1])",
            f"error: new.yaml: sweep taken in {sweep} was submitted with another sweep file; a resubmit may only "
            "add seeds, grid values, ablation axis values or methods, or raise num_trials — give the changed "
            "sweep a new name (or another --storage)",
        ]
        assert "nothing to do" not in run.stdout
        assert (sweep / "spec.yaml").read_text() == stored
    assert not (sweep / "tune").exists()


def test_a_grown_sweep_goes_ahead_and_becomes_the_stored_file(tmp_path: Path) -> None:
    old = small_spec("grows")
    sweep = _store(tmp_path, old, finished=True)
    grown = yaml.safe_dump(_changed(old, seeds=[0, 1]), sort_keys=False)
    (tmp_path / "grown.yaml").write_text(grown)
    dry = _cli(["sweep", "submit", "grown.yaml", "--dry-run"], tmp_path)
    assert dry.returncode == 0 and "already finished: 2 of 4 trials (they are skipped); to run: 2" in dry.stdout
    # a change of where/how only (no new trial): nothing to run, and the file is the sweep's from now on
    moved = yaml.safe_dump(_changed(old, description="moved", resources__max_failures=0), sort_keys=False)
    (tmp_path / "moved.yaml").write_text(moved)
    run = _cli(["sweep", "submit", "moved.yaml"], tmp_path)
    assert run.returncode == 0 and "nothing to do: all 2 trials of grows are finished" in run.stdout, run.stderr
    assert (sweep / "spec.yaml").read_text() == moved
    assert json.loads((sweep / "submission.json").read_text())["source"] == "moved.yaml"
