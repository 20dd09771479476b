"""Sweeps on a real multi-node Ray cluster on this machine, submitted from a separate client process.

The cluster: a head without CPUs (it runs the job's driver and the lock table) and two worker nodes of
one CPU each — three raylets, all on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from
rewriting the address), with token authentication on and a moto S3 server as the only storage. The
client is the ``deepsad`` CLI in a subprocess talking to the dashboard's Jobs API, as from a laptop.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.orchestration.sweeps_helpers import TEST_ENV, cli, faults_file, small_spec, write_spec
from tests.s3_servers import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, free_port, use_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 90


@dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str  # the dashboard URL
    workers: list[Any]
    token: str
    storage: str  # s3://bucket/prefix for this test
    ray_dirs: list[Path]  # the head's session directory and the workers' temp dirs

    def jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address)

    def cli(self, command: str, target: str, *more: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``deepsad sweep COMMAND TARGET`` against this cluster and its bucket (the image's deps)."""
        return cli(["sweep", command, target, "--address", self.address, "--storage", self.storage, "--deps", "image",
                    *more], cwd=cwd, env=env, timeout=timeout)

    def rows(self, name: str) -> list[dict[str, Any]]:
        from orchestration.store.results import ResultStore
        from orchestration.store.storage import Storage

        return list(ResultStore(Storage.from_uri(self.storage).child(name)).trials().to_pylist())


@pytest.fixture(scope="session")
def cluster_token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token for every cluster of the session: Ray's client caches the token it loaded once."""
    path = tmp_path_factory.mktemp("ray-auth") / "token"
    path.write_text(secrets.token_hex(16))
    return path


@pytest.fixture
def cluster(
    moto_server: S3Server, cluster_token: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[LocalCluster]:
    use_server(monkeypatch, moto_server, tmp_path)
    token = cluster_token.read_text()
    env = {
        **TEST_ENV,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(cluster_token),
        # the nodes' `python` is this environment's, as on a node started from an activated venv or
        # from the project's image
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from ray.cluster_utils import Cluster

    port = free_port()
    t0 = time.monotonic()
    # every node its own temp dir, as on separate machines: nodes sharing one would also share the
    # unpacked runtime environments, and one node's re-extraction pulls the directory from under
    # another's processes (seen: the driver's working directory vanished)
    node_dirs = [Path(tempfile.mkdtemp(prefix="rn", dir="/tmp")) for _ in range(2)]  # short: socket paths
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port, "resources": {"trial_slot": 4}})
    try:
        workers = [c.add_node(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=str(d)) for d in node_dirs]
        c.wait_for_nodes(timeout=START_TIMEOUT_S)
        _wait(lambda: _dashboard_up(f"http://127.0.0.1:{port}"), START_TIMEOUT_S, "the dashboard")
        print(f"cluster of 3 nodes up in {time.monotonic() - t0:.1f} s")
        yield LocalCluster(c, f"http://127.0.0.1:{port}", workers, token,
                           f"s3://{BUCKET}/cluster-{uuid.uuid4().hex[:8]}",
                           [Path(c.head_node.get_session_dir_path()), *node_dirs])
    finally:
        c.shutdown()
        for d in node_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _files_containing(roots: list[Path], needle: str) -> list[str]:
    hits = []
    for root in roots:
        for f in root.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and f.stat().st_size < 50_000_000 and needle.encode() in f.read_bytes():
                    hits.append(str(f))
    return hits


def _dashboard_up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2):
            return True
    except Exception as e:  # 401 means it is up (and wants a token)
        return "401" in str(e)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _touches(path: Path) -> list[list[str]]:
    """Lines of a fault-injection touch file: key, point, epoch, pid, node id."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _job_status(c: LocalCluster, name: str) -> str:
    from orchestration.engine.remote import sweep_jobs

    jobs = sweep_jobs(c.jobs(), name)
    return jobs[0].status if jobs else "NONE"


def test_a_sweep_submitted_from_a_client_spreads_over_the_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    starts = tmp_path / "starts.log"
    env = faults_file(tmp_path, [{"at": "sad_epoch", "epoch": 1, "touch": str(starts)}])
    spec = write_spec(tmp_path, small_spec(
        "spread", search__space={"eta": {"distribution": "choice", "values": [0.5, 1.0, 2.0, 4.0]}}))
    laptop = tmp_path / "laptop"
    laptop.mkdir()

    # the client: wrong token -> one line, nothing submitted
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(16))
    refused = cluster.cli("submit", str(spec), cwd=laptop, env={"RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "RAY_AUTH_MODE=token" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert cluster.token not in refused.stdout + refused.stderr
    # a local directory cannot be a cluster sweep's storage
    local = cli(["sweep", "submit", str(spec), "--address", cluster.address, "--storage", str(tmp_path / "s")],
                cwd=laptop)
    assert local.returncode == 2 and "s3://" in local.stderr and "local path" in local.stderr, local.stderr
    assert _job_status(cluster, "spread") == "NONE"

    run = cluster.cli("submit", str(spec), "--wait", cwd=laptop, env=env, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "submitted: sweep spread runs as Ray job deepsad-spread-" in out
    assert "trials: 4 (0 failed, 4 finished" in out, out  # the driver's summary, streamed back
    assert SECRET_KEY not in out and ACCESS_KEY not in out
    # nor in anything Ray wrote (logs, runtime environments): Tune would copy the driver's keys
    # into every trial's runtime env, which Ray logs
    assert _files_containing(cluster.ray_dirs, SECRET_KEY) == []
    assert _files_containing(cluster.ray_dirs, ACCESS_KEY) == []
    rows = cluster.rows("spread")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    nodes = {line[4] for line in _touches(starts)}
    workers = {w.node_id for w in cluster.workers}
    assert nodes == workers, f"trials ran on {nodes}, expected both worker nodes {workers}"

    status = cli(["sweep", "status", "spread", "--address", cluster.address], cwd=laptop)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "SUCCEEDED" in status.stdout and "4 finished" in status.stdout
    logs = cli(["sweep", "logs", "spread", "--address", cluster.address], cwd=laptop)
    assert logs.returncode == 0 and "trials: 4" in logs.stdout
    again = cluster.cli("submit", str(spec), "--wait", cwd=laptop, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert len(cluster.rows("spread")) == 4
    print(f"spread test: {time.monotonic() - t0:.1f} s")


def test_a_killed_worker_node_costs_the_trial_no_finished_epochs(cluster: LocalCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    epochs_log = tmp_path / "epochs.log"
    env = faults_file(tmp_path, [{"at": "sad_epoch", "touch": str(epochs_log)}])
    spec = write_spec(tmp_path, small_spec(
        "nodeloss", search__space={"eta": {"distribution": "choice", "values": [1.0]}}, train__epochs=40,
        train__milestones=[30], resources__max_failures=3))
    sub = cluster.cli("submit", str(spec), cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "submitted: sweep nodeloss runs as Ray job" in sub.stdout  # returned at once, not after the sweep

    _wait(lambda: len(_touches(epochs_log)) >= 4, 240, "epoch 4 of the trial")
    victim_id = _touches(epochs_log)[-1][4]
    (victim,) = [w for w in cluster.workers if w.node_id == victim_id]
    killed_after = len(_touches(epochs_log))
    cluster.cluster.remove_node(victim, allow_graceful=False)
    t_kill = time.monotonic()
    survivor = next(w.node_id for w in cluster.workers if w is not victim)

    _wait(lambda: _job_status(cluster, "nodeloss") in {"SUCCEEDED", "FAILED", "STOPPED"}, 400, "the sweep")
    print(f"node killed after epoch {killed_after}; sweep done {time.monotonic() - t_kill:.1f} s later")
    assert _job_status(cluster, "nodeloss") == "SUCCEEDED"
    (row,) = cluster.rows("nodeloss")
    assert row["status"] == "finished" and row["epochs_done"] == 40 and row["attempt"] >= 2, (row["status"], row.get("error"), row.get("attempt"), row.get("epochs_done"))
    lines = _touches(epochs_log)
    before = [int(e) for _k, _at, e, _pid, node in lines if node == victim_id]
    after = [int(e) for _k, _at, e, _pid, node in lines if node == survivor]
    assert before[:3] == [1, 2, 3] and after, lines
    # resumed from its last checkpoint on the other node: at most the epoch in flight is repeated
    assert after[0] >= before[-1] and after[0] > 1, (before, after)
    assert after == list(range(after[0], 41))
    print(f"epochs on the killed node: {before[0]}..{before[-1]}; on the survivor: {after[0]}..{after[-1]}")
    from orchestration.store.results import ResultStore
    from orchestration.store.storage import Storage

    store = ResultStore(Storage.from_uri(cluster.storage).child("nodeloss"))
    sad = sorted(e["epoch"] for e in store.epochs().to_pylist() if e["phase"] == "sad")
    assert sad == list(range(1, 41))
    print(f"node-loss test: {time.monotonic() - t0:.1f} s")


def test_a_killed_driver_is_resumed_on_the_cluster_without_rerunning_trials(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    ends = tmp_path / "ends.log"
    env = faults_file(tmp_path, [{"at": "trial_end", "touch": str(ends)}])
    spec = write_spec(tmp_path, small_spec(
        "driverloss", search__space={"eta": {"distribution": "choice", "values": [0.5, 1.0, 2.0, 4.0]}},
        resources__max_concurrent_trials=1, train__epochs=10))
    sub = cluster.cli("submit", str(spec), cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    # finished = its row says so (a trial killed between training and writing its row is rerun, rightly)
    _wait(lambda: sum(r["status"] == "finished" for r in cluster.rows("driverloss")) >= 2, 300,
          "two finished trials")
    from orchestration.store.storage import Storage

    sweep_dir = Storage.from_uri(cluster.storage).child("driverloss")
    driver = json.loads(sweep_dir.read_bytes("driver.json"))
    assert driver["cluster"] is True and driver["job_id"].startswith("deepsad-driverloss-")
    os.kill(int(driver["pid"]), signal.SIGKILL)  # the driver runs on this machine's head node
    _wait(lambda: _job_status(cluster, "driverloss") == "FAILED", 120, "the job to fail")
    first = {r["trial_key"]: r for r in cluster.rows("driverloss") if r["status"] == "finished"}
    assert len(first) >= 2  # (a trial in flight when the driver died is rerun: it had not finished)

    resumed = cluster.cli("resume", "driverloss", "--wait", cwd=tmp_path, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = cluster.rows("driverloss")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert len({r["trial_key"] for r in rows}) == 4  # exactly one row per trial
    for key, row in first.items():
        assert {r["trial_key"]: r for r in rows}[key]["started_at"] == row["started_at"]  # not rerun
    trained = [line[0] for line in _touches(ends)]
    assert all(trained.count(key) == 1 for key in first), f"a finished trial ran twice: {trained}"
    print(f"driver-loss test: {time.monotonic() - t0:.1f} s")


def test_stop_interrupts_the_sweep_gracefully_and_resume_finishes_it(cluster: LocalCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    ends = tmp_path / "ends.log"
    env = faults_file(tmp_path, [{"at": "trial_end", "touch": str(ends)}])
    spec = write_spec(tmp_path, small_spec(
        "stopped", search__space={"eta": {"distribution": "choice", "values": [0.5, 1.0, 2.0]}},
        resources__max_concurrent_trials=1, train__epochs=30))
    sub = cluster.cli("submit", str(spec), cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    _wait(lambda: any(r["status"] == "finished" for r in cluster.rows("stopped")), 300, "one finished trial")
    stop = cli(["sweep", "stop", "stopped", "--address", cluster.address], cwd=tmp_path, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "STOPPED" in stop.stdout or "FAILED" in stop.stdout, stop.stdout
    assert "deepsad sweep resume stopped" in stop.stdout
    logs = cli(["sweep", "logs", "stopped", "--address", cluster.address], cwd=tmp_path)
    assert "interrupted: finished trials are kept" in logs.stdout, logs.stdout[-2000:]
    kept = {r["trial_key"]: r for r in cluster.rows("stopped") if r["status"] == "finished"}
    assert kept
    again = cli(["sweep", "stop", "stopped", "--address", cluster.address], cwd=tmp_path)
    assert again.returncode == 2 and "has no running job" in again.stderr
    resumed = cluster.cli("resume", "stopped", "--wait", cwd=tmp_path, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = {r["trial_key"]: r for r in cluster.rows("stopped")}
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"finished"}
    for key, row in kept.items():
        assert rows[key]["started_at"] == row["started_at"]
    print(f"stop test: {time.monotonic() - t0:.1f} s")
