"""Sweeps on a Ray cluster, from a laptop, through the Ray Jobs API: submit, resume, status, logs, stop.

``deepsad sweep submit SPEC --address http://HEAD:8265`` validates the sweep file here, then submits
the sweep's *driver* as a Ray job: the job's runtime environment carries this project's code (the
``deepsad`` and ``orchestration`` packages, so the cluster runs exactly the code you submitted), the
sweep file, and — with ``--deps pinned``, the default — the project's dependencies pinned to the
versions installed here (Ray itself excepted: the cluster's Ray must equal ours, which is checked).
On the cluster the driver runs ``deepsad sweep submit ... --in-cluster``: the same engine as a local
sweep, joined to the cluster instead of a Ray of its own. Everything a sweep keeps lives in its
storage, which must therefore be reachable from every node: ``s3://``.

What never leaves this machine: credentials. AWS keys and Ray's auth token are not put in the job's
runtime environment (which the dashboard shows); nodes get S3 access from their instance profile or
Kubernetes Secret (see infra/), and the token is read by Ray's client from ``RAY_AUTH_TOKEN`` /
``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``.

Jobs are found again by their metadata (``deepsad_sweep``, ``deepsad_storage``), so ``status``,
``logs`` and ``stop`` need only the sweep's name and the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata as md
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepsad.errors import ConfigError, DeepSADError

#: Environment forwarded into the job: where S3 is and how to talk to it — never credentials.
FORWARDED_ENV = (
    "DEEPSAD_S3_ENDPOINT", "DEEPSAD_S3_REGION", "DEEPSAD_S3_ADDRESSING", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "DEEPSAD_FAULTS",  # fault injection of the tests (orchestration/jobs/faults.py); inert unless set
    "DEEPSAD_GPU_MEMORY_GB",  # bundle_size: auto on a head without a GPU (orchestration/plan/bundles.py)
)
#: ``sweep stop`` sends SIGINT (our graceful stop: trials checkpoint, the sweep stays resumable) and
#: waits this long before Ray kills the driver.
STOP_WAIT_S = 120
#: The project's packages shipped in the job's working directory.
PACKAGES = ("deepsad", "orchestration")
DISTRIBUTION = "deepsad-sweeps"
NEVER_PINNED = {"ray"}  # Ray pins itself: the cluster's must match (checked), never reinstalled
SPEC_IN_JOB = "submission/spec.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class ClusterError(DeepSADError):
    """The cluster cannot be reached, refuses us, or is in a state that forbids the request."""


# --------------------------------------------------------------------------- address and client


def resolve_address(address: str | None) -> str | None:
    """The dashboard URL from ``--address`` or ``RAY_ADDRESS``; None means a local sweep.

    Raises:
        ConfigError: the value is not an http(s) URL (a GCS address like ``HOST:6379`` is for nodes).
    """
    if address is None:
        env = os.environ.get("RAY_ADDRESS")
        if not env:
            return None
        if not env.startswith(("http://", "https://")):
            raise ConfigError(
                f"RAY_ADDRESS={env}: deepsad submits to a cluster through the Ray Jobs API: set it to the "
                "dashboard's URL (http://HEAD:8265), or unset it to run on a local Ray")
        return env.rstrip("/")
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address}: give the Ray dashboard's URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def connect(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address``, with the cluster's Ray version checked against ours.

    Raises:
        ClusterError: unreachable, token missing/wrong, or a different Ray version.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        remote = client._do_request("GET", "/api/version").json().get("ray_version")
    except AuthenticationError as e:
        first = str(e).splitlines()[0]
        raise ClusterError(
            f"{address}: {first} — the cluster uses token authentication: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN_PATH (or ~/.ray/auth_token, or RAY_AUTH_TOKEN) to the cluster's token") from None
    except (ConnectionError, OSError) as e:
        raise ClusterError(f"{address}: cannot reach the Ray dashboard ({_one_line(e)}); is the "
                           "address right, and the port forwarded (it is never public)?") from None
    import ray

    if remote and remote != ray.__version__:
        raise ClusterError(f"{address}: the cluster runs Ray {remote}, this machine Ray {ray.__version__}: "
                           "they must be equal (pyproject.toml pins Ray; the image in infra/docker matches)")
    return client


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# --------------------------------------------------------------------------- the job's runtime env


def pinned_requirements() -> list[str]:
    """The project's runtime dependencies pinned to the versions installed here (``name==version``).

    Extras (dev) and Ray are left out. Raises ConfigError when the project is not installed.
    """
    try:
        reqs = md.requires(DISTRIBUTION) or []
    except md.PackageNotFoundError:
        raise ConfigError(f"--deps pinned: the {DISTRIBUTION} distribution is not installed here "
                          "(pip install -e .), so its dependencies are unknown; use --deps image") from None
    from packaging.requirements import Requirement  # Ray's own dependency

    pins = []
    for text in reqs:
        req = Requirement(text)
        if (req.marker is not None and "extra" in str(req.marker)) or req.name.lower() in NEVER_PINNED:
            continue
        name = req.name
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            continue  # not installed here (an optional platform dependency): the image decides
        pins.append(f"{name}=={version.split('+')[0]}")  # a local label (+cpu) must not pin the build
    return sorted(pins, key=str.lower)


def stage_working_dir(spec_text: str, into: Path) -> Path:
    """The job's working directory: the project's packages (as imported here) and the sweep file."""
    for pkg in PACKAGES:
        src = Path(__import__(pkg).__file__).parent  # type: ignore[arg-type]
        shutil.copytree(src, into / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    spec = into / SPEC_IN_JOB
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(spec_text, encoding="utf-8")
    return into


def runtime_env(working_dir: Path, *, deps: str, job_id: str) -> dict[str, Any]:
    """The job's runtime environment: code, non-secret settings, and (``deps="pinned"``) pinned pip deps."""
    from orchestration.engine.ray_session import JOB_ID_ENV

    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars.update({
        JOB_ID_ENV: job_id,
        "PYTHONUNBUFFERED": "1",
        # `ray job stop` interrupts like Ctrl-C: Tune stops trials gracefully and the sweep stays resumable
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
    })
    env: dict[str, Any] = {"working_dir": str(working_dir), "env_vars": env_vars}
    if deps == "pinned":
        # pip runs in a virtualenv that sees the node's packages: pins already satisfied by the image
        # install nothing; the entrypoint then runs with that virtualenv's `python`
        env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    elif deps != "image":
        raise ConfigError(f"--deps {deps}: must be pinned (ship the pinned dependencies) or image (use the "
                          "cluster image's)")
    return env


def entrypoint(args: list[str], *, python: str) -> str:
    """The driver's command line on the cluster. ``python`` is the cluster's interpreter: ``python``
    resolves to the image's (infra/docker) or, with ``--deps pinned``, to the job's virtualenv."""
    return " ".join(shlex.quote(a) for a in [python, "-m", "orchestration.cli.app", *args])


# --------------------------------------------------------------------------- jobs of a sweep


@dataclass(frozen=True)
class SweepJob:
    """One Ray job that drove (or drives) a sweep."""

    job_id: str
    status: str
    action: str  # submit | resume
    storage: str
    start_time: float  # seconds since the epoch
    message: str

    @property
    def running(self) -> bool:
        return self.status not in TERMINAL


def sweep_jobs(client: Any, name: str, storage: str | None = None) -> list[SweepJob]:
    """The sweep's jobs on the cluster, newest first (``storage``: only those of that sweep directory)."""
    jobs = []
    for info in client.list_jobs():
        meta = info.metadata or {}
        if meta.get("deepsad_sweep") != name or (storage and meta.get("deepsad_storage") != storage):
            continue
        jobs.append(SweepJob(job_id=info.submission_id or info.job_id, status=str(info.status.value),
                             action=meta.get("deepsad_action", "submit"), storage=meta.get("deepsad_storage", ""),
                             start_time=(info.start_time or 0) / 1000.0, message=info.message or ""))
    return sorted(jobs, key=lambda j: j.start_time, reverse=True)


def latest_job(client: Any, name: str, address: str, storage: str | None = None) -> SweepJob:
    jobs = sweep_jobs(client, name, storage)
    if not jobs:
        raise ClusterError(f"{address}: no job of sweep {name!r} on this cluster")
    return jobs[0]


# --------------------------------------------------------------------------- submit / resume


def check_cluster_storage(storage: str | None, spec: Any) -> str:
    """The sweep's root storage for a cluster run: s3:// only (every node must reach it), writable.

    Raises:
        ConfigError: a local path (it lives on one machine only).
        StorageError: the bucket cannot be written (checked from here, before anything is submitted).
    """
    from orchestration.store.storage import Storage

    where = "--storage" if storage else f"{spec.source}: storage" if spec is not None and spec.storage else None
    uri = storage or (spec.storage if spec is not None else None)
    if not uri:
        raise ConfigError("--storage: a cluster sweep needs storage that every node reaches: give "
                          "--storage s3://bucket/prefix (the default runs/sweeps is a local directory)")
    if not uri.startswith("s3://"):
        raise ConfigError(f"{where}: {uri} is a local path, which lives on one machine only: a cluster sweep "
                          "needs storage that every node reaches (s3://bucket/prefix)")
    root = Storage.from_uri(uri)
    root.check_writable()
    return root.uri


#: What Ray's job API answers while the head's job agent is not up yet (a freshly started cluster).
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 120.0
AGENT_POLL_S = 2.0


def submit_job(
    *, address: str, name: str, storage: str, spec_text: str, driver_args: list[str], action: str,
    deps: str, python: str,
) -> str:
    """Submit the driver of sweep ``name`` as a Ray job; returns its id at once.

    Raises:
        ClusterError: the cluster cannot be reached, or the sweep already runs there.
    """
    client = connect(address)
    running = [j for j in sweep_jobs(client, name, storage) if j.running]
    if running:
        raise ClusterError(f"sweep {name!r} already runs on {address} as job {running[0].job_id} "
                           f"({running[0].status}); stop it first: deepsad sweep stop {name} --address {address}")
    job_id = f"deepsad-{re.sub(r'[^A-Za-z0-9_-]', '-', name)}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    with tempfile.TemporaryDirectory(prefix="deepsad-job-") as tmp:
        work = stage_working_dir(spec_text, Path(tmp))
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(
                    entrypoint=entrypoint([*driver_args, "--storage", storage, "--in-cluster"], python=python),
                    submission_id=job_id,
                    runtime_env=runtime_env(work, deps=deps, job_id=job_id),
                    metadata={"deepsad_sweep": name, "deepsad_storage": storage, "deepsad_action": action},
                )
                return job_id
            except (RuntimeError, ConnectionError) as e:
                # a cluster that has just started answers before its job agent is up: wait for it
                if NO_AGENT in str(e) and time.monotonic() < deadline:
                    time.sleep(AGENT_POLL_S)
                    continue
                raise ClusterError(f"{address}: the job was refused: {_one_line(e)}") from None


def wait_for_job(address: str, job_id: str, echo: Callable[[str], None]) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    client = connect(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                echo(line)

    with contextlib.suppress(Exception):  # the stream ends with the job (or drops): the status decides
        asyncio.run(tail())
    deadline = time.monotonic() + 60
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(client.get_job_status(job_id).value)
    return status


# --------------------------------------------------------------------------- stop


def stop_sweep(address: str, name: str, storage: str | None, echo: Callable[[str], None],
               timeout_s: float = STOP_WAIT_S + 30) -> SweepJob:
    """Stop the sweep's running job gracefully (SIGINT, then Ray's kill after ``STOP_WAIT_S``)."""
    client = connect(address)
    running = [j for j in sweep_jobs(client, name, storage) if j.running]
    if not running:
        raise ClusterError(f"{address}: sweep {name!r} has no running job")
    job = running[0]
    client.stop_job(job.job_id)
    echo(f"stopping job {job.job_id} of sweep {name} (finished trials are kept)…")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job.job_id).value)
        if status in TERMINAL:
            break
        time.sleep(1)
    return latest_job(client, name, address, storage)


@contextlib.contextmanager
def quiet_ray_client() -> Iterator[None]:
    """Keep Ray's client-side INFO logging (package uploads, websocket chatter) off the user's terminal."""
    import logging

    import ray.job_submission  # noqa: F401  (imports the SDK, so its loggers exist before we quiet them)

    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    loggers = [logging.getLogger(n) for n in {"ray", *names}]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def python_default() -> str:
    """``--python`` default: ``DEEPSAD_CLUSTER_PYTHON`` or ``python`` (the image's / job venv's)."""
    return os.environ.get("DEEPSAD_CLUSTER_PYTHON") or "python"
