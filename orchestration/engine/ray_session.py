"""The Ray a sweep runs on: a local one that listens on 127.0.0.1 only, or the cluster a driver runs in.

:func:`local_ray` starts (and always stops) a one-node Ray bound to the loopback interface with its own
dashboard port; :func:`cluster_ray` joins the cluster of a Ray job's driver (``--in-cluster``). Both record
the driver in the sweep's ``driver.json``; :func:`reap_stale_ray` ends what a SIGKILLed local driver
left behind (never a cluster's processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from deepsad.errors import ConfigError, StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.store.storage import Storage

#: Environment of the sweep's driver (Tune reads it when ``fit`` starts), local Ray or cluster alike.
DRIVER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # AE epochs carry no validation metric; the trainable reports it from Deep SAD epochs on
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # checkpoints are small and frequent by design; Tune's warning about it is noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # snapshot the experiment state on every change: with Tune's default (>= 10 s) a driver killed
    # between snapshots leaves a state that restores finished trials as unfinished (seen on 2.60)
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # the legacy reporter honours verbose=0; our ProgressPrinter is the display
    "RAY_AIR_NEW_OUTPUT": "0",
}

#: Environment that keeps a local Ray, its dashboard and gloo on the loopback interface. It must be
#: set before ``import ray`` (Ray reads it at import time) and is inherited by every Ray worker.
LOOPBACK_ENV = {
    **DRIVER_ENV,
    # without it Ray rewrites 127.0.0.1 to the machine's interface address
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
}


#: Set in the driver (and inherited by every worker) when we started the Ray ourselves on 127.0.0.1.
LOCAL_MARKER = "DEEPSAD_LOCAL_RAY"

#: Set by ``deepsad sweep submit --address`` in the Ray job it submits (its submission id).
JOB_ID_ENV = "DEEPSAD_JOB_ID"


def apply_loopback_env() -> None:
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)


@contextlib.contextmanager
def local_ray(
    num_cpus: float, num_gpus: float, *, trial_slots: int = 0, sweep_dir: Storage | None = None
) -> Iterator[None]:
    """Start (and always shut down) a one-node Ray bound to 127.0.0.1, dashboard included.

    The dashboard stays on: without its state API the placement-group cleaner cannot see a stopped
    trial's controller die, and early-stopped sweeps deadlock (Ray 2.60).
    """
    apply_loopback_env()
    import ray

    if ray.is_initialized():  # a test (or a caller) already runs one
        yield
        return
    # our own dashboard port, announced to Ray Train's internals: with the default, a second Ray
    # on this machine makes Train fail with "Found multiple active Ray instances"
    # we start our own Ray: an address in the environment (e.g. a cluster's) would make
    # ray.init(num_cpus=...) refuse; cluster sweeps go through `--address` (orchestration.engine.remote)
    os.environ.pop("RAY_ADDRESS", None)
    port = free_loopback_port()
    os.environ[LOCAL_MARKER] = "1"
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        # "local": always a new Ray of our own, even when another runs on this machine (without it,
        # ray.init joins a cluster recorded in /tmp/ray/ray_current_cluster and refuses num_cpus)
        address="local",
        num_cpus=max(int(num_cpus), 1),
        num_gpus=int(num_gpus),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        _node_ip_address="127.0.0.1",
        namespace="deepsad",
        # a CPU-free resource for the driver of a Ray Train trial (a bundle of {"CPU": 0} alone is
        # rejected; a fraction of a CPU would starve its workers); its count bounds concurrency
        resources={"trial_slot": max(trial_slots, 1)},
        logging_level=logging.ERROR,
        # trials report through Tune (ProgressPrinter); their own logs stay in the session's files
        log_to_driver=False,
        configure_logging=True,
    )
    if sweep_dir is not None:
        ctx = ray.get_runtime_context()
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "session_dir": getattr(ctx, "session_dir", None) or _session_dir(),
                "started_at": datetime.now(UTC).isoformat()}
        sweep_dir.write_bytes(json.dumps(info).encode(), "driver.json")
    try:
        yield
    finally:
        ray.shutdown()


def free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def cluster_ray(sweep_dir: Storage | None = None) -> Iterator[None]:
    """Join the Ray cluster this process runs in (the driver of a Ray job: ``RAY_ADDRESS`` is set).

    Records the driver (host, pid, Ray job) in ``driver.json``; unlike :func:`local_ray` nothing is
    started or reaped here: the cluster outlives the driver and cleans up after a dead job itself.

    Raises:
        ConfigError: no Ray cluster to join (``--in-cluster`` outside a Ray job / cluster node).
    """
    for k, v in DRIVER_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.pop(LOCAL_MARKER, None)
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", namespace="deepsad",
                     logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
        except ConnectionError as e:
            raise ConfigError(f"--in-cluster: no Ray cluster to join from this process ({e})") from e
    if sweep_dir is not None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "cluster": True,
                "job_id": os.environ.get(JOB_ID_ENV), "started_at": datetime.now(UTC).isoformat()}
        sweep_dir.write_bytes(json.dumps(info).encode(), "driver.json")
    try:
        yield
    finally:
        ray.shutdown()


def _session_dir() -> str | None:
    with contextlib.suppress(Exception):
        import ray._private.worker as w

        return str(w._global_node.get_session_dir_path())  # type: ignore[attr-defined]
    return None


def reap_stale_ray(sweep_dir: Storage) -> int:
    """Kill what a SIGKILLed driver of this sweep left behind (its Ray session's processes).

    A driver killed with SIGKILL cannot shut its local Ray down; some of its processes survive. We
    recorded the session directory at start and end every process that runs under it. Returns the
    number of processes signalled.
    """
    if not sweep_dir.exists("driver.json"):
        return 0
    info = load_json_bounded(sweep_dir.read_bytes("driver.json"), f"{sweep_dir.uri}/driver.json", error=StorageError)
    if not isinstance(info, dict):
        return 0
    if info.get("cluster"):
        return 0  # a Ray job's driver: the cluster cleans up after a dead job itself
    if info.get("host", socket.gethostname()) != socket.gethostname():
        return 0  # the last driver ran on another machine: nothing of it runs here
    session, pid = info.get("session_dir"), int(info.get("pid", 0))
    if pid and pid != os.getpid() and _alive(pid):  # our own pid: a resume that goes on with a new run
        raise StorageError(f"sweep {sweep_dir.uri}: its driver (pid {pid}) is still running")
    if not session or not _is_session_dir(str(session)):
        return 0  # (driver.json comes from the storage: never let it name what to kill beyond a Ray session)
    killed = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid() and _in_session(proc, session):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def _is_session_dir(session: str) -> bool:
    """Whether ``session`` is a Ray session directory on this machine (``.../session_<date>_<pid>``,
    a real directory, not a link such as ``session_latest``)."""
    path = Path(session)
    return path.is_absolute() and path.name.startswith("session_") and path.name != "session_latest" \
        and path.is_dir() and not path.is_symlink()


def _in_session(proc: Path, session: str) -> bool:
    """Whether a process belongs to a Ray session: its command line names the session directory, or
    (Ray's agents rename themselves to ``ray::...``) one of its open files lies inside it."""
    try:
        if session in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
            return True
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(session):
                    return True
    except OSError:
        return False
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")
