"""S3 specifics: URIs and settings (unit), then real S3 servers on 127.0.0.1 (integration): one-line
errors for a missing bucket, refused credentials and an unreachable endpoint; no secret anywhere;
Parquet results queried in place; a Storage rebuilt in another process; a whole sweep on S3."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable

from deepsad.errors import StorageError
from orchestration.store import s3
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.delta import storage_options, table_uri
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
from orchestration.store.storage import Storage
from tests.conftest import REPO
from tests.real import require_module
from tests.s3_servers import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, free_port, listening_addresses

SECRETS = (ACCESS_KEY, SECRET_KEY)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean AWS environment holding only the sentinel credentials (no endpoint, no region)."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "DEEPSAD_S3_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return monkeypatch


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential leaked into: {text!r}"


# ---------------------------------------------------------------------------------------------- unit


def test_uri_keeps_bucket_and_prefix_only(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("DEEPSAD_S3_ENDPOINT", "http://127.0.0.1:9")
    s = Storage.from_uri("s3://my-bucket//runs/sweeps/")
    assert (s.uri, s.root) == ("s3://my-bucket/runs/sweeps", "my-bucket/runs/sweeps")
    assert not s.is_local and isinstance(s.filesystem, pafs.S3FileSystem)
    assert Storage.from_uri("s3://my-bucket").root == "my-bucket"
    assert (
        s.child("x", "y").uri == "s3://my-bucket/runs/sweeps/x/y" and s.path("a") == "my-bucket/runs/sweeps/a"
    )
    assert Storage.from_uri("S3://my-bucket/p").uri == "s3://my-bucket/p"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/p", "credentials must not be part of the URI"),
        (f"s3://bucket/p?secret_key={SECRET_KEY}", "a query or fragment is not allowed"),
        ("s3://bucket:9000/p", "a port belongs to the endpoint"),
        ("s3://Bad_Bucket/p", "invalid bucket name 'Bad_Bucket'"),
        ("s3://ab/p", "invalid bucket name 'ab'"),
        ("s3:///p", "invalid bucket name ''"),
        ("s3://bucket/a/../b", "invalid storage prefix"),
        ("s3://bucket/%2e%2e/b", "invalid storage prefix"),
    ],
)
def test_bad_uris_are_refused_without_echoing_secrets(
    aws_env: pytest.MonkeyPatch, uri: str, message: str
) -> None:
    with pytest.raises(StorageError, match=message) as info:
        Storage.from_uri(uri)
    assert_no_secret(str(info.value))
    assert len(str(info.value).splitlines()) == 1


def test_settings_precedence_and_defaults() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://a:1",
        "AWS_ENDPOINT_URL_S3": "http://b:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert s3.S3Settings.from_env(env) == s3.S3Settings("http://b:2", "eu-west-1", "path")
    env |= {
        "DEEPSAD_S3_ENDPOINT": "https://c",
        "AWS_REGION": "eu-central-1",
        "DEEPSAD_S3_ADDRESSING": "virtual",
    }
    assert s3.S3Settings.from_env(env) == s3.S3Settings("https://c", "eu-central-1", "virtual")

    assert s3.S3Settings.from_env({"DEEPSAD_S3_ENDPOINT": "http://x:9"}).region == "us-east-1"
    assert s3.S3Settings.from_env({}) == s3.S3Settings("", None, None)  # AWS: the SDK decides
    assert s3.S3Settings.from_env({"DEEPSAD_S3_REGION": "ap-south-1"}).region == "ap-south-1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEEPSAD_S3_ENDPOINT": f"http://{ACCESS_KEY}:{SECRET_KEY}@host:9"}, "credentials must not be part"),
        ({"AWS_ENDPOINT_URL": "ftp://host"}, "AWS_ENDPOINT_URL: must be http://host"),
        ({"DEEPSAD_S3_ENDPOINT": "127.0.0.1:9000"}, "DEEPSAD_S3_ENDPOINT: must be http://host"),
        ({"DEEPSAD_S3_ENDPOINT": "http://host:9/path"}, "without a path or query"),
        ({"DEEPSAD_S3_ENDPOINT": f"http://host:9?k={SECRET_KEY}"}, "without a path or query"),
        ({"DEEPSAD_S3_ENDPOINT": "http://host:99999"}, "invalid port"),
        ({"DEEPSAD_S3_ADDRESSING": "dns"}, "DEEPSAD_S3_ADDRESSING: must be one of path, virtual"),
        ({"DEEPSAD_S3_ADDRESSING": "path"}, "needs a region"),
        ({"AWS_REGION": "eu west"}, "AWS_REGION: not a region name"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(StorageError, match=message) as info:
        s3.S3Settings.from_env(env)
    assert_no_secret(str(info.value))


def test_storage_repr_str_and_pickle_carry_no_credentials(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("DEEPSAD_S3_ENDPOINT", "http://127.0.0.1:9")
    s = Storage.from_uri("s3://bucket/p").child("x")
    for text in (repr(s), str(s), repr(s.filesystem)):
        assert_no_secret(text)
    blob = pickle.dumps(s)  # how Ray ships it to workers
    assert not any(secret.encode() in blob for secret in SECRETS)
    assert pickle.loads(blob) == s


@pytest.mark.parametrize(
    ("error", "expected", "known"),
    [
        (
            "When getting information for bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket operation: "
            "curlCode: 7, Could not connect to server",
            "cannot reach endpoint http://h:1 (connection refused)",
            True,
        ),
        (
            "AWS Error NETWORK_CONNECTION ... curlCode: 28, Timeout was reached",
            "cannot reach endpoint http://h:1 (timed out)",
            True,
        ),
        ("AWS Error ACCESS_DENIED during HeadBucket operation: No response body.", s3.ACCESS_DENIED, True),
        (f"AWS Error INVALID_ACCESS_KEY_ID: key {ACCESS_KEY} unknown", s3.ACCESS_DENIED, True),
        (
            "AWS Error NO_SUCH_BUCKET during PutObject",
            "bucket 'b' does not exist (endpoint http://h:1)",
            True,
        ),
        (
            f"AWS Error UNKNOWN (HTTP status 500) for {ACCESS_KEY} secret {SECRET_KEY}\nsecond line",
            "AWS Error UNKNOWN (HTTP status 500) for *** secret ***",
            False,
        ),
    ],
)
def test_explain_classifies_and_scrubs(
    aws_env: pytest.MonkeyPatch, error: str, expected: str, known: bool
) -> None:
    assert s3.explain(OSError(error), bucket="b", where="endpoint http://h:1") == (expected, known)


def test_scrub_removes_key_ids_and_signatures(aws_env: pytest.MonkeyPatch) -> None:
    text = f"Credential=AKIAOTHERKEY1234/2024 Signature=abcdef0123 X-Amz-Security-Token: tok {SECRET_KEY}"
    out = s3.scrub(text)
    assert "AKIAOTHERKEY1234" not in out and "abcdef0123" not in out and "tok" not in out
    assert_no_secret(out)


# ----------------------------------------------------------------------------------- real servers

integration = pytest.mark.integration


@integration
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_servers_listen_on_loopback_only(s3_server: S3Server) -> None:
    addresses = listening_addresses(s3_server.process.pid)
    assert s3_server.endpoint.removeprefix("http://") in addresses
    hosts = {a.rsplit(":", 1)[0] for a in addresses}
    assert hosts <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


@integration
def test_missing_bucket_is_one_line_before_anything_starts(s3_server: S3Server) -> None:
    with pytest.raises(StorageError) as info:
        Storage.from_uri("s3://nobucket/x").check_writable()
    assert str(info.value) == (
        f"storage s3://nobucket/x: bucket 'nobucket' does not exist (endpoint {s3_server.endpoint})"
    )


@integration
def test_unreachable_endpoint_fails_fast_in_one_line(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("DEEPSAD_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        Storage.from_uri(f"s3://{BUCKET}/x").check_writable()
    assert time.monotonic() - t0 < 15
    assert str(info.value) == (
        f"storage s3://{BUCKET}/x: cannot reach endpoint http://127.0.0.1:{port} (connection refused)"
    )


@integration
def test_wrong_credentials_are_access_denied_without_echoing_them(
    seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # moto accepts any credentials; SeaweedFS knows only the sentinel identity.
    from tests.s3_servers import use_server

    use_server(monkeypatch, seaweedfs_server, tmp_path)
    wrong = ("AKIASENTINELWRONG0001", "sentinel-secret-wrong-0001")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", wrong[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong[1])
    s = Storage.from_uri(f"s3://{BUCKET}/x")
    with pytest.raises(StorageError) as info:
        s.check_writable()
    assert str(info.value) == (
        f"storage s3://{BUCKET}/x: access denied — check the AWS credentials (profile/env/instance role)"
    )
    with pytest.raises(StorageError, match=r"cannot write \(access denied") as write:
        s.write_bytes(b"x", "f")
    for text in (str(info.value), str(write.value), repr(write.value)):
        for secret in (*SECRETS, *wrong):
            assert secret not in text


@integration
def test_the_cli_prints_one_line_and_exits_2_on_a_missing_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    from tests.orchestration.cli.test_sweep_cli import deepsad
    from tests.orchestration.sweeps_helpers import small_spec, write_spec

    spec = write_spec(tmp_path, small_spec("s3bad"))
    got = deepsad(["sweep", "submit", str(spec), "--storage", "s3://nobucket/sweeps"], cwd=tmp_path)
    assert got.code == 2, got.stdout + got.stderr
    assert got.stderr.splitlines() == [
        f"error: --storage: storage s3://nobucket/sweeps: bucket 'nobucket' does not exist "
        f"(endpoint {s3_server.endpoint})"
    ]
    assert not got.imported["ray"]


@integration
def test_no_secret_in_errors_or_stored_objects(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    s = Storage.from_uri(f"s3://{BUCKET}/{prefix}")
    s.check_writable()
    store = ResultStore(s.child("sweep"))
    store.write_trial({"trial_key": "k", "status": "failed", "error": "boom", "checkpoint": s.child("c").uri})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.bin").write_bytes(b"data")
    s.upload_dir(tmp_path / "b", "sweep", "checkpoints", "k")
    messages = []
    for bad in (lambda: s.read_bytes("missing"), lambda: s.download_dir(tmp_path / "x", "sweep", "results")):
        with pytest.raises(StorageError) as info:
            bad()
        messages.append(str(info.value))
    objects = {k: v for k, v in s3_server.objects().items() if k.startswith(prefix)}
    assert f"{prefix}/sweep/checkpoints/k/MANIFEST.json" in objects
    for text in [*messages, *objects, repr(s), str(store.row("k"))]:
        assert_no_secret(text)
    for key, data in objects.items():
        assert not any(secret.encode() in data for secret in SECRETS), key


@integration
def test_results_are_queryable_in_place(s3_server: S3Server) -> None:
    """duckdb has no httpfs/delta extension offline (and must not download one), so it queries the Delta
    trial table through delta-rs' pyarrow dataset over the same S3 file system: the data stays in the
    bucket."""
    duckdb = require_module("duckdb", "duckdb is not installed (a dev dependency)")
    s = Storage.from_uri(f"s3://{BUCKET}/q-{uuid.uuid4().hex[:8]}").child("sweep")
    store = ResultStore(s)
    for i, auroc in enumerate([0.7, 0.9, 0.8]):
        store.write_trial({"trial_key": f"k{i}", "status": "finished", "eta": float(i), "val_auroc": auroc})
    store.write_trial({"trial_key": "k9", "status": "failed"})
    table = s.child("results", "trials.delta")
    dt = DeltaTable(table_uri(table), storage_options=storage_options(table))
    trials = dt.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(table.root, table.filesystem),
                                   schema=TRIAL_SCHEMA)
    best = duckdb.sql(
        "select trial_key, val_auroc from trials where status = 'finished' order by val_auroc desc limit 1"
    ).fetchall()
    assert best == [("k1", 0.9)]
    assert trials.count_rows() == 4 and store.finished_keys() == {"k0", "k1", "k2"}


@integration
def test_another_process_rebuilds_the_storage_from_its_uri_and_exits_cleanly(s3_server: S3Server) -> None:
    s = Storage.from_uri(f"s3://{BUCKET}/proc-{uuid.uuid4().hex[:8]}")
    s.write_bytes(b"from the parent", "hello.txt")
    code = (
        "import sys\n"
        "from orchestration.store.storage import Storage\n"
        "s = Storage.from_uri(sys.argv[1])\n"  # kept alive until interpreter exit: S3 is finalized after
        "s.write_bytes(s.read_bytes('hello.txt') + b' and the child', 'reply.txt')\n"
        "print(s.uri)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", code, s.uri], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.strip() == s.uri
    assert s.read_bytes("reply.txt") == b"from the parent and the child"


@integration
def test_ae_cache_detects_a_tampered_entry_on_s3(s3_server: S3Server) -> None:
    import torch

    from deepsad.errors import IntegrityError

    cache = AECache(Storage.from_uri(f"s3://{BUCKET}/ae-{uuid.uuid4().hex[:8]}"))
    key = ae_cache_key("ae", "cd" * 32)
    cache.put(
        key,
        {"w": torch.arange(1000, dtype=torch.float32)},
        {"ae_seconds": 1.0, "epochs": 1, "trial_key": "t"},
    )
    tensors = cache.storage.read_bytes(key, "tensors.safetensors")
    cache.storage.write_bytes(tensors[:-4] + b"\0\0\0\0", key, "tensors.safetensors")
    with pytest.raises(IntegrityError, match=rf"^{cache.uri(key)}/tensors\.safetensors: sha256 mismatch"):
        cache.get(key)


# ---------------------------------------------------------------------------------------- a whole sweep


def _all_text(objects: dict[str, bytes]) -> list[str]:
    return [*objects, *(v.decode("latin-1") for v in objects.values())]


@integration
def test_a_sweep_runs_entirely_on_s3(
    seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ray Tune's trial storage, the Parquet store, the AE cache and the checkpoints all live in the
    bucket (SeaweedFS enforces the credentials, so the Ray workers must find them in the
    environment too); nothing lands in the working directory, and no object holds a secret."""
    from tests.orchestration.sweeps_helpers import cli, small_spec, write_spec
    from tests.s3_servers import use_server

    use_server(monkeypatch, seaweedfs_server, tmp_path)
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    spec = write_spec(tmp_path, small_spec("ons3", train__epochs=2, pretrain__epochs=2))
    work = tmp_path / "work"
    work.mkdir()
    run = cli(["sweep", "submit", str(spec), "--storage", f"s3://{BUCKET}/{prefix}"], cwd=work, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert_no_secret(run.stdout + run.stderr)
    sweep = Storage.from_uri(f"s3://{BUCKET}/{prefix}/ons3")
    rows: list[dict[str, Any]] = ResultStore(sweep).trials().to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}
    for r in rows:
        assert r["checkpoint"] == f"{sweep.uri}/checkpoints/{r['trial_key']}"
        assert sweep.is_complete("checkpoints", r["trial_key"])
    assert sweep.list("cache", "ae") and all(
        sweep.is_complete("cache", "ae", k) for k in sweep.list("cache", "ae")
    )
    assert sweep.list("tune"), "Ray Tune's experiment is not in the bucket"
    assert sweep.read_bytes("spec.yaml") == spec.read_bytes()
    assert not any(work.iterdir()), f"files in the working directory: {sorted(work.rglob('*'))}"
    objects = {k: v for k, v in seaweedfs_server.objects().items() if k.startswith(prefix)}
    for text in _all_text(objects):
        assert_no_secret(text)


# ------------------------------------------------------------------------- what the IAM policy must allow


@integration
def test_every_s3_request_is_allowed_by_the_shipped_iam_policy(
    moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Records every request the Storage API and a whole sweep (submit, status, results, checkpoint
    pull, resubmit) send to S3 (moto's recorder, all processes, Ray workers included), maps each to
    the IAM requests AWS authorises it with, and evaluates them against infra/aws/iam-policy.json
    rendered for this bucket and prefix (moto itself enforces no IAM). The generalised requests must
    be in tests/infra/s3_requests.json, which tests/infra checks offline (allowed, and nothing else
    allowed); DEEPSAD_RECORD_S3_REQUESTS=1 rewrites that file from this run."""
    import torch

    from tests.infra.iam import evaluate, load_policy
    from tests.infra.s3_requests import MotoRecording, generalise, iam_requests, load_record, write_record
    from tests.orchestration.sweeps_helpers import cli, small_spec, write_spec
    from tests.s3_servers import use_server

    use_server(monkeypatch, moto_server, tmp_path)
    # one path segment, as infra/aws/bucket.sh requires: Ray Tune's create_dir writes a directory
    # marker for every ancestor ("a/" of "a/b"), which a policy for "a/b/*" does not allow
    prefix = f"iam-{uuid.uuid4().hex[:8]}"
    storage = f"s3://{BUCKET}/{prefix}"
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "meta.json").write_text("{}")
    (local / "sub" / "w.bin").write_bytes(b"\1" * 100)
    spec = write_spec(tmp_path, small_spec("iam", train__epochs=2, pretrain__epochs=2))
    work = tmp_path / "work"
    work.mkdir()
    with MotoRecording(moto_server.endpoint) as recording:
        s = Storage.from_uri(storage)
        s.check_writable()
        s.write_bytes(b"x", "a", "f.txt")
        s.write_bytes(b"\0" * (12 << 20), "big.bin")  # past pyarrow's part size: a multipart upload
        assert s.read_bytes("a", "f.txt") == b"x" and s.exists("a") and not s.exists("nope")
        assert s.list("a") == ["f.txt"] and not s.is_complete("a")
        s.upload_dir(local, "d")
        s.upload_dir(local, "d")  # a re-upload hides the old manifest first
        s.download_dir(tmp_path / "down", "d")
        s.delete("a", "f.txt")
        s.delete("big.bin")
        s.delete("d")
        store = ResultStore(s.child("rs"))
        store.write_trial({"trial_key": "k1", "status": "finished", "seed": 0, "val_auroc": 0.5})
        assert store.trials().num_rows == 1
        cache = AECache(s.child("rs"))
        key = ae_cache_key("ae", "ef" * 32)
        cache.put(key, {"w": torch.zeros(3)}, {"ae_seconds": 1.0, "epochs": 1, "trial_key": "t"})
        assert cache.get(key) is not None and cache.entries()
        cache.delete(key)
        for args in (
            ["sweep", "submit", str(spec), "--storage", storage],
            ["sweep", "status", "iam", "--storage", storage],
            ["results", "show", "iam", "--storage", storage, "--format", "json"],
            ["checkpoint", "pull", "iam", "--to", str(tmp_path / "best"), "--storage", storage],
            ["sweep", "submit", str(spec), "--storage", storage],
        ):
            run = cli(args, cwd=work, timeout=400)
            assert run.returncode == 0, f"{args}: {run.stdout + run.stderr}"
    operations = recording.operations()
    assert {"HeadBucket", "PutObject", "GetObject", "HeadObject", "ListObjectsV2"} <= {
        o.name for o in operations
    }
    policy = load_policy(REPO / "infra" / "aws" / "iam-policy.json", BUCKET=BUCKET, PREFIX=prefix)
    denied = sorted(
        {f"{why}: {r.action} {r.resource} {dict(r.context)} -> {evaluate(policy, r)}"
         for op in operations for why, r in iam_requests(op) if evaluate(policy, r) != "allowed"}
    )  # fmt: skip
    assert not denied, "infra/aws/iam-policy.json denies what the product does:\n" + "\n".join(denied)
    seen = {(why, generalise(r, BUCKET, prefix)) for op in operations for why, r in iam_requests(op)}
    if os.environ.get("DEEPSAD_RECORD_S3_REQUESTS") == "1":
        write_record(seen)
    missing = seen - set(load_record())
    assert not missing, (
        "requests not in tests/infra/s3_requests.json (rerun this test with DEEPSAD_RECORD_S3_REQUESTS=1 "
        "and review the diff):\n" + "\n".join(sorted(f"{w}: {r.as_json()}" for w, r in missing))
    )
