"""`orchestration.jobs.kinds.execute` without Ray: a fake reporter, a fake lock, local storage.

One trial on scikit-learn's digits (the grid of ``sweeps_helpers.small_spec``: 4 AE + 6 Deep SAD
epochs, about a second) runs once per module; the other tests run its neighbours against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepsad import metrics
from deepsad.data.sources import load_dataset
from deepsad.data.splits import make_split
from deepsad.model import DeepSADModel
from deepsad.networks import build_autoencoder
from deepsad.training import TrainState
from orchestration.jobs import faults
from orchestration.jobs.base import RunContext
from orchestration.jobs.kinds import execute
from orchestration.plan.cells import build_trial
from orchestration.plan.trial import TrialConfig
from orchestration.spec.load import parse_spec
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.sweeps_helpers import small_spec

SWEEP = "unit"


@dataclass
class FakeReporter:
    """An in-memory :class:`orchestration.jobs.base.Reporter` of one process (rank 0 of 1).

    Snapshots are saved to disk at once, as the Tune reporter does, so that a later epoch cannot
    change an earlier snapshot's tensors in place.
    """

    where: Path  # snapshots go here
    start_from: TrainState | None = None
    rank: int = 0
    world_size: int = 1
    metrics: list[dict[str, Any]] = field(default_factory=list)
    snapshots: dict[tuple[str, int], Path] = field(default_factory=dict)

    def restored(self) -> TrainState | None:
        return self.start_from

    def report(self, metrics: dict[str, Any], state: TrainState | None) -> None:
        self.metrics.append(dict(metrics))
        if state is not None:
            where = self.where / f"{state.phase}-{state.epoch}"
            state.save(where)
            self.snapshots[(state.phase, state.epoch)] = where

    def snapshot(self, phase: str, epoch: int) -> TrainState:
        return TrainState.load(self.snapshots[(phase, epoch)])

    def phases(self) -> list[str]:
        return [m["phase"] for m in self.metrics if "phase" in m]


def trial(eta: float = 1.0) -> TrialConfig:
    spec = parse_spec(yaml.safe_dump(small_spec(SWEEP)), f"{SWEEP}.yaml")
    return build_trial(spec, {"eta": eta}, 0)


def context(storage: Path) -> RunContext:
    return RunContext(sweep=SWEEP, storage_uri=str(storage), checkpoint_interval_s=0.0)


@dataclass(frozen=True)
class Run:
    storage: Path
    trial: TrialConfig
    row: dict[str, Any]
    reporter: FakeReporter


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted trial (eta 1) in a fresh sweep directory."""
    root = tmp_path_factory.mktemp("sweep")
    t, reporter = trial(), FakeReporter(root / "snapshots")
    (row,) = execute([t], reporter, context(root / SWEEP))
    return Run(root / SWEEP, t, row, reporter)


# --------------------------------------------------------------------------- one run


def test_a_run_writes_one_finished_row_its_epochs_and_reports_each_epoch(first: Run) -> None:
    store = ResultStore(Storage.from_uri(str(first.storage)))
    (row,) = store.trials().to_pylist()
    assert row["trial_key"] == first.trial.key and row["status"] == "finished" and row["attempt"] == 1
    assert row["epochs_done"] == 6 and row["cache_hit"] is False and row["ae_seconds"] > 0
    assert row["started_at"] <= row["finished_at"] and row["sweep"] == SWEEP
    assert json.loads(row["params_json"]) == {"eta": 1.0}
    history = [(e["phase"], e["epoch"]) for e in store.epochs().to_pylist()]
    assert history == [("ae", i) for i in range(1, 5)] + [("sad", i) for i in range(1, 7)]
    assert first.reporter.phases() == ["ae"] * 4 + ["sad"] * 6
    assert set(first.reporter.snapshots) == {("ae", i) for i in range(1, 5)} | {
        ("sad", i) for i in range(1, 7)
    }
    last = first.reporter.metrics[-1]
    assert last["done"] is True and last["skipped"] is False and last["val_auroc"] == row["val_auroc"]


def test_the_model_bundle_loads_and_scores_like_the_stored_test_auroc(first: Run) -> None:
    model = DeepSADModel.load(first.row["checkpoint"])
    assert Path(first.row["checkpoint"]) == first.storage / "checkpoints" / first.trial.key
    assert model.meta["trial_key"] == first.trial.key and model.eta == 1.0
    split = make_split(load_dataset("digits", None), first.trial.protocol)
    auroc = metrics.auroc(split.test.labels, model.score(split.test.x))
    assert auroc == pytest.approx(first.row["test_auroc"], abs=1e-9)


def test_a_finished_trial_is_skipped_and_reports_its_stored_metrics(
    first: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*_: Any, **__: Any) -> Any:
        raise AssertionError("a finished trial was trained again")

    for name in ("make_split", "pretrain", "finetune"):
        monkeypatch.setattr(f"orchestration.jobs.trial.{name}", no_training)
    reporter = FakeReporter(tmp_path)
    (row,) = execute([first.trial], reporter, context(first.storage))
    (report,) = reporter.metrics
    assert report["skipped"] is True and report["done"] is True
    assert report["val_auroc"] == first.row["val_auroc"] and report["test_auroc"] == first.row["test_auroc"]
    stored = ResultStore(Storage.from_uri(str(first.storage))).row(first.trial.key)
    assert stored is not None and stored["started_at"] == first.row["started_at"] and stored["attempt"] == 1
    assert row["started_at"] == first.row["started_at"]


# --------------------------------------------------------------------------- resume


def test_resuming_from_a_deep_sad_snapshot_matches_the_uninterrupted_run(
    first: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # attempt 1 dies after its third Deep SAD epoch (the fault fires before epoch 4 is reported)
    rules = tmp_path / "faults.json"
    rules.write_text(
        json.dumps(
            {"rules": [{"at": "sad_epoch", "epoch": 4, "action": "raise", "once": str(tmp_path / "fired")}]}
        )
    )
    monkeypatch.setenv(faults.ENV, str(rules))
    storage = tmp_path / SWEEP
    crashed = FakeReporter(tmp_path / "attempt-1")
    with pytest.raises(faults.InjectedFault):
        execute([first.trial], crashed, context(storage))
    store = ResultStore(Storage.from_uri(str(storage)))
    running = store.row(first.trial.key)
    assert running is not None and running["status"] == "running" and running["attempt"] == 1

    resumed = FakeReporter(tmp_path / "attempt-2", start_from=crashed.snapshot("sad", 3))
    (row,) = execute([first.trial], resumed, context(storage))
    assert row["status"] == "finished" and row["attempt"] == 2
    stored = store.row(first.trial.key)
    assert stored is not None and {k: stored[k] for k in row} == row
    assert resumed.phases() == ["sad"] * 3, "the resumed attempt must start at Deep SAD epoch 4"
    for k in ("val_auroc", "val_ap", "test_auroc", "test_ap", "epochs_done"):
        assert row[k] == pytest.approx(first.row[k], abs=1e-9), k
    # the cache columns survive the restart (kept in the snapshot)
    assert row["cache_hit"] is False and row["ae_seconds"] > 0 and row["ae_key"] == first.row["ae_key"]
    history = [(e["phase"], e["epoch"]) for e in store.epochs().to_pylist()]
    assert history == [("ae", i) for i in range(1, 5)] + [("sad", i) for i in range(1, 7)]


# --------------------------------------------------------------------------- the AE cache


def test_a_trial_with_the_same_ae_key_takes_the_cached_autoencoder(first: Run, tmp_path: Path) -> None:
    other = trial(eta=2.0)
    assert other.ae_key == first.trial.ae_key and other.key != first.trial.key
    reporter = FakeReporter(tmp_path)
    (row,) = execute([other], reporter, context(first.storage))
    assert row["cache_hit"] is True and row["ae_seconds"] == 0.0
    assert row["ae_seconds_saved"] == pytest.approx(first.row["ae_seconds"]) and row["ae_seconds_saved"] > 0
    assert row["ae_key"] == first.row["ae_key"]
    assert "ae" not in reporter.phases() and reporter.phases() == ["sad"] * 6
    epochs = ResultStore(Storage.from_uri(str(first.storage))).epochs().to_pylist()
    assert {e["phase"] for e in epochs if e["trial_key"] == other.key} == {"sad"}


class OtherTrialPretrains:
    """A lock another trial holds while it pretrains: the first acquire() fails, and meanwhile the
    other trial puts its autoencoder into the cache. Later acquires would succeed (and fail the test)."""

    def __init__(self, storage: Path, state: dict[str, Any]) -> None:
        self.cache = AECache(Storage.from_uri(str(storage)))
        self.state = state
        self.calls: list[tuple[str, str, str]] = []

    def acquire(self, key: str, owner: str) -> bool:
        self.calls.append(("acquire", key, owner))
        if len(self.calls) == 1:
            self.cache.put(key, self.state, {"ae_seconds": 12.5, "epochs": 4, "trial_key": "other"})
            return False
        return True

    def release(self, key: str, owner: str) -> None:
        self.calls.append(("release", key, owner))

    def renew(self, key: str, owner: str) -> None:
        self.calls.append(("renew", key, owner))


def test_a_trial_waits_for_the_lock_and_takes_the_autoencoder_pretrained_meanwhile(tmp_path: Path) -> None:
    t = trial()
    storage = tmp_path / SWEEP
    lock = OtherTrialPretrains(storage, build_autoencoder(t.train.net).state_dict())
    reporter = FakeReporter(tmp_path / "snapshots")
    (row,) = execute([t], reporter, context(storage), lock=lock)
    split = make_split(load_dataset("digits", None), t.protocol)
    assert t.ae_key is not None
    key = ae_cache_key(t.ae_key, split.fingerprint)
    assert [c[:2] for c in lock.calls] == [("acquire", key)], "waited once, then took the cache entry"
    assert row["cache_hit"] is True and row["ae_seconds"] == 0.0 and row["ae_seconds_saved"] == 12.5
    assert row["ae_key"] == key and row["status"] == "finished"
    assert "ae" not in reporter.phases()


class RefusesTwice:
    """A lock held by a trial that dies without pretraining: refused twice, then free."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def acquire(self, key: str, owner: str) -> bool:
        self.calls.append("acquire")
        return self.calls.count("acquire") > 2

    def release(self, key: str, owner: str) -> None:
        self.calls.append("release")

    def renew(self, key: str, owner: str) -> None:
        self.calls.append("renew")


def test_a_trial_that_gets_the_lock_later_pretrains_under_it(tmp_path: Path) -> None:
    lock = RefusesTwice()
    reporter = FakeReporter(tmp_path / "snapshots")
    (row,) = execute([trial()], reporter, context(tmp_path / SWEEP), lock=lock)
    # renewed once per AE epoch while holding the lock, released at the end
    assert lock.calls == ["acquire"] * 3 + ["renew"] * 4 + ["release"]
    assert row["cache_hit"] is False and row["ae_seconds"] > 0
    assert reporter.phases() == ["ae"] * 4 + ["sad"] * 6
    assert AECache(Storage.from_uri(str(tmp_path / SWEEP))).exists(row["ae_key"])


def test_a_lock_that_never_frees_times_out(tmp_path: Path) -> None:
    class Never(RefusesTwice):
        def acquire(self, key: str, owner: str) -> bool:
            return False

    ctx = RunContext(sweep=SWEEP, storage_uri=str(tmp_path / SWEEP), cache_wait_s=0.0)
    with pytest.raises(TimeoutError, match="pretrain AE"):
        execute([trial()], FakeReporter(tmp_path / "snapshots"), ctx, lock=Never())


# --------------------------------------------------------------------------- fault injection


def _rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rules: list[dict[str, Any]]) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"rules": rules}))
    monkeypatch.setenv(faults.ENV, str(path))


def test_faults_are_inactive_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.checkpoint("sad_epoch", epoch=1, trial_key="k")


def test_a_raise_rule_fires_only_at_its_point_epoch_rank_and_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rules(
        tmp_path,
        monkeypatch,
        [{"at": "sad_epoch", "epoch": 2, "rank": 0, "trial_key": "k", "action": "raise"}],
    )
    faults.checkpoint("ae_epoch", epoch=2, trial_key="k")
    faults.checkpoint("sad_epoch", epoch=1, trial_key="k")
    faults.checkpoint("sad_epoch", epoch=2, rank=1, trial_key="k")
    faults.checkpoint("sad_epoch", epoch=2, trial_key="other")
    for _ in range(2):  # without "once" it fires every time
        with pytest.raises(faults.InjectedFault, match="sad_epoch epoch 2"):
            faults.checkpoint("sad_epoch", epoch=2, trial_key="k")


def test_a_once_rule_fires_once_and_leaves_its_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, touched = tmp_path / "fired", tmp_path / "passes.log"
    _rules(
        tmp_path,
        monkeypatch,
        [
            {"at": "trial_start", "touch": str(touched)},
            {"at": "trial_start", "action": "raise", "once": str(marker)},
        ],
    )
    with pytest.raises(faults.InjectedFault):
        faults.checkpoint("trial_start", trial_key="k")
    assert marker.read_text().split() == ["k", "trial_start", "None"]
    faults.checkpoint("trial_start", trial_key="k")  # the marker exists: it does not fire again
    assert [line.split()[:2] for line in touched.read_text().splitlines()] == [["k", "trial_start"]] * 2


def test_a_trial_that_fails_at_start_leaves_a_running_row_for_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rules(tmp_path, monkeypatch, [{"at": "trial_start", "action": "raise"}])
    t = trial()
    with pytest.raises(faults.InjectedFault):
        execute([t], FakeReporter(tmp_path / "snapshots"), context(tmp_path / SWEEP))
    row = ResultStore(Storage.from_uri(str(tmp_path / SWEEP))).row(t.key)
    assert row is not None and row["status"] == "running" and row["attempt"] == 1
    assert row["val_auroc"] is None and row["finished_at"] is None
