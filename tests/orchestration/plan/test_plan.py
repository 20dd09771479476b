"""The planner: trial keys, cells of grid and random search, validation before any trial, resources."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepsad.errors import ConfigError
from orchestration.plan.cells import (
    build_trial,
    enumerate_cells,
    grid_params,
    probe_params,
    random_params,
    resolve_data,
)
from orchestration.plan.preflight import check_resources, validate_spec
from orchestration.plan.summary import make_plan
from orchestration.plan.trial import TrialConfig
from orchestration.spec.load import load_spec, parse_spec
from orchestration.spec.model import SweepSpec

REPO = Path(__file__).resolve().parents[3]

SPEC = """
name: plan-test
data: {dataset: digits}
protocol: {normal_classes: [0], known_anomaly_classes: [1], n_labeled_anomalies: 10, ratio_pollution: 0.05}
train: {eta: 1.0, lr: 1.0e-3, epochs: 4, milestones: [2], batch_size: 32, weight_decay: 1.0e-5}
pretrain: {lr: 1.0e-3, epochs: 3, milestones: [2], batch_size: 32}
search:
  algorithm: grid
  space:
    eta: {distribution: choice, values: [0.5, 2]}
    rep_dim: {distribution: choice, values: [8, 16, 32]}
seeds: [0, 1]
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
"""

# The key of build_trial(spec(SPEC), {"eta": 0.5, "rep_dim": 8}, seed=0). If this changes, every
# stored result stops matching its trial: bump TRIAL_KEY_VERSION on purpose, then update it here.
FIXED_KEY = "9f85c5952934157d"
FIXED_AE_KEY = "16d16bb5cd8d2512"


def spec(text: str = SPEC, **replacements: str) -> SweepSpec:
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return parse_spec(text, "plan.yaml", base_dir=REPO)


def with_section(s: SweepSpec, section: str, **update: Any) -> SweepSpec:
    """A copy of ``s`` with fields of one section replaced (keeps its source and base_dir)."""
    new = s.model_copy(update={section: getattr(s, section).model_copy(update=update)})
    new._source, new._base_dir = s._source, s._base_dir
    return new


@pytest.fixture(scope="module")
def base() -> SweepSpec:
    return spec()


@pytest.fixture(scope="module")
def trial(base: SweepSpec) -> TrialConfig:
    return build_trial(base, {"eta": 0.5, "rep_dim": 8}, 0)


# --------------------------------------------------------------------------- keys


def test_fixed_key(trial: TrialConfig) -> None:
    assert (trial.key, trial.ae_key) == (FIXED_KEY, FIXED_AE_KEY)


def test_key_is_stable_across_processes(trial: TrialConfig) -> None:
    code = (
        "import json, sys; from orchestration.plan.trial import TrialConfig;"
        "t = TrialConfig.from_dict(json.loads(sys.stdin.read())); print(t.key, t.ae_key)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(trial.to_dict()), cwd=REPO,
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
    )  # fmt: skip
    assert out.stdout.split() == [trial.key, trial.ae_key]


@pytest.mark.parametrize(
    ("replacements", "params", "seed", "ae_changes"),
    [
        ({}, {"eta": 2.0, "rep_dim": 8}, 0, False),
        ({}, {"eta": 0.5, "rep_dim": 16}, 0, True),
        ({}, {"eta": 0.5, "rep_dim": 8}, 1, True),
        ({"ratio_pollution: 0.05": "ratio_pollution: 0.1"}, None, 0, True),
        ({"n_labeled_anomalies: 10": "n_labeled_anomalies: 5"}, None, 0, True),
        (
            {
                "normal_classes: [0], known_anomaly_classes: [1]": "normal_classes: [0], known_anomaly_classes: [2]"
            },
            None,
            0,
            True,
        ),
        ({"protocol: {": "protocol: {val_fraction: 0.2, "}, None, 0, True),
        ({"dataset: digits": "dataset: breast_cancer"}, None, 0, True),
        ({"train: {eta: 1.0, lr: 1.0e-3": "train: {eta: 1.0, lr: 2.0e-3"}, None, 0, False),
        ({"epochs: 4": "epochs: 5"}, None, 0, False),
        (
            {
                "milestones: [2], batch_size: 32, weight_decay": "milestones: [3], batch_size: 32, weight_decay"
            },
            None,
            0,
            False,
        ),
        ({"batch_size: 32, weight_decay": "batch_size: 64, weight_decay"}, None, 0, False),
        ({"weight_decay: 1.0e-5": "weight_decay: 1.0e-6"}, None, 0, False),
        ({"\ntrain: {": "\ntrain: {bf16: true, "}, None, 0, True),
        ({"\ntrain: {": "\ntrain: {reference_compat: true, "}, None, 0, False),
        ({"pretrain: {lr: 1.0e-3": "pretrain: {lr: 2.0e-3"}, None, 0, True),
        ({"epochs: 3": "epochs: 6"}, None, 0, True),
        ({"pretrain: {": "pretrain: {weight_decay: 1.0e-4, "}, None, 0, True),
        (
            {"pretrain: {lr: 1.0e-3, epochs: 3, milestones: [2], batch_size: 32}": "pretrain: null"},
            None,
            0,
            True,
        ),
    ],
)
def test_key_changes_with_every_field(
    trial: TrialConfig,
    replacements: dict[str, str],
    params: dict[str, float] | None,
    seed: int,
    ae_changes: bool,
) -> None:
    other = build_trial(spec(**replacements), params or {"eta": 0.5, "rep_dim": 8}, seed)
    assert other.key != trial.key
    assert (other.ae_key != trial.ae_key) == ae_changes


def test_key_ignores_where_and_how_it_runs(trial: TrialConfig, tmp_path: Path) -> None:
    s = spec(
        **{"name: plan-test": "name: another-name\ndescription: hi\nstorage: /elsewhere",
           "data: {dataset: digits}": f"data: {{dataset: digits, data_dir: {tmp_path}}}",
           "\ntrain: {": "\ntrain: {device: cuda, ",
           "max_concurrent_trials: 2": "max_concurrent_trials: 1, gpus_per_trial: 1, workers_per_trial: 2"}
    )  # fmt: skip
    other = build_trial(s, {"eta": 0.5, "rep_dim": 8}, 0)
    assert other.device_request == "cuda" and other.data_dir == str(tmp_path)
    assert (other.key, other.ae_key) == (trial.key, trial.ae_key)
    assert replace(trial, train=replace(trial.train, device="cuda:1")).key == trial.key


def test_int_and_float_values_share_a_key(base: SweepSpec) -> None:
    a = build_trial(base, {"eta": 2, "rep_dim": 8}, 0)
    b = build_trial(base, {"eta": 2.0, "rep_dim": 8.0}, 0)
    assert a.key == b.key and a.params == {"eta": 2.0, "rep_dim": 8}


def test_no_pretraining_has_no_ae_key() -> None:
    s = spec(**{"pretrain: {lr: 1.0e-3, epochs: 3, milestones: [2], batch_size: 32}": "pretrain: null"})
    t = build_trial(s, {"eta": 1.0}, 0)
    assert t.ae_key is None and t.train.ae is None
    assert t.columns()["ae_lr"] is None and t.columns()["ae_epochs"] is None


# --------------------------------------------------------------------------- trial configs


def test_build_trial_applies_params_and_seed(trial: TrialConfig) -> None:
    assert trial.seed == trial.protocol.seed == trial.train.seed == 0
    assert trial.train.eta == 0.5 and trial.train.net.rep_dim == 8 and trial.train.net.name == "mlp"
    assert trial.train.device == "cpu" and trial.device_request == "auto"
    assert trial.train.sad.lr == 1e-3 and trial.train.ae is not None and trial.train.ae.weight_decay == 0.5e-3
    s = spec(**{"    rep_dim: {distribution: choice, values: [8, 16, 32]}":
                "    weight_decay: {distribution: choice, values: [0.1]}\n"
                "    lr: {distribution: choice, values: [0.2]}\n"
                "    ae_lr: {distribution: choice, values: [0.3]}\n"
                "    ae_weight_decay: {distribution: choice, values: [0.4]}"})  # fmt: skip
    t = build_trial(s, {"eta": 3, "weight_decay": 0.1, "lr": 0.2, "ae_lr": 0.3, "ae_weight_decay": 0.4}, 5)
    assert (t.train.sad.weight_decay, t.train.sad.lr) == (0.1, 0.2)
    assert t.train.ae is not None and (t.train.ae.lr, t.train.ae.weight_decay) == (0.3, 0.4)
    assert t.train.net.rep_dim == 8 and t.seed == 5


def test_dict_round_trip(trial: TrialConfig) -> None:
    d = json.loads(json.dumps(trial.to_dict()))
    back = TrialConfig.from_dict(d)
    assert back == trial and back.key == trial.key and back.to_dict() == trial.to_dict()
    with pytest.raises(ConfigError, match="trial config: malformed"):
        TrialConfig.from_dict({k: v for k, v in d.items() if k != "protocol"})


def test_trial_invariants(trial: TrialConfig) -> None:
    with pytest.raises(ConfigError, match="must equal the trial seed"):
        replace(trial, seed=3)
    with pytest.raises(ConfigError, match="unknown searched parameter"):
        replace(trial, params={"momentum": 0.9})
    with pytest.raises(ConfigError, match="data_dir must be absolute"):
        replace(trial, data_dir="relative/dir")


def test_columns(trial: TrialConfig) -> None:
    c = trial.columns()
    assert c == {
        "dataset": "digits", "normal_classes": [0], "known_anomaly_classes": [1], "n_known_outlier_classes": 1,
        "n_labeled_anomalies": 10, "ratio_known_outlier": 0.0, "ratio_pollution": 0.05, "ratio_known_normal": 0.0,
        "val_fraction": 0.15, "seed": 0, "net": "mlp", "rep_dim": 8, "eta": 0.5, "lr": 1e-3, "epochs": 4,
        "weight_decay": 1e-5, "batch_size": 32, "milestones": [2], "ae_lr": 1e-3, "ae_epochs": 3,
        "ae_weight_decay": 0.5e-3, "bf16": False, "reference_compat": False,
    }  # fmt: skip


def test_relative_paths_start_at_base_dir(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(60, 5))
    y = np.r_[np.zeros(50, int), np.ones(10, int)]
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mine.npz", X=x, y=y)
    text = SPEC.replace("data: {dataset: digits}", "data: {dataset: mine.npz, data_dir: data}")
    s = parse_spec(text, "rel.yaml", base_dir=tmp_path)
    assert resolve_data(s) == (str(tmp_path / "data" / "mine.npz"), str(tmp_path / "data"))
    t = build_trial(s, {"eta": 1.0, "rep_dim": 8}, 0)
    assert t.train.net.input_shape == (5,) and t.dataset == str(tmp_path / "data" / "mine.npz")


def test_build_trial_errors_name_the_field(base: SweepSpec) -> None:
    with pytest.raises(
        ConfigError, match=r"^plan\.yaml: search\.space\.momentum: not a searchable parameter$"
    ):
        build_trial(base, {"momentum": 0.9}, 0)
    mnist = spec(**{"dataset: digits": "dataset: mnist", "values: [8, 16, 32]": "values: [16, 32]"})
    with pytest.raises(ConfigError) as info:
        build_trial(mnist, {"eta": -1.0, "rep_dim": 20}, 0)
    assert str(info.value).splitlines() == [
        "plan.yaml: search.space.rep_dim: mnist_lenet needs a multiple of 16 (got 20)",
    ]
    with pytest.raises(ConfigError, match=r"^plan\.yaml: search\.space\.eta: must be > 0 \(got -1\.0\)$"):
        build_trial(base, {"eta": -1.0}, 0)


# --------------------------------------------------------------------------- cells


def test_grid_enumeration_counts_and_order(base: SweepSpec) -> None:
    assert grid_params(base) == [
        {"eta": 0.5, "rep_dim": 8}, {"eta": 0.5, "rep_dim": 16}, {"eta": 0.5, "rep_dim": 32},
        {"eta": 2.0, "rep_dim": 8}, {"eta": 2.0, "rep_dim": 16}, {"eta": 2.0, "rep_dim": 32},
    ]  # fmt: skip
    cells = enumerate_cells(base)
    assert [(c.params["eta"], c.params["rep_dim"], c.seed) for c in cells[:4]] == [
        (0.5, 8, 0), (0.5, 8, 1), (0.5, 16, 0), (0.5, 16, 1),
    ]  # fmt: skip
    assert len(cells) == 12 and len({c.key for c in cells}) == 12
    assert [c.key for c in enumerate_cells(spec())] == [c.key for c in cells]
    # AE keys: rep_dim × seed; eta does not change the autoencoder.
    assert len({c.ae_key for c in cells}) == 6


def test_random_sampling_is_reproducible(base: SweepSpec) -> None:
    s = spec(**{
        "algorithm: grid": "algorithm: random\n  seed: 7\n  num_trials: 5",
        "eta: {distribution: choice, values: [0.5, 2]}": "eta: {distribution: log_uniform, low: 0.1, high: 10}",
        "rep_dim: {distribution: choice, values: [8, 16, 32]}": "rep_dim: {distribution: int_uniform, low: 4, high: 12}",
    })  # fmt: skip
    draws = random_params(s)
    assert draws == random_params(spec(**{
        "algorithm: grid": "algorithm: random\n  seed: 7\n  num_trials: 5",
        "eta: {distribution: choice, values: [0.5, 2]}": "eta: {distribution: log_uniform, low: 0.1, high: 10}",
        "rep_dim: {distribution: choice, values: [8, 16, 32]}": "rep_dim: {distribution: int_uniform, low: 4, high: 12}",
    }))  # fmt: skip
    assert len(draws) == 5
    assert all(0.1 <= d["eta"] <= 10 and 4 <= d["rep_dim"] <= 12 for d in draws)
    assert all(isinstance(d["eta"], float) and isinstance(d["rep_dim"], int) for d in draws)
    rng = np.random.default_rng(7)  # the documented order: eta then rep_dim, per draw
    first = {
        "eta": float(np.exp(rng.uniform(np.log(0.1), np.log(10)))),
        "rep_dim": int(rng.integers(4, 12, endpoint=True)),
    }
    assert draws[0] == first
    other = with_section(s, "search", seed=8)
    assert random_params(other) != draws
    assert len(enumerate_cells(s)) == 10


def test_random_drops_repeated_draws(base: SweepSpec) -> None:
    s = with_section(base, "search", algorithm="random", num_trials=40)
    draws = random_params(s)
    assert len(draws) == 6 and len({json.dumps(d, sort_keys=True) for d in draws}) == 6


def test_tpe_has_no_cells_but_probes_the_extremes() -> None:
    s = load_spec(REPO / "sweeps" / "mnist_search.yaml")
    with pytest.raises(ValueError, match="tpe"):
        enumerate_cells(s)
    probes = probe_params(s)
    assert {p["rep_dim"] for p in probes} == {16, 32, 64}
    assert {p["eta"] for p in probes} == {0.1, 10.0}
    assert {p["weight_decay"] for p in probes} == {1e-7, 1e-4}


# --------------------------------------------------------------------------- validation with data


def test_validate_quickstart() -> None:
    s = load_spec(REPO / "sweeps" / "quickstart.yaml")
    probes = validate_spec(s)
    assert probes and all(p.dataset == "digits" and p.seed in s.seeds for p in probes)
    assert make_plan(s).n_trials == 6


def test_validate_mnist_search_on_the_real_data(shared_data: Path) -> None:
    s = load_spec(REPO / "sweeps" / "mnist_search.yaml")
    assert s.data.data_dir == "../shared/data"
    s = with_section(s, "data", data_dir=str(shared_data))
    probes = validate_spec(s)
    assert {p.seed for p in probes} == {0, 1, 2}
    assert {p.train.net.rep_dim for p in probes} == {16, 32, 64}
    assert all(p.train.net.name == "mnist_lenet" and p.train.sad.epochs == 150 for p in probes)


def test_validate_grid_returns_every_cell(base: SweepSpec) -> None:
    assert [c.key for c in validate_spec(base)] == [c.key for c in enumerate_cells(base)]


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        (
            {"n_labeled_anomalies: 10": "n_labeled_anomalies: 500"},
            [
                f"plan.yaml: protocol.n_labeled_anomalies: seed {s}: digits: asked for 500 labeled anomalies of "
                "class 1 (n_labeled_anomalies=500) but the training pool has only 93 (after the validation split)"
                for s in (0, 1)
            ],
        ),
        (
            {"known_anomaly_classes: [1]": "known_anomaly_classes: [12]"},
            [
                f"plan.yaml: protocol.known_anomaly_classes: seed {s}: known anomaly class 12 is not a class of "
                "digits (classes 0..9)"
                for s in (0, 1)
            ],
        ),
        (
            {"n_labeled_anomalies: 10, ratio_pollution: 0.05": "val_fraction: 0.01"},
            [
                f"plan.yaml: protocol: seed {s}: the validation part has no labelled anomalies, so val_auroc "
                "(labelled anomalies against the rest) is undefined; raise n_labeled_anomalies/ratio_known_outlier "
                "or val_fraction (or, to compare with published protocols only, choose val_auroc_oracle: the true "
                "labels, which no user has)"
                for s in (0, 1)
            ],
        ),
    ],
    ids=["too-many-labeled", "unknown-class", "no-val-anomalies"],
)
def test_validate_reports_infeasible_protocols(replacements: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_spec(spec(**replacements))
    assert str(info.value).splitlines() == expected


def test_validate_reports_missing_data(tmp_path: Path) -> None:
    mnist = {"dataset: digits": "dataset: mnist", "values: [8, 16, 32]": "values: [16]"}
    with pytest.raises(ConfigError, match=r"^plan\.yaml: data\.data_dir: mnist: needs a data directory"):
        validate_spec(spec(**mnist))
    mnist["dataset: digits"] = f"dataset: mnist, data_dir: {tmp_path / 'nope'}"
    with pytest.raises(
        ConfigError, match=r"^plan\.yaml: data\.data_dir: mnist: data directory .*/nope does not"
    ):
        validate_spec(spec(**mnist))
    mnist["dataset: digits"] = f"dataset: mnist, data_dir: {tmp_path}"
    with pytest.raises(ConfigError) as info:
        validate_spec(spec(**mnist))
    assert str(info.value).startswith("plan.yaml: data.dataset: mnist: missing train-images-idx3-ubyte(.gz)")
    assert len(str(info.value).splitlines()) == 1
    text = SPEC.replace("dataset: digits", f"dataset: {tmp_path / 'gone.npz'}")
    with pytest.raises(ConfigError, match=r"^plan\.yaml: data\.dataset: .*/gone\.npz: no such file$"):
        validate_spec(parse_spec(text, "plan.yaml"))


def test_validate_checks_networks_of_data_files(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 255, size=(80, 1, 28, 28), dtype=np.uint8)
    y = np.r_[np.zeros(60, int), np.ones(20, int)]
    np.savez(tmp_path / "img.npz", X=x, y=y)
    text = SPEC.replace("data: {dataset: digits}", f"data: {{dataset: {tmp_path / 'img.npz'}}}")
    with pytest.raises(ConfigError) as info:
        validate_spec(parse_spec(text, "plan.yaml"))
    assert str(info.value).splitlines()[0] == (
        "plan.yaml: search.space.rep_dim: mnist_lenet needs a multiple of 16 (got 8)"
    )


# --------------------------------------------------------------------------- resources and summary


@pytest.mark.parametrize(
    ("update", "cpus", "gpus", "expected"),
    [
        ({}, 2, 0, None),
        ({"max_concurrent_trials": 4}, 2, 0,
         "resources.max_concurrent_trials: 4 concurrent trials × 1 CPU need 4 CPUs but 2 are available; at most 2 fit"),
        ({"workers_per_trial": 2, "max_concurrent_trials": 1}, 1, 0,
         "resources.workers_per_trial: 2 workers × 1 CPU need 2 CPUs per trial but 1 is available"),
        ({"cpus_per_trial": 4, "max_concurrent_trials": 1}, 2, 0,
         "resources.cpus_per_trial: a trial needs 4 CPUs but 2 are available"),
        ({"gpus_per_trial": 1, "max_concurrent_trials": 1}, 2, 0,
         "resources.gpus_per_trial: a trial needs 1 GPU but 0 are available"),
        ({"gpus_per_trial": 0.5, "max_concurrent_trials": 2}, 2, 1, None),
        ({"gpus_per_trial": 0.5, "max_concurrent_trials": 3}, 4, 1,
         "resources.max_concurrent_trials: 3 concurrent trials × 0.5 GPU need 1.5 GPUs but 1 is available; at most 2 fit"),
        ({"cpus_per_trial": 0.5, "workers_per_trial": 2, "max_concurrent_trials": 2}, 2, 0, None),
    ],
)  # fmt: skip
def test_check_resources(
    base: SweepSpec, update: dict[str, Any], cpus: float, gpus: float, expected: str | None
) -> None:
    s = with_section(base, "resources", **update)
    if expected is None:
        check_resources(s, cpus, gpus)
        return
    with pytest.raises(ConfigError) as info:
        check_resources(s, cpus, gpus)
    assert str(info.value) == f"plan.yaml: {expected}"


def test_dry_run_description_of_a_grid(base: SweepSpec) -> None:
    plan = make_plan(base)
    assert (plan.n_configurations, plan.n_trials, plan.n_ae_trainings, plan.ae_reuse) == (6, 12, 6, 6)
    assert plan.describe() == [
        "sweep plan-test (plan.yaml): grid search over eta, rep_dim",
        "  trials: 6 configurations × 2 seeds [0, 1] = 12 trials",
        "  autoencoders: 6 to train; the cache serves the other 6 trials",
        "  objective: maximise val_auroc",
        "  per trial: 1 CPU, 0 GPUs · at most 2 at once · up to 2 retries of a failed trial",
        "  storage: runs/sweeps/plan-test",
    ]
    assert json.loads(json.dumps(plan.to_dict()))["ae_reuse"] == 6


def test_dry_run_description_of_tpe() -> None:
    quick = make_plan(load_spec(REPO / "sweeps" / "quickstart.yaml"))
    assert quick.describe()[1:3] == [
        "  trials: 6 configurations × 1 seed [0] = 6 trials",
        "  autoencoders: up to 2 to train (the searched values decide)",
    ]
    mnist = load_spec(REPO / "sweeps" / "mnist_search.yaml")
    plan = make_plan(mnist)
    assert (plan.n_trials, plan.n_ae_trainings, plan.ae_exact) == (90, 9, False)
    assert (
        plan.describe()[4]
        == "  per trial: 2 CPUs, 0.25 GPU · at most 4 at once · up to 2 retries of a failed trial"
    )
    eta_only = with_section(
        mnist, "search", space=mnist.search.space.model_copy(update={"rep_dim": None, "weight_decay": None})
    )
    plan = make_plan(eta_only)
    assert (plan.n_ae_trainings, plan.ae_exact, plan.ae_reuse) == (3, True, 87)
    assert make_plan(mnist).describe()[3] == "  objective: maximise val_auroc"
