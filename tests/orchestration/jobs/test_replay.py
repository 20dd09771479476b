"""Replaying a result row (:mod:`orchestration.jobs.replay`) on small real sweeps without Ray: a plain
sweep's trials (the second takes its autoencoder from the cache), a bundle's members, an ablation's
Deep SAD / Deep SVDD / Isolation Forest units and a tuned unit's inner training, and a sweep on a data
file. Every sweep is trained once per module on scikit-learn's digits (tiny epochs: about a second a
training); each replay must give the very numbers of its row on this machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from deepsad.errors import ConfigError, DataError, StorageError
from orchestration.jobs.base import RunContext
from orchestration.jobs.kinds import execute, execute_unit
from orchestration.jobs.replay import METRICS, ReplayResult, prepare_replay, run_replay
from orchestration.plan.ablation import expand_units
from orchestration.plan.cells import enumerate_cells
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.layout import SPEC_FILE, SUBMISSION_FILE
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.jobs.test_trial import FakeReporter
from tests.orchestration.plan.test_ablation import spec_dict as ablation_dict
from tests.orchestration.sweeps_helpers import small_spec


@dataclass(frozen=True)
class Sweep:
    """A sweep directory as `sweep submit` leaves it (spec.yaml, submission.json, rows, checkpoints)."""

    name: str
    storage: str  # the --storage root
    spec: SweepSpec
    rows: list[dict[str, Any]]

    @property
    def dir(self) -> Storage:
        return Storage.from_uri(self.storage).child(self.name)

    def row(self, **match: Any) -> dict[str, Any]:
        return next(r for r in self.rows if all(r.get(k) == v for k, v in match.items()))


def make_sweep(storage: str, base: Path, d: dict[str, Any],
               run: Callable[[SweepSpec, RunContext, Path], object]) -> Sweep:
    """Write the sweep's file as the runner does, train its cells with ``run`` and read its rows back."""
    text = yaml.safe_dump(d, sort_keys=False)
    spec = parse_spec(text, f"{d['name']}.yaml", base_dir=str(base))
    where = Storage.from_uri(storage).child(d["name"])
    where.write_bytes(text.encode(), SPEC_FILE)
    where.write_bytes(json.dumps({"source": spec.source, "base_dir": str(base)}).encode(), SUBMISSION_FILE)
    run(spec, RunContext(sweep=d["name"], storage_uri=where.uri, checkpoint_interval_s=3600.0), base / "snapshots")
    return Sweep(d["name"], storage, spec, ResultStore(where).trials().to_pylist())


def tiny(name: str, **overrides: Any) -> dict[str, Any]:
    return small_spec(name, train__epochs=3, train__milestones=[2], pretrain__epochs=2, pretrain__milestones=[1],
                      **overrides)


def one_by_one(spec: SweepSpec, ctx: RunContext, snaps: Path) -> None:
    for t in enumerate_cells(spec):
        execute([t], FakeReporter(snaps), ctx)


def as_one_bundle(spec: SweepSpec, ctx: RunContext, snaps: Path) -> None:
    execute(enumerate_cells(spec), FakeReporter(snaps), ctx)


def unit_by_unit(spec: SweepSpec, ctx: RunContext, snaps: Path) -> None:
    for u in expand_units(spec):
        execute_unit(u, FakeReporter(snaps), ctx)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Two trials (η 0.5, 2) of one seed, one after another: the second takes the first's AE from the cache."""
    root = tmp_path_factory.mktemp("plain")
    return make_sweep(str(root / "sweeps"), root, tiny("plain"), one_by_one)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Four trials (η 0.5, 2 × seeds 0, 1) trained as one bundle."""
    root = tmp_path_factory.mktemp("bundled")
    return make_sweep(str(root / "sweeps"), root, tiny("bund", seeds=[0, 1]), as_one_bundle)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Deep SAD, Deep SVDD and Isolation Forest of one cell (normal class 0, 20 labelled 5s, seed 0)."""
    root = tmp_path_factory.mktemp("ablation")
    d = ablation_dict(axes={"normal_classes": [[0]], "n_labeled_anomalies": [20]})
    d["seeds"] = [0]
    return make_sweep(str(root / "sweeps"), root, d, unit_by_unit)


def replay(sweep: Sweep, key: str, **kwargs: Any) -> ReplayResult:
    tolerance = kwargs.pop("tolerance", 0.0)
    return run_replay(prepare_replay(sweep.spec, sweep.dir, key, **kwargs), tolerance=tolerance)


def assert_equal(result: ReplayResult, row: dict[str, Any]) -> None:
    assert result.equal, [c.to_dict() for c in result.differing]
    assert [c.name for c in result.compared][: len(METRICS)] == list(METRICS)
    for c in result.compared:
        assert c.replayed == c.recorded and c.difference in (0.0, None)
    assert result.replayed["fingerprint"] == row["fingerprint"]


# --------------------------------------------------------------------------- equal on this machine


def test_a_trial_that_pretrained_its_autoencoder_replays_equal(plain: Sweep) -> None:
    row = plain.row(cache_hit=False)
    result = replay(plain, row["trial_key"])
    assert result.plan.kind == "trial" and result.plan.device == "cpu" and not result.plan.autoencoders
    assert_equal(result, row)
    assert result.weights == "identical" and result.replayed["cache_hit"] is False


def test_a_trial_that_took_its_autoencoder_from_the_cache_replays_equal(plain: Sweep) -> None:
    row = plain.row(cache_hit=True)
    plan = prepare_replay(plain.spec, plain.dir, row["trial_key"])
    assert len(plan.autoencoders) == 1, "the cached AE the trial took"
    result = run_replay(plan)
    assert_equal(result, row)
    assert result.weights == "identical" and result.replayed["cache_hit"] is True


def test_retraining_the_cached_autoencoder_reproduces_it_too(plain: Sweep) -> None:
    """Here the AE was pretrained by a single trial, as the replay pretrains it: equal either way."""
    row = plain.row(cache_hit=True)
    result = replay(plain, row["trial_key"], retrain_ae=True)
    assert not result.plan.autoencoders and any("--retrain-ae" in n for n in result.notes)
    assert_equal(result, row)
    assert result.replayed["cache_hit"] is False


def test_a_bundle_member_replays_equal_by_retraining_its_bundle(bundled: Sweep) -> None:
    assert {r["bundle_size"] for r in bundled.rows} == {4} and len({r["bundle"] for r in bundled.rows}) == 1
    row = bundled.row(seed=1, eta=2.0)
    result = replay(bundled, row["trial_key"])
    plan = result.plan
    assert plan.kind == "bundle" and len(plan.members) == 4
    assert [m.key for m in plan.members] == [t.key for t in enumerate_cells(bundled.spec)]  # as planned
    assert_equal(result, row)
    assert result.weights == "identical"
    assert result.fellows == {r["trial_key"]: True for r in bundled.rows if r["trial_key"] != row["trial_key"]}


def test_ablation_deep_sad_and_deep_svdd_units_replay_equal(ablation: Sweep) -> None:
    for method in ("deepsad", "deepsvdd"):
        row = ablation.row(method=method)
        result = replay(ablation, row["trial_key"])
        assert result.plan.kind == "unit" and result.plan.members[0].labels is (method == "deepsad")
        assert_equal(result, row)
        assert result.weights == "identical"
    assert ablation.row(method="deepsvdd")["cache_hit"] is True  # it took Deep SAD's autoencoder


def test_a_baseline_replays_its_choice_of_hyperparameters_equal(ablation: Sweep) -> None:
    row = ablation.row(method="isoforest")
    result = replay(ablation, row["trial_key"])
    assert result.plan.kind == "baseline" and result.weights is None
    assert_equal(result, row)
    params = next(c for c in result.compared if c.name == "params_json")
    assert params.replayed == json.loads(row["params_json"]) and set(params.replayed) == {"n_estimators", "max_samples"}


def test_a_tuned_units_inner_training_replays_equal(tmp_path: Path) -> None:
    d = ablation_dict(policy="tuned", budget=2, axes={"normal_classes": [[0]], "n_labeled_anomalies": [20]},
                      methods=["deepsad"])
    d["seeds"] = [0]
    d["search"] = {"seed": 0, "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}}
    sweep = make_sweep(str(tmp_path / "sweeps"), tmp_path, d, unit_by_unit)
    row = sweep.row(inner_trial=1)
    result = replay(sweep, row["trial_key"])
    assert result.plan.kind == "inner"
    assert result.plan.members[0].trial.params == json.loads(row["params_json"])
    assert_equal(result, row)


# --------------------------------------------------------------------------- refusals


def test_data_whose_fingerprint_differs_is_refused_before_training(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "digits.npz", X=x, y=y)
    sweep = make_sweep(str(tmp_path / "sweeps"), tmp_path,
                       tiny("file", data={"dataset": "digits.npz", "data_dir": "data"},
                            search={"algorithm": "grid", "space": {"eta": {"distribution": "choice", "values": [1.0]}}}),
                       one_by_one)
    (row,) = sweep.rows
    moved, changed = tmp_path / "moved", tmp_path / "changed"
    moved.mkdir()
    changed.mkdir()
    shutil.copy(tmp_path / "data" / "digits.npz", moved / "digits.npz")
    x[0, 0] += 1.0
    np.savez(changed / "digits.npz", X=x, y=y)
    assert_equal(replay(sweep, row["trial_key"], data_dir=str(moved)), row)  # the same bytes elsewhere
    with pytest.raises(DataError, match=r"fingerprint .* but the row records .*: the data is not the data the sweep used"):
        prepare_replay(sweep.spec, sweep.dir, row["trial_key"], data_dir=str(changed))


def test_unknown_and_unfinished_rows_are_refused(plain: Sweep, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no row 'ffffffffffffffff'"):
        prepare_replay(plain.spec, plain.dir, "ffffffffffffffff")
    with pytest.raises(StorageError, match="invalid trial_key"):
        prepare_replay(plain.spec, plain.dir, "../x")
    copy = edited_copy(plain, tmp_path, plain.rows[0]["trial_key"], status="failed", error="boom")
    with pytest.raises(ConfigError, match="is failed, not finished"):
        prepare_replay(copy.spec, copy.dir, plain.rows[0]["trial_key"])


def test_a_negative_tolerance_is_refused(plain: Sweep) -> None:
    plan = prepare_replay(plain.spec, plain.dir, plain.rows[0]["trial_key"])
    with pytest.raises(ConfigError, match="--tolerance"):
        run_replay(plan, tolerance=-1.0)


def test_a_cuda_row_needs_a_gpu_or_device_cpu(plain: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    key = plain.rows[0]["trial_key"]
    copy = edited_copy(plain, tmp_path, key, device="cuda")
    with pytest.raises(ConfigError, match="trained on cuda and this machine has none: pass --device cpu"):
        prepare_replay(copy.spec, copy.dir, key)
    plan = prepare_replay(copy.spec, copy.dir, key, device="cpu")
    assert plan.device == "cpu" and any("trained on cuda" in n for n in plan.notes)


# --------------------------------------------------------------------------- differences


def edited_copy(sweep: Sweep, tmp_path: Path, key: str, **changes: Any) -> Sweep:
    """A copy of the (local) sweep whose row ``key`` has ``changes``."""
    storage = tmp_path / "edited"
    shutil.copytree(Path(sweep.dir.path()), storage / sweep.name)
    where = Storage.from_uri(str(storage)).child(sweep.name)
    store = ResultStore(where)
    row = store.row(key)
    assert row is not None
    store.write_trial({**row, **changes})
    return Sweep(sweep.name, str(storage), sweep.spec, store.trials().to_pylist())


def test_an_edited_metric_is_listed_with_its_difference(plain: Sweep, tmp_path: Path) -> None:
    row = plain.row(cache_hit=False)
    copy = edited_copy(plain, tmp_path, row["trial_key"], test_auroc=row["test_auroc"] - 0.125)
    result = replay(copy, row["trial_key"])
    assert not result.equal and [c.name for c in result.differing] == ["test_auroc"]
    (diff,) = result.differing
    assert diff.recorded == row["test_auroc"] - 0.125 and diff.replayed == row["test_auroc"]
    assert diff.difference == pytest.approx(0.125)
    assert replay(copy, row["trial_key"], tolerance=0.2).equal


def test_a_replay_whose_training_fails_differs(plain: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row finished: a replay that diverges (a DataError inside the training) is a difference, not a
    user error."""

    def diverges(*_: Any, **__: Any) -> Any:
        raise DataError("scores are not finite (the model diverged)")

    monkeypatch.setattr("orchestration.jobs.replay.train_member", diverges)
    result = replay(plain, plain.rows[0]["trial_key"])
    assert not result.equal and {c.name for c in result.differing} == set(METRICS)
    assert all(c.replayed is None for c in result.compared)
    assert any("did not finish: scores are not finite" in n for n in result.notes) and result.weights is None
