"""Every numeric sweep field has a finite, sensible range, and each problem names its own field
(issue 12, finding 6: ``num_trials: 10**30`` accepted, seed 2**32 blamed on ``protocol.test_fraction``,
a choice with three bad values reporting one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepsad.errors import ConfigError
from orchestration.spec import model as spec_module
from orchestration.spec.load import parse_spec
from orchestration.spec.model import MAX_TRIALS, SEED_LIMIT
from tests.conftest import REPO

QUICKSTART = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text(encoding="utf-8"))


def _with(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    d = yaml.safe_load(yaml.safe_dump(base or QUICKSTART))
    for dotted, value in overrides.items():
        node = d
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return yaml.safe_dump(d, sort_keys=False)


def _lines(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_spec(_with(overrides, base), "x.yaml")
    return str(info.value).splitlines()


GRID = yaml.safe_load(_with({"search": {"algorithm": "grid", "space": {"eta": {"distribution": "choice",
                                                                             "values": [1.0]}}}}))  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("search.num_trials", 10**30, "must be <= 1000000"),
        ("search.seed", 2**32, "must be < 4294967296"),
        ("train.eta", 1e300, "must be <= 1000000"),
        ("train.lr", 1e30, "must be <= 10"),
        ("train.weight_decay", float("inf"), "must be a finite number"),
        ("train.weight_decay", float("nan"), "must be a finite number"),
        ("train.epochs", 10**30, "must be <= 100000"),
        ("train.batch_size", 10**9, "must be <= 1048576"),
        ("pretrain.lr", float("nan"), "must be a finite number"),
        ("pretrain.weight_decay", 1e6, "must be <= 10"),
        ("protocol.n_labeled_anomalies", 10**30, "must be <= 1000000000"),
        ("protocol.val_fraction", float("nan"), "must be a finite number"),
        ("protocol.ratio_pollution", float("-inf"), "must be a finite number"),
        ("resources.cpus_per_trial", 1e300, "must be <= 4096"),
        ("resources.gpus_per_trial", float("nan"), "must be a finite number"),
        ("resources.max_concurrent_trials", 10**30, "must be <= 1000000"),
        ("resources.max_failures", 10**6, "must be <= 1000"),
        ("resources.checkpoint_interval_s", float("inf"), "must be a finite number"),
        ("search.scheduler", {"type": "asha", "reduction_factor": 1e9}, None),
    ],
)
def test_each_numeric_field_is_bounded_and_named(field: str, value: Any, message: str | None) -> None:
    lines = _lines({field: value})
    if message is None:  # a section: its own field is named
        assert lines == ["x.yaml: search.scheduler.reduction_factor: must be <= 1000 (got 1000000000)"]
        return
    assert len(lines) == 1 and lines[0].startswith(f"x.yaml: {field}: {message} (got "), lines


def test_num_trials_beyond_the_bound_is_refused_at_the_bound_and_over_seeds() -> None:
    assert _lines({"search.num_trials": MAX_TRIALS + 1}) == [
        f"x.yaml: search.num_trials: must be <= {MAX_TRIALS} (got {MAX_TRIALS + 1})"
    ]
    parse_spec(_with({"search.num_trials": MAX_TRIALS}), "x.yaml")
    assert _lines({"search.num_trials": MAX_TRIALS, "seeds": [0, 1]}) == [
        "x.yaml: search.num_trials: plans 2,000,000 trials (1000000 configurations × 2 seeds); a sweep may "
        "plan at most 1,000,000"
    ]


def test_a_grid_too_large_to_plan_is_refused() -> None:
    values = {"distribution": "choice", "values": [float(v) for v in range(1, 1001)]}
    space = {"eta": values, "lr": {"distribution": "choice", "values": [v / 1000 for v in range(1, 1001)]}}
    assert _lines({"search.space": space, "seeds": [0, 1]}, GRID) == [
        "x.yaml: search.space: plans 2,000,000 trials (1000 × 1000 combinations × 2 seeds); a sweep may "
        "plan at most 1,000,000"
    ]


def test_an_ablation_too_large_to_plan_is_refused_without_checking_each_cell() -> None:
    base = yaml.safe_load((REPO / "sweeps" / "ablation_smoke.yaml").read_text(encoding="utf-8"))
    del base["protocol"]["ratio_pollution"]
    axes = {"normal_classes": [[0], [1]], "ratio_known_outlier": [i / 10_000 for i in range(5000)],
            "ratio_pollution": [i / 10_000 for i in range(5000)]}  # fmt: skip
    lines = _lines({"ablation.axes": axes}, base)
    assert lines == [
        "x.yaml: ablation.axes: plans 300,000,000 trials (2 normal_classes × 5000 ratio_known_outlier × 5000 "
        "ratio_pollution × 2 seeds × 3 methods); a sweep may plan at most 1,000,000"
    ]


@pytest.mark.parametrize("seed", [SEED_LIMIT, -1])
def test_a_seed_out_of_range_names_its_own_index(seed: int) -> None:
    lines = _lines({"seeds": [0, seed]})
    bound = "must be < 4294967296" if seed > 0 else "must be >= 0"
    assert lines == [f"x.yaml: seeds[1]: {bound} (got {seed})"]
    parse_spec(_with({"seeds": [0, SEED_LIMIT - 1]}), "x.yaml")


def test_every_bad_value_of_a_choice_is_reported_at_once() -> None:
    space = {"eta": {"distribution": "choice", "values": [-1, 0, "x", 1e9]},
             "rep_dim": {"distribution": "choice", "values": [8, 8.5, 0, None]}}  # fmt: skip
    lines = _lines({"search.space": space}, GRID)
    assert sorted(lines) == sorted([
        "x.yaml: search.space.eta.values[0]: must be > 0 (got -1)",
        "x.yaml: search.space.eta.values[1]: must be > 0 (got 0)",
        "x.yaml: search.space.eta.values[2]: must be a number (got x)",
        "x.yaml: search.space.eta.values[3]: must be <= 1000000 (got 1000000000)",
        "x.yaml: search.space.rep_dim.values[1]: must be an integer (got 8.5)",
        "x.yaml: search.space.rep_dim.values[2]: must be >= 1 (got 0)",
        "x.yaml: search.space.rep_dim.values[3]: must be a number (got null)",
    ])  # fmt: skip


def test_searched_ranges_are_those_of_the_fields_they_replace() -> None:
    space = {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 1e7},
             "lr": {"distribution": "uniform", "low": 1e-4, "high": 100},
             "rep_dim": {"distribution": "int_uniform", "low": 8, "high": 10**30}}  # fmt: skip
    assert _lines({"search.space": space}) == [
        "x.yaml: search.space.eta.high: must be <= 1000000 (got 10000000)",
        "x.yaml: search.space.rep_dim.high: must be <= 4096 (got 1000000000000000000000000000000)",
        "x.yaml: search.space.lr.high: must be <= 10 (got 100)",
    ]


def test_long_lists_and_names_are_refused() -> None:
    assert _lines({"seeds": list(range(10_001))}) == ["x.yaml: seeds: must have at most 10,000 values (got 10001)"]
    assert _lines({"name": "n" * 101}) == [
        "x.yaml: name: must be at most 100 characters (it names the sweep's directory) (got " + "n" * 77 + "...)"
    ]


def test_the_spec_bounds_are_accepted_by_the_core() -> None:
    """Whatever a sweep file may hold, the core's configs take (else a trial would fail late)."""
    from deepsad.networks import NetConfig
    from deepsad.training import OptimConfig, TrainConfig

    m = spec_module
    sad = OptimConfig(lr=m.MAX_LR, epochs=m.MAX_EPOCHS, batch_size=m.MAX_BATCH_SIZE,
                      weight_decay=m.MAX_WEIGHT_DECAY, milestones=(m.MAX_EPOCHS,))  # fmt: skip
    net = NetConfig(name="mlp", rep_dim=m.MAX_WIDTH, input_shape=(64,), h_dims=(m.MAX_WIDTH,))
    TrainConfig(net=net, eta=m.MAX_ETA, sad=sad, ae=sad, seed=SEED_LIMIT - 1)


def test_a_bad_seed_through_the_command_names_the_seed(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(_with({"seeds": [0, SEED_LIMIT]}), encoding="utf-8")
    (tmp_path / "n.yaml").write_text(_with({"search.num_trials": 10**30}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DEEPSAD_DEBUG", None)
    for name, expected in [("s.yaml", "error: s.yaml: seeds[1]: must be < 4294967296 (got 4294967296)"),
                           ("n.yaml", "error: n.yaml: search.num_trials: must be <= 1000000 (got 10000000000")]:
        run = subprocess.run([sys.executable, "-m", "orchestration.cli.app", "sweep", "submit", name, "--dry-run"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 2 and run.stderr.startswith(expected), run.stdout + run.stderr
        assert len(run.stderr.splitlines()) == 1
