"""Ctrl-C on a running sweep: the driver stops cleanly, says how to resume, and resume finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.orchestration.sweeps_helpers import (
    cli,
    popen_cli,
    rows,
    session_of,
    session_processes,
    small_spec,
    write_spec,
)

pytestmark = pytest.mark.integration

NAME = "ctrlc"


def _finished(store: Path) -> list[dict[str, Any]]:
    if not (store / NAME / "results").is_dir():
        return []
    return [r for r in rows(store, NAME) if r["status"] == "finished"]


def _wait_for(condition: Any, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def test_ctrl_c_stops_the_driver_and_resume_finishes_the_sweep(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        small_spec(
            NAME,
            search__space={"eta": {"distribution": "choice", "values": [0.5, 1.0, 2.0, 4.0]}},
            resources__max_concurrent_trials=1,
            train__epochs=10,
        ),
    )
    store = tmp_path / "s"
    driver = popen_cli(["sweep", "submit", str(spec), "--storage", str(store)], cwd=tmp_path)
    try:

        def one_finished() -> bool:
            assert driver.poll() is None, "the driver ended before a trial finished:\n" + (
                driver.stdout.read() if driver.stdout else ""
            )
            return len(_finished(store)) >= 1

        _wait_for(one_finished, 120, "the first finished trial")
        before = {r["trial_key"]: r for r in _finished(store)}
        session = session_of(store, NAME)
        sent = time.monotonic()
        # to the driver only: its Ray processes must be shut down by the driver, not by the signal
        os.kill(driver.pid, signal.SIGINT)
        try:
            out, _ = driver.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver did not exit within 60 s of Ctrl-C")
        took = time.monotonic() - sent
    finally:
        if driver.poll() is None:  # a failed test: end the driver and the Ray it started
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, f"exit code {driver.returncode} after {took:.1f} s:\n{out}"
    assert f"deepsad sweep resume {NAME}" in out, out
    _wait_for(lambda: not session_processes(session), 15, "the interrupted driver's Ray processes to exit")
    assert len(_finished(store)) < 4, "the sweep finished before the interrupt took effect"

    resumed = cli(["sweep", "resume", NAME, "--storage", str(store)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = rows(store, NAME)
    assert len(after) == 4 and len({r["trial_key"] for r in after}) == 4
    assert {r["status"] for r in after} == {"finished"}, [
        (r["trial_key"], r["status"], r["error"]) for r in after
    ]
    for key, old in before.items():
        new = next(r for r in after if r["trial_key"] == key)
        assert new["started_at"] == old["started_at"] and new["attempt"] == old["attempt"], (
            "finished trial rerun"
        )
    _wait_for(lambda: not session_processes(session_of(store, NAME)), 15, "resume's Ray processes to exit")
