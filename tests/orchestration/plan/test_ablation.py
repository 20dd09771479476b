"""Ablation sweeps without Ray: the ``ablation:`` section, its cells and keys, the checks before any
trial, and each method and policy run through :func:`orchestration.jobs.kinds.execute_unit` on
scikit-learn's digits (a training is a fraction of a second)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from deepsad.data.splits import SemiSupervisedSplit, make_split
from deepsad.errors import ConfigError
from orchestration.jobs import faults
from orchestration.jobs.ablation import unit_job
from orchestration.jobs.base import RunContext, without_labels
from orchestration.jobs.kinds import execute_unit
from orchestration.plan.ablation import (
    AblationPlan,
    AblationUnit,
    ablation_plan,
    expand_units,
    validate_ablation,
)
from orchestration.plan.summary import make_plan
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.results import ResultStore, RowWriter
from orchestration.store.storage import Storage
from tests.conftest import REPO
from tests.orchestration.jobs.test_trial import FakeReporter

SOURCE = "abl.yaml"


def done_units(store: ResultStore) -> set[str]:
    """Keys of the units whose selected row is finished (the store's ledger)."""
    return set(store.ledger().done)


def done_units_of(store: ResultStore, units: list[AblationUnit]) -> set[str]:
    return {u.key for u in units} & done_units(store)


def record_unit_end(sweep: str, sweep_dir: Storage, unit: AblationUnit, *, trial_id: str, status: str,
                    error: str | None, last: dict[str, Any]) -> None:
    """What the driver's store callback does for a unit's Tune trial that ended without its row."""
    unit_job(unit).record_end(RowWriter(sweep_dir, sweep, trial_id), status, error, last)


def clear_unit_row(sweep_dir: Storage, unit: AblationUnit) -> None:
    RowWriter(sweep_dir, "abl").delete(unit.key)


def spec_dict(**ablation: Any) -> dict[str, Any]:
    """An ablation on digits: normal classes 0 or 1 × 0 or 20 labeled 5s, 10 % pollution, tiny nets."""
    return {
        "name": "abl",
        "data": {"dataset": "digits"},
        "protocol": {"known_anomaly_classes": [5], "ratio_pollution": 0.1, "val_fraction": 0.2},
        "train": {"lr": 1e-3, "epochs": 3, "milestones": [2], "batch_size": 32, "device": "cpu"},
        "pretrain": {"lr": 1e-3, "epochs": 2, "milestones": [1], "batch_size": 32},
        "seeds": [0, 1],
        "ablation": {
            "axes": {"normal_classes": [[0], [1]], "n_labeled_anomalies": [0, 20]},
            "methods": ["deepsad", "deepsvdd", "isoforest"],
            **ablation,
        },
    }


def spec_of(d: dict[str, Any]) -> SweepSpec:
    return parse_spec(yaml.safe_dump(d, sort_keys=False), SOURCE)


def problems(d: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        spec_of(d)
    return str(info.value).splitlines()


def context(root: Path) -> RunContext:
    return RunContext(sweep="abl", storage_uri=str(root), checkpoint_interval_s=0.0)


def store_of(root: Path) -> ResultStore:
    return ResultStore(Storage.from_uri(str(root)))


# --------------------------------------------------------------------------- the spec


def test_a_minimal_ablation_reads_as_a_grid_without_search() -> None:
    spec = spec_of(spec_dict())
    assert spec.ablation is not None and spec.ablation.policy == "fixed"
    assert spec.search.algorithm == "grid" and not spec.search.space.items()
    assert spec.protocol.normal_classes == (0,)  # the axis' first value stands in; each cell sets its own


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"axes": {"gamma_l": [0.1]}}, "ablation.axes.gamma_l: unknown field (known: dataset, known_anomaly_classes, "
         "n_known_outlier_classes, n_labeled_anomalies, normal_classes, ratio_known_outlier, ratio_pollution)"),
        ({"axes": {"ratio_pollution": [0.0, 0.0]}}, "ablation.axes.ratio_pollution: value 0 is repeated (got [0, 0])"),
        ({"axes": {"ratio_known_outlier": []}}, "ablation.axes.ratio_known_outlier: must not be empty (got [])"),
        ({"axes": {"seed": [1]}}, "ablation.axes.seed: unknown field; the split seeds come from the top-level "
         "`seeds` list"),
        ({"methods": ["deepsad", "svdd"]}, "ablation.methods[1]: must be one of deepsad, deepsvdd, isoforest or ocsvm "
         "(got svdd)"),
        ({"policy": "tuned", "budget": 4}, "ablation.policy: tuned needs search.space: the hyperparameters to tune "
         "in each cell (got tuned)"),
        ({"budget": 0}, "ablation.budget: must be >= 1 (got 0)"),
        ({"budget": 3}, "ablation.budget: only policy tuned has a budget; remove it (got 3)"),
        ({"axes": {"n_labeled_anomalies": [0, -5]}}, "ablation.axes.n_labeled_anomalies[1]: must be an integer >= 0 "
         "(got -5)"),
        ({"axes": {"ratio_known_outlier": [0.0, 1.5]}}, "ablation.axes.ratio_known_outlier[1]: must be in [0, 1) "
         "(got 1.5)"),
        ({"axes": {"ratio_pollution": [0.1]}}, "ablation.axes.ratio_pollution: also given as protocol.ratio_pollution; "
         "give it in one place"),
        ({"axes": {"normal_classes": [[0], [5]]}}, "ablation.axes.normal_classes[1]: protocol.known_anomaly_classes: "
         "class 5 is also a normal class (normal_classes=[5])"),
    ],
)  # fmt: skip
def test_ablation_problems_are_one_line_each(change: dict[str, Any], expected: str) -> None:
    d = spec_dict()
    d["ablation"]["axes"].update(change.pop("axes", {}))
    d["ablation"].update(change)
    assert problems(d) == [f"{SOURCE}: {expected}"]


def test_search_must_fit_the_policy() -> None:
    d = spec_dict(policy="tuned", budget=3)
    d["search"] = {"algorithm": "tpe", "num_trials": 5, "space": {"eta": {"distribution": "log_uniform", "low": 0.1,
                                                                         "high": 10}}}  # fmt: skip
    assert problems(d) == [
        f"{SOURCE}: search.algorithm: an ablation runs its cells as a grid (policy tuned: a TPE study inside each "
        "cell); remove algorithm (got tpe)",
        f"{SOURCE}: search.num_trials: ablation.budget sets the trainings per cell; remove num_trials (got 5)",
    ]
    fixed = spec_dict()
    fixed["search"] = {"space": {"eta": {"distribution": "choice", "values": [1.0]}}}
    assert problems(fixed) == [
        f"{SOURCE}: search: policy fixed trains the file's own hyperparameters; remove search, or set "
        "ablation.policy: tuned"
    ]
    tuned = spec_dict(policy="tuned", budget=3)
    tuned["search"] = {"space": {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2}}}
    assert spec_of(tuned).search.space.lr is not None  # tuned takes any distribution (TPE inside the cell)


def test_a_fixed_ablation_may_name_the_metric_its_baselines_choose_on(tmp_path: Path) -> None:
    default = {u.cell: u for u in expand_units(spec_of(spec_dict())) if u.is_baseline}
    d = spec_dict()
    d["search"] = {"objective": {"metric": "val_auroc_oracle"}}
    oracle = {u.cell: u for u in expand_units(spec_of(d)) if u.is_baseline}
    assert default.keys() == oracle.keys() and default
    assert {u.objective for u in default.values()} == {"val_auroc"}
    assert {u.objective for u in oracle.values()} == {"val_auroc_oracle"}
    # a baseline that chose on another metric is another result; the default keys stay what they were
    assert not {u.key for u in default.values()} & {u.key for u in oracle.values()}
    assert any("isoforest: hyperparameters chosen on val_auroc_oracle" in line
               for line in make_plan(spec_of(d)).describe())  # fmt: skip
    # in a cell without labelled anomalies, the user's metric cannot choose; the oracle can
    unit = next(u for u in oracle.values() if u.axes["n_labeled_anomalies"] == 0)
    (row,) = execute_unit(unit, FakeReporter(tmp_path), context(tmp_path / "abl"))
    assert row["status"] == "finished" and row["val_auroc"] is None and row["val_auroc_oracle"] is not None
    assert "selection" not in json.loads(row["params_json"])


def test_a_file_without_ablation_still_needs_a_non_empty_search() -> None:
    d = spec_dict()
    del d["ablation"]
    d["protocol"]["normal_classes"] = [0]
    assert problems(d) == [f"{SOURCE}: search: missing (required)"]
    d["search"] = {"num_trials": 2, "space": {}}
    assert problems(d)[0].startswith(f"{SOURCE}: search.space: empty — nothing to search")


# --------------------------------------------------------------------------- cells and keys


def test_units_are_cells_by_seeds_by_methods_in_a_fixed_order() -> None:
    units = expand_units(spec_of(spec_dict()))
    assert len(units) == 2 * 2 * 2 * 3  # normal classes × labeled counts × seeds × methods
    head = [(u.axes["normal_classes"], u.axes["n_labeled_anomalies"], u.seed, u.method) for u in units[:7]]
    assert head == [
        ([0], 0, 0, "deepsad"), ([0], 0, 0, "deepsvdd"), ([0], 0, 0, "isoforest"),
        ([0], 0, 1, "deepsad"), ([0], 0, 1, "deepsvdd"), ([0], 0, 1, "isoforest"),
        ([0], 20, 0, "deepsad"),
    ]  # fmt: skip
    assert len({u.key for u in units}) == len(units) and len({u.cell for u in units}) == len(units)
    assert [u.policy for u in units[:3]] == ["fixed", "fixed", "own"]
    u = units[6]
    assert u.trial.protocol.normal_classes == (0,) and u.trial.protocol.n_labeled_anomalies == 20
    assert u.trial.protocol.seed == 0 and u.trial.protocol.known_anomaly_classes == (5,)
    assert [x.key for x in expand_units(spec_of(spec_dict()))] == [x.key for x in units]  # deterministic


def test_methods_of_a_cell_differ_in_key_but_deep_ones_share_the_autoencoder() -> None:
    sad, svdd, forest = expand_units(spec_of(spec_dict()))[:3]
    assert len({sad.key, svdd.key, forest.key}) == 3
    assert sad.ae_key == svdd.ae_key and sad.ae_key is not None and forest.ae_key is None
    assert svdd.trial.train.eta == 1.0


def test_keys_follow_what_changes_the_result() -> None:
    base = expand_units(spec_of(spec_dict()))
    d = spec_dict()
    d["train"]["lr"] = 1e-2
    d["train"]["eta"] = 3.0
    changed = {(u.method, u.cell): u.key for u in expand_units(spec_of(d))}
    for u in base:
        same = changed[(u.method, u.cell)] == u.key
        # baselines ignore the training config; Deep SVDD ignores η but not lr; Deep SAD both
        assert same == (u.method == "isoforest"), u.method
    assert all(u.cell == v.cell for u, v in zip(base, expand_units(spec_of(d)), strict=True))


def test_growing_an_axis_or_the_seeds_only_adds_keys() -> None:
    before = {u.key for u in expand_units(spec_of(spec_dict()))}
    d = spec_dict()
    d["seeds"] = [0, 1, 2]
    d["ablation"]["axes"]["n_labeled_anomalies"] = [0, 20, 40]
    after = {u.key for u in expand_units(spec_of(d))}
    assert before < after and len(after) == 2 * 3 * 3 * 3


def test_overlapping_normal_and_known_classes_are_left_out_of_the_grid() -> None:
    d = spec_dict()
    del d["protocol"]["known_anomaly_classes"]
    d["ablation"]["axes"] = {"normal_classes": [[0], [1], [2]], "known_anomaly_classes": [[0], [1], [2]]}
    spec = spec_of(d)
    units = expand_units(spec)
    pairs = {(tuple(u.axes["normal_classes"]), tuple(u.axes["known_anomaly_classes"])) for u in units}
    assert pairs == {((n,), (k,)) for n in range(3) for k in range(3) if n != k}
    plan = ablation_plan(spec, units)
    assert plan.n_cells == 6 and plan.n_left_out == 3 and plan.n_trials == 6 * 2 * 3
    assert "(3 overlapping normal/known-class combinations left out)" in plan.describe()[1]


def test_the_plan_counts_trials_trainings_and_shared_autoencoders() -> None:
    spec = spec_of(spec_dict())
    plan = make_plan(spec)
    assert isinstance(plan, AblationPlan)
    assert plan.n_trials == 24 and plan.n_trainings == 16 and plan.n_ae_trainings == 8 and plan.ae_reuse == 8
    assert plan.describe()[2] == "  autoencoders: 8 to train; the cache serves the other 8 trainings"
    assert plan.to_dict()["algorithm"] == "ablation"


def test_a_unit_round_trips_through_its_dict() -> None:
    d = spec_dict(policy="tuned", budget=2)
    d["search"] = {"seed": 3, "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}}
    for u in expand_units(spec_of(d))[:3]:
        again = AblationUnit.from_dict(json.loads(json.dumps(u.to_dict())))
        assert again == u and again.key == u.key and again.cell == u.cell
    sad, svdd, _ = expand_units(spec_of(d))[:3]
    assert (sad.policy, sad.budget, sad.search_seed) == ("tuned", 2, 3)
    assert svdd.policy == "fixed", "Deep SVDD has nothing to tune when only η is searched"


# --------------------------------------------------------------------------- checks before any trial


def test_validation_names_the_axis_value_that_makes_a_split_infeasible() -> None:
    d = spec_dict()
    d["ablation"]["axes"]["n_labeled_anomalies"] = [0, 20, 500]
    d["ablation"]["axes"]["normal_classes"] = [[0], [1], [12]]
    with pytest.raises(ConfigError) as info:
        validate_ablation(spec_of(d))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{SOURCE}: ablation.axes.n_labeled_anomalies[2]: at normal_classes=[0], "
        "n_labeled_anomalies=500, seed 0: digits: asked for 500 labeled anomalies of class 5"
    )
    assert lines[0].endswith("(and 3 more cells)")
    assert lines[1] == (f"{SOURCE}: ablation.axes.normal_classes[2]: at normal_classes=[12], n_labeled_anomalies=0, "
                        "seed 0: normal class 12 is not a class of digits (classes 0..9) (and 5 more cells)")  # fmt: skip


def test_policy_tuned_needs_anomalies_in_every_validation_part() -> None:
    d = spec_dict(policy="tuned", budget=2)
    d["search"] = {"space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}}
    d["protocol"]["ratio_pollution"] = 0.0
    with pytest.raises(ConfigError, match=r"ablation.policy: tuned chooses on validation, but at normal_classes=\[0\], "
                       r"n_labeled_anomalies=0, seed 0 the validation part has no labelled anomalies"):  # fmt: skip
        validate_ablation(spec_of(d))
    d = spec_dict()
    d["protocol"]["ratio_pollution"] = 0.0
    assert len(validate_ablation(spec_of(d))) == 24  # fixed and the baselines do without


# --------------------------------------------------------------------------- running units


@pytest.fixture(scope="module")
def fixed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[AblationUnit], list[dict[str, Any]]]:
    """Deep SAD, Deep SVDD and Isolation Forest of one cell (normal class 0, 20 labeled 5s, seed 0)."""
    root = tmp_path_factory.mktemp("fixed") / "abl"
    units = [u for u in expand_units(spec_of(spec_dict())) if u.axes["n_labeled_anomalies"] == 20][:3]
    for u in units:
        execute_unit(u, FakeReporter(root.parent / "snap"), context(root))
    rows = [store_of(root).row(u.key) for u in units]  # as stored: every column
    assert all(r is not None for r in rows)
    return root, units, rows  # type: ignore[return-value]


def test_fixed_rows_carry_the_ablation_columns(
    fixed_run: tuple[Path, list[AblationUnit], list[dict[str, Any]]],
) -> None:
    root, units, rows = fixed_run
    for u, r in zip(units, rows, strict=True):
        assert r["trial_key"] == u.key and r["status"] == "finished" and r["selected"] is True
        assert (r["method"], r["policy"], r["cell"]) == (u.method, u.policy, u.cell)
        assert json.loads(r["axes_json"]) == {"n_labeled_anomalies": 20, "normal_classes": [0]}
        assert r["inner_trial"] is None and r["seed"] == 0
    assert len({r["fingerprint"] for r in rows}) == 1, "every method runs on the same split"
    assert done_units(store_of(root)) == {u.key for u in units}


def test_deep_svdd_takes_deep_sads_autoencoder_from_the_cache(
    fixed_run: tuple[Path, list[AblationUnit], list[dict[str, Any]]],
) -> None:
    _, _, (sad, svdd, _) = fixed_run
    assert sad["cache_hit"] is False and sad["ae_seconds"] > 0
    assert svdd["cache_hit"] is True and svdd["ae_key"] == sad["ae_key"]
    assert svdd["ae_seconds_saved"] == pytest.approx(sad["ae_seconds"])
    assert svdd["val_auroc"] != sad["val_auroc"], "Deep SVDD must not see the labels Deep SAD trains with"


def test_deep_svdd_trains_on_the_split_with_its_labels_zeroed() -> None:
    unit = expand_units(spec_of(spec_dict()))[7]  # Deep SVDD, 20 labeled anomalies
    split = make_split(_digits(), unit.trial.protocol)
    assert (split.train.semi_targets == -1).sum() == 20
    blind = without_labels(split)
    assert not blind.train.semi_targets.any() and blind.fingerprint != split.fingerprint
    assert blind.val is split.val and blind.test is split.test and blind.train.x is split.train.x


def test_a_baseline_row_holds_its_chosen_hyperparameters(
    fixed_run: tuple[Path, list[AblationUnit], list[dict[str, Any]]],
) -> None:
    root, _, (_, _, forest) = fixed_run
    assert forest["method"] == "isoforest" and forest["policy"] == "own"
    assert set(json.loads(forest["params_json"])) == {"n_estimators", "max_samples"}
    assert 0.5 < forest["val_auroc"] <= 1 and 0.5 < forest["test_auroc"] <= 1
    assert forest["checkpoint"] is None and forest["net"] is None and forest["lr"] is None
    assert not (root / "checkpoints" / forest["trial_key"]).exists()


def test_a_finished_unit_is_not_run_again(
    fixed_run: tuple[Path, list[AblationUnit], list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, units, rows = fixed_run

    def no_training(*_: Any, **__: Any) -> Any:
        raise AssertionError("a finished unit was run again")

    for name in ("make_split", "pretrain", "finetune"):
        monkeypatch.setattr(f"orchestration.jobs.trial.{name}", no_training)
    monkeypatch.setattr("orchestration.jobs.ablation.make_split", no_training)
    for u, r in zip(units, rows, strict=True):
        reporter = FakeReporter(tmp_path)
        (again,) = execute_unit(u, reporter, context(root))
        assert again["started_at"] == r["started_at"] and reporter.metrics[-1]["skipped"] is True


def test_a_baseline_without_validation_anomalies_takes_its_first_candidate(tmp_path: Path) -> None:
    d = spec_dict()
    d["protocol"]["ratio_pollution"] = 0.0
    unit = next(u for u in expand_units(spec_of(d)) if u.method == "isoforest")  # 0 labeled, 0 pollution
    (row,) = execute_unit(unit, FakeReporter(tmp_path), context(tmp_path / "abl"))
    assert row["status"] == "finished" and row["val_auroc"] is None and 0.5 < row["test_auroc"] <= 1
    assert json.loads(row["params_json"]) == {"n_estimators": 100, "max_samples": "auto",
                                              "selection": "first candidate (no anomalies to choose on in validation)"}  # fmt: skip


# --------------------------------------------------------------------------- policy tuned


def tuned_unit(budget: int = 4) -> AblationUnit:
    d = spec_dict(policy="tuned", budget=budget)
    d["search"] = {"seed": 0, "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10},
                                        "lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2}}}  # fmt: skip
    return next(
        u for u in expand_units(spec_of(d)) if u.method == "deepsad" and u.axes["n_labeled_anomalies"] == 20
    )


def _digits() -> Any:
    from deepsad.data.sources import load_dataset

    return load_dataset("digits", None)


def _corrupt_test(split: SemiSupervisedSplit) -> SemiSupervisedSplit:
    """The test part replaced by noise with flipped labels: only the test metrics may change."""
    rng = np.random.default_rng(0)
    test = replace(
        split.test, x=rng.normal(size=split.test.x.shape).astype(np.float32), labels=1 - split.test.labels
    )
    return replace(split, test=test)


def _spy_tell(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    import optuna

    told: list[float | None] = []
    original = optuna.Study.tell

    def tell(self: Any, trial: Any, values: Any = None, **kwargs: Any) -> Any:
        told.append(values)
        return original(self, trial, values, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", tell)
    return told


def test_nested_tuning_chooses_on_validation_and_never_sees_test_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = tuned_unit()
    told = _spy_tell(monkeypatch)
    clean = execute_unit(unit, FakeReporter(tmp_path / "a"), context(tmp_path / "clean"))
    told_clean = list(told)

    real_split = make_split
    monkeypatch.setattr("orchestration.jobs.trial.make_split", lambda *a: _corrupt_test(real_split(*a)))
    told.clear()
    corrupt = execute_unit(unit, FakeReporter(tmp_path / "b"), context(tmp_path / "corrupt"))

    assert [r["inner_trial"] for r in clean] == list(range(4)) and [r["selected"] for r in clean].count(
        True
    ) == 1
    for r in clean:  # each row holds its own training's hyperparameters
        assert {"eta": r["eta"], "lr": r["lr"]} == json.loads(r["params_json"]) and r["policy"] == "tuned"
    assert len({r["eta"] for r in clean}) == 4
    chosen = next(r for r in clean if r["selected"])
    assert chosen["val_auroc"] == max(r["val_auroc"] for r in clean)
    assert told_clean == [r["val_auroc"] for r in clean], "the study is told validation metrics only"
    for a, b in zip(clean, corrupt, strict=True):
        assert a["params_json"] == b["params_json"] and a["val_auroc"] == b["val_auroc"]
        assert a["selected"] == b["selected"] and a["test_auroc"] != b["test_auroc"]
    assert told == told_clean
    assert done_units(store_of(tmp_path / "clean")) == {unit.key}


def test_a_retried_tuned_unit_replays_its_finished_trainings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = tuned_unit(budget=3)
    rules = tmp_path / "faults.json"
    rules.write_text(json.dumps({"rules": [{"at": "trial_start", "trial_key": unit.row_key(2), "action": "raise",
                                            "once": str(tmp_path / "fired")}]}))  # fmt: skip
    monkeypatch.setenv(faults.ENV, str(rules))
    root = tmp_path / "abl"
    with pytest.raises(faults.InjectedFault):
        execute_unit(unit, FakeReporter(tmp_path / "a"), context(root))
    store = store_of(root)
    first = [store.row(unit.row_key(i)) for i in range(3)]
    assert [r["status"] if r else None for r in first] == ["finished", "finished", "running"]
    assert unit.key not in done_units(store)

    # the driver records the failed attempt under the unit's key; the retry's success removes it
    record_unit_end(
        "abl", Storage.from_uri(str(root)), unit, trial_id="t", status="failed", error="boom", last={}
    )
    assert store.row(unit.key)["status"] == "failed"  # type: ignore[index]
    rows = execute_unit(unit, FakeReporter(tmp_path / "b"), context(root))
    assert [r["status"] for r in rows] == ["finished"] * 3
    assert [r["started_at"] for r in rows[:2]] == [r["started_at"] for r in first[:2]  # type: ignore[index]
                                                   ], "finished inner trainings were trained again"  # fmt: skip
    assert store.row(unit.key) is None and done_units(store) == {unit.key}
    clear_unit_row(Storage.from_uri(str(root)), unit)  # nothing left to clear: fine


def test_the_driver_never_overwrites_a_done_unit(
    fixed_run: tuple[Path, list[AblationUnit], list[dict[str, Any]]],
) -> None:
    root, units, rows = fixed_run
    sweep_dir = Storage.from_uri(str(root))
    for u, r in zip(units, rows, strict=True):
        # Tune calls on_trial_complete for every trial: a finished unit must keep its row
        record_unit_end("abl", sweep_dir, u, trial_id="t", status="stopped", error=None, last={})
        assert store_of(root).row(u.key) == r
    assert done_units_of(store_of(root), units) == {u.key for u in units}


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_is_valid(path: Path) -> None:
    """Every file in sweeps/ passes the strict model (the data checks need data a user may lack)."""
    from orchestration.spec.load import load_spec

    spec = load_spec(path, base_dir=str(REPO))
    assert spec.name == path.stem
