"""Bundles in the sweep engine without Ray: planning, and `execute` of a bundle vs separate trials."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepsad.bundle import BundleState
from orchestration.jobs import faults
from orchestration.jobs.base import RunContext
from orchestration.jobs.kinds import execute
from orchestration.plan.bundles import CPU_AUTO, auto_size, bundle_id, make_bundles
from orchestration.plan.cells import build_trial
from orchestration.plan.trial import TrialConfig
from orchestration.spec.load import parse_spec
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.orchestration.sweeps_helpers import cli, rows, small_spec, write_spec

SWEEP = "bund"


@dataclass
class Reporter:
    where: Path
    start_from: Any = None
    rank: int = 0
    world_size: int = 1
    metrics: list[dict[str, Any]] = field(default_factory=list)
    states: list[Path] = field(default_factory=list)

    def restored(self) -> Any:
        return self.start_from

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        self.metrics.append(dict(metrics))
        if state is not None:
            path = self.where / f"state-{len(self.states)}"
            state.save(path)
            self.states.append(path)


def trials(etas: list[float], seeds: list[int] = [0], **spec_overrides: Any) -> list[TrialConfig]:  # noqa: B006
    spec = parse_spec(yaml.safe_dump(small_spec(SWEEP, **spec_overrides)), f"{SWEEP}.yaml")
    return [build_trial(spec, {"eta": e}, s) for s in seeds for e in etas]


def ctx(storage: Path) -> RunContext:
    return RunContext(sweep=SWEEP, storage_uri=str(storage), checkpoint_interval_s=0.0, report_interval_s=0.0)


def test_bundles_group_compatible_trials_in_order_and_cut_them_to_size() -> None:
    ts = trials([0.5, 1.0, 2.0], seeds=[0, 1])
    other = [replace(t, train=replace(t.train, sad=replace(t.train.sad, batch_size=16))) for t in ts[:2]]
    bundles = make_bundles(ts + other, 4)
    assert [[t.key for t in b] for b in bundles] == [[t.key for t in ts[:4]], [t.key for t in ts[4:]],
                                                      [t.key for t in other]]
    assert make_bundles(ts, 1) == [[t] for t in ts]
    assert bundle_id(ts[:2]) == bundle_id(list(reversed(ts[:2]))) != bundle_id(ts[1:3])
    assert auto_size(ts[0], 0.0) == CPU_AUTO


def test_auto_size_fits_the_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepsad.networks import default_net_config
    from deepsad.sizing import member_bytes

    t = trials([1.0])[0]
    t = replace(t, train=replace(t.train, net=default_net_config("mnist", (1, 28, 28)),
                                 sad=replace(t.train.sad, batch_size=128),
                                 ae=replace(t.train.ae, batch_size=128)), device_request="cuda")  # type: ignore[arg-type]
    per = member_bytes(t.train)
    assert 40e6 < per < 80e6  # 57 MB measured per MNIST LeNet member (batch 128) on an H200
    monkeypatch.setenv("DEEPSAD_GPU_MEMORY_GB", "80")
    assert auto_size(t, 1.0) == min(512, int(80e9 * 0.7 // per))
    assert auto_size(t, 0.25) == int(80e9 * 0.25 * 0.7 // per)


@pytest.mark.integration  # trains ~10 small models: seconds, not milliseconds
def test_a_bundle_writes_one_row_per_trial_equal_to_separate_runs(tmp_path: Path) -> None:
    ts = trials([0.5, 2.0], seeds=[0, 1])
    separate = {t.key: execute([t], Reporter(tmp_path / "r1"), ctx(tmp_path / "one"))[0] for t in ts}
    reporter = Reporter(tmp_path / "r2")
    rows = {r["trial_key"]: r for r in execute(ts, reporter, ctx(tmp_path / "bundled"))}
    assert set(rows) == set(separate)
    for key, row in rows.items():
        assert row["status"] == "finished" and row["bundle"] == bundle_id(ts) and row["bundle_size"] == 4
        # equal up to float rounding (tests/deepsad/test_bundle.py bounds the weights; measured here: AUROC
        # identical); the tolerance only allows a swapped pair of near-tied scores (~1/(n_pos·n_neg) each),
        # while members mixed up would differ by more (η 0.5 vs 2 moves val AUROC by ~0.02)
        for metric in ("val_auroc", "test_auroc", "test_ap"):
            assert row[metric] == pytest.approx(separate[key][metric], abs=0.01), (key, metric)
        assert row["epochs_done"] == 6
    # one AE per (split, seed): 2 pretrained here, and the cache serves the η twins
    assert sum(not r["cache_hit"] for r in rows.values()) == 4  # none was cached before this bundle
    store = ResultStore(Storage.from_uri(str(tmp_path / "bundled")))
    epochs = store.epochs().to_pylist()
    for key in rows:
        phases = [(e["phase"], e["epoch"]) for e in epochs if e["trial_key"] == key]
        assert sorted(phases) == sorted([("ae", i) for i in range(1, 5)] + [("sad", i) for i in range(1, 7)])
    assert isinstance(BundleState.load(reporter.states[-1]), BundleState)
    assert reporter.metrics[-1]["members"] == 4 and reporter.metrics[-1]["finished"] == 4
    # again: nothing trains, the stored rows are reported
    again = Reporter(tmp_path / "r3")
    execute(ts, again, ctx(tmp_path / "bundled"))
    assert again.metrics == [again.metrics[-1]] and again.metrics[-1]["skipped"]


@pytest.mark.integration  # trains ~10 small models: seconds, not milliseconds
def test_a_retried_bundle_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ts = trials([0.5, 2.0])
    rules = tmp_path / "faults.json"
    rules.write_text('{"rules": [{"at": "sad_epoch", "epoch": 3, "action": "raise", "once": "%s"}]}'
                     % (tmp_path / "fired"))
    monkeypatch.setenv(faults.ENV, str(rules))
    first = Reporter(tmp_path / "a")
    with pytest.raises(faults.InjectedFault):
        execute(ts, first, ctx(tmp_path / "s"))
    store = ResultStore(Storage.from_uri(str(tmp_path / "s")))
    assert {r["status"] for r in store.trials().to_pylist()} == {"running"}
    state = BundleState.load(first.states[-1])
    assert state.phase == "sad" and state.epoch == 2
    second = Reporter(tmp_path / "b", start_from=state)
    rows = execute(ts, second, ctx(tmp_path / "s"))
    sad = [m["sad_epoch"] for m in second.metrics if m.get("phase") == "sad"]
    assert sad[0] == 3, "the retry must continue after epoch 2, not restart"
    uninterrupted = {r["trial_key"]: r for r in execute(ts, Reporter(tmp_path / "c"), ctx(tmp_path / "u"))}
    for row in rows:
        assert row["status"] == "finished" and row["attempt"] == 2
        assert row["test_auroc"] == pytest.approx(uninterrupted[row["trial_key"]]["test_auroc"], abs=1e-9)


@pytest.mark.integration  # trains ~10 small models: seconds, not milliseconds
def test_a_diverging_member_fails_alone(tmp_path: Path) -> None:
    good = trials([1.0])[0]
    from tests.deepsad.test_bundle import unchecked  # lr 1e30 is past the config's bound: made to diverge

    bad = replace(good, params={"eta": 1.0, "lr": 1e30}, train=replace(good.train, sad=unchecked(good.train.sad, lr=1e30)))
    rows = {r["trial_key"]: r for r in execute([good, bad], Reporter(tmp_path / "r"), ctx(tmp_path / "s"))}
    alone = execute([good], Reporter(tmp_path / "r1"), ctx(tmp_path / "one"))[0]
    assert rows[bad.key]["status"] == "failed" and "diverged" in rows[bad.key]["error"]
    assert rows[good.key]["status"] == "finished"
    assert rows[good.key]["test_auroc"] == pytest.approx(alone["test_auroc"], abs=0.01)


@pytest.mark.integration
def test_a_bundled_grid_sweep_on_ray(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, small_spec(
        "bundled", seeds=[0, 1], resources__bundle_size=2,
        search__space={"eta": {"distribution": "choice", "values": [0.5, 2.0]}}))
    run = cli(["sweep", "submit", str(spec), "--storage", str(tmp_path / "s")], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "trials: 4 (0 failed, 4 finished" in run.stdout
    got = rows(tmp_path / "s", "bundled")
    assert len(got) == 4 and {r["status"] for r in got} == {"finished"}
    assert {r["bundle_size"] for r in got} == {2} and len({r["bundle"] for r in got}) == 2
    again = cli(["sweep", "submit", str(spec), "--storage", str(tmp_path / "s")], cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    shown = cli(["results", "show", "bundled", "--storage", str(tmp_path / "s"), "--format", "json"], cwd=tmp_path)
    assert all(r["bundle"].startswith("b2-") for r in json.loads(shown.stdout))
