"""TPE in bundles on a real local Ray and a real Optuna study: what the study holds against the rows, and
a driver killed in the middle of a batch, then resumed (issue 17)."""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.orchestration.sweeps_helpers import cli, faults_file, popen_cli, rows, small_spec, write_spec

pytestmark = pytest.mark.integration


def _tpe(name: str, num_trials: int, seeds: list[int], bundle_size: int, **more: Any) -> dict[str, Any]:
    return small_spec(name, seeds=seeds, train__epochs=4, train__milestones=[3],
                      search={"algorithm": "tpe", "num_trials": num_trials, "seed": 0,
                              "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10.0}}},
                      resources__bundle_size=bundle_size, resources__max_concurrent_trials=1,
                      resources__cpus_per_trial=2, **more)  # fmt: skip


def _study(store: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{store / name / 'optuna.db'}")


def _means_by_eta(got: list[dict[str, Any]]) -> dict[float, float]:
    by: dict[float, list[float]] = {}
    for r in got:
        by.setdefault(r["eta"], []).append(r["val_auroc"])
    return {eta: statistics.fmean(v) for eta, v in by.items()}


def test_a_tpe_sweep_in_bundles_tells_the_study_each_configurations_mean_over_its_seeds(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    spec = write_spec(tmp_path, _tpe("btpe", num_trials=4, seeds=[0, 1], bundle_size=4))
    store = tmp_path / "s"
    dry = cli(["sweep", "submit", str(spec), "--storage", str(store), "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0 and "TPE in bundles: 2 configurations × 2 seeds per batch" in dry.stdout, dry.stdout
    run = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    got = rows(store, "btpe")
    assert len(got) == 8 and len({r["trial_key"] for r in got}) == 8 and {r["status"] for r in got} == {"finished"}
    assert {r["bundle_size"] for r in got} == {4} and len({r["bundle"] for r in got}) == 2  # two batches
    trials = _study(store, "btpe").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    means = _means_by_eta(got)
    assert {round(t.params["eta"], 12): t.value for t in trials} == pytest.approx(
        {round(e, 12): m for e, m in means.items()})
    # a resubmit finds the study complete and trains nothing
    again = cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_a_driver_killed_mid_batch_resumes_without_losing_or_repeating_a_trial(tmp_path: Path) -> None:
    """One configuration per batch, its three seeds in two bundles; the driver is killed while the
    second bundle of the first batch runs (its first bundle's rows are finished). The resume asks that
    configuration again: its finished members are reported, not trained; the third seed trains; the
    study holds each configuration once as COMPLETE (the orphan as FAIL)."""
    from optuna.trial import TrialState

    starts = tmp_path / "starts.log"
    env = faults_file(tmp_path, [{"at": "trial_start", "touch": str(starts), "nth": 2, "action": "hang"}])
    spec = write_spec(tmp_path, _tpe("killed_batch", num_trials=2, seeds=[0, 1, 2], bundle_size=2))
    store = tmp_path / "s"
    driver = popen_cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the second bundle has started (and hangs there)
        if starts.exists() and len(starts.read_text().splitlines()) >= 2:
            break
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    before = {r["trial_key"]: r for r in rows(store, "killed_batch")}
    done_before = {k: r for k, r in before.items() if r["status"] == "finished"}
    assert len(done_before) == 2 and [r["status"] for r in before.values()].count("running") == 1
    assert [t.state for t in _study(store, "killed_batch").trials] == [TrialState.RUNNING]

    resumed = cli(["sweep", "resume", "killed_batch", "--storage", str(store)], cwd=tmp_path, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = rows(store, "killed_batch")  # as stored: a repeated key would show
    assert len(after) == 6 and len({r["trial_key"] for r in after}) == 6, resumed.stdout
    assert {r["status"] for r in after} == {"finished"}
    for key, old in done_before.items():
        new = next(r for r in after if r["trial_key"] == key)
        assert (new["started_at"], new["attempt"]) == (old["started_at"], old["attempt"]), "a finished trial ran again"
    trials = _study(store, "killed_batch").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].params == trials[1].params  # the orphan's configuration, asked again first
    means = _means_by_eta(after)
    for t in trials[1:]:
        assert t.value == pytest.approx(means[t.params["eta"]])
