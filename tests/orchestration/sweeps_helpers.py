"""Helpers for the sweep tests that run real Ray: small sweep files and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

#: Ray in tests: loopback only, no usage reports, no dashboard traffic beyond 127.0.0.1.
TEST_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}


def small_spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A grid sweep on scikit-learn's digits that trains in about a second per trial."""
    spec: dict[str, Any] = {
        "name": name,
        "data": {"dataset": "digits"},
        "protocol": {"normal_classes": [0, 1, 2, 3, 4], "known_anomaly_classes": [5],
                     "n_labeled_anomalies": 20, "ratio_pollution": 0.1, "val_fraction": 0.2},
        "train": {"lr": 1e-3, "epochs": 6, "milestones": [4], "batch_size": 32, "device": "cpu"},
        "pretrain": {"lr": 1e-3, "epochs": 4, "milestones": [3], "batch_size": 32},
        "search": {"algorithm": "grid", "space": {"eta": {"distribution": "choice", "values": [0.5, 2.0]}}},
        "seeds": [0],
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 2,
                      "checkpoint_interval_s": 0},
    }
    for dotted, value in overrides.items():
        node = spec
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return spec


def write_spec(tmp: Path, spec: dict[str, Any]) -> Path:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `deepsad ARGS` in a fresh interpreter (the way a user runs it)."""
    full_env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchestration.cli.app", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def popen_cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli.app", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def faults_file(tmp: Path, rules: list[dict[str, Any]]) -> dict[str, str]:
    """An env that activates deterministic fault injection (see orchestration/jobs/faults.py)."""
    path = tmp / "faults.json"
    path.write_text(json.dumps({"rules": rules}))
    return {"DEEPSAD_FAULTS": str(path)}


def rows(storage: Path, name: str) -> list[dict[str, Any]]:
    """The sweep's trial rows as stored (no reader-side settling of repeated keys: a test sees them)."""
    from orchestration.store.results import ResultStore, tables
    from orchestration.store.storage import Storage

    sweep = Storage.from_uri(str(storage / name))
    trials, _ = tables(sweep)
    if not trials.exists():
        return list(ResultStore(sweep).trials().to_pylist())  # a sweep of the file-per-trial layout
    return list(trials.read().table.to_pylist())


def epochs(storage: Path, name: str) -> list[dict[str, Any]]:
    """The sweep's epoch rows, each trial's latest attempt (as every reader of the store sees them)."""
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    return list(ResultStore(Storage.from_uri(str(storage / name))).epochs().to_pylist())


def to_file_per_trial(sweep: Path) -> None:
    """Rewrite the finished sweep directory ``sweep`` in the layout of earlier versions (one Parquet file
    per trial; see orchestration/store/legacy.py) and remove its Delta tables."""
    import shutil

    import pyarrow.compute as pc

    from orchestration.store.legacy import write_row_file
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    storage = Storage.from_uri(str(sweep))
    store = ResultStore(storage)
    trials, history = store.trials(), store.epochs()
    for key in trials.column("trial_key").to_pylist():
        write_row_file(storage, trials.filter(pc.field("trial_key") == key))
        mine = history.filter(pc.field("trial_key") == key)
        if mine.num_rows:
            write_row_file(storage, mine)
    shutil.rmtree(sweep / "results" / "trials.delta")
    shutil.rmtree(sweep / "results" / "epochs.delta", ignore_errors=True)


def session_of(storage: Path, name: str) -> str:
    """The Ray session directory the sweep's last driver ran (recorded in driver.json)."""
    return str(json.loads((storage / name / "driver.json").read_text())["session_dir"])


def lingering_processes(session: str, timeout: float = 15.0) -> list[int]:
    """The session's processes still alive after up to ``timeout`` s: Ray's processes exit a moment
    after ``ray.shutdown`` returns (a raylet or agent outliving the CLI by some 100 ms was seen in CI),
    so a test polls with a deadline rather than looking once."""
    deadline = time.monotonic() + timeout
    while (alive := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def session_processes(session: str) -> list[int]:
    """Live processes of one Ray session (other Ray users of this machine are not counted)."""
    from orchestration.engine.ray_session import _in_session

    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _in_session(p, session)]
