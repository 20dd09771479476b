"""Remote submission without a cluster: addresses, the job's runtime environment, one-line errors.

(tests/orchestration/engine/test_cluster.py submits to a real multi-node cluster.)
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from deepsad.errors import ConfigError
from orchestration.engine import remote
from tests.orchestration.sweeps_helpers import cli, small_spec, write_spec


def test_the_address_comes_from_the_flag_or_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert remote.resolve_address(None) is None
    assert remote.resolve_address("http://head:8265/") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example.org")
    assert remote.resolve_address(None) == "https://ray.example.org"
    assert remote.resolve_address("http://other:8265") == "http://other:8265"  # the flag wins
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=10.0.0.5:6379: .*http://HEAD:8265"):
        remote.resolve_address(None)
    with pytest.raises(ConfigError, match=r"--address head:8265: give the Ray dashboard's URL"):
        remote.resolve_address("head:8265")


def test_pinned_requirements_are_the_installed_versions_without_ray_or_dev_tools() -> None:
    import numpy
    import torch

    pins = remote.pinned_requirements()
    assert f"numpy=={numpy.__version__}" in pins
    assert f"torch=={torch.__version__.split('+')[0]}" in pins  # no +cpu: a CUDA build satisfies it
    names = {p.split("==")[0].lower() for p in pins}
    assert "ray" not in names and "pytest" not in names and "moto" not in names
    assert {"optuna", "pyarrow", "safetensors", "pydantic"} <= names


def test_the_runtime_env_carries_settings_but_never_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-value")
    monkeypatch.setenv("DEEPSAD_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("DEEPSAD_GPU_MEMORY_GB", "141")  # bundle_size: auto, planned on a CPU-only head
    env = remote.runtime_env(tmp_path, deps="pinned", job_id="deepsad-x-1")
    text = repr(env)
    for secret in ("AKIAEXAMPLEKEY123", "very-secret-value", "session-token-value", "ray-token-value"):
        assert secret not in text
    assert env["env_vars"]["DEEPSAD_S3_ENDPOINT"] == "http://127.0.0.1:9000"
    assert env["env_vars"]["DEEPSAD_GPU_MEMORY_GB"] == "141"
    assert env["env_vars"]["RAY_JOB_STOP_SIGNAL"] == "SIGINT"  # `sweep stop` = a graceful Ctrl-C
    assert env["env_vars"]["DEEPSAD_JOB_ID"] == "deepsad-x-1"
    assert env["working_dir"] == str(tmp_path) and env["pip"]["packages"] == remote.pinned_requirements()
    assert "pip" not in remote.runtime_env(tmp_path, deps="image", job_id="j")
    with pytest.raises(ConfigError, match="--deps conda: must be pinned"):
        remote.runtime_env(tmp_path, deps="conda", job_id="j")


def test_the_working_dir_holds_the_code_and_the_sweep_file(tmp_path: Path) -> None:
    work = remote.stage_working_dir("name: x\n", tmp_path / "w")
    assert (work / "deepsad" / "training.py").is_file() and (work / "orchestration" / "cli" / "app.py").is_file()
    assert (work / remote.SPEC_IN_JOB).read_text() == "name: x\n"
    assert not list(work.rglob("__pycache__"))
    assert not (work / "tests").exists() and not (work / ".venv").exists()


def test_the_entrypoint_is_quoted_and_runs_the_cli_module() -> None:
    cmd = remote.entrypoint(["sweep", "submit", "submission/spec.yaml", "--storage", "s3://b/p q"],
                            python="/opt/py env/bin/python")
    assert shlex.split(cmd) == ["/opt/py env/bin/python", "-m", "orchestration.cli.app", "sweep", "submit",
                                "submission/spec.yaml", "--storage", "s3://b/p q"]


def test_a_cluster_sweep_needs_s3_storage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--storage: .*s3://bucket/prefix"):
        remote.check_cluster_storage(None, None)
    with pytest.raises(ConfigError, match=r"--storage: /data/runs is a local path, which lives on one machine"):
        remote.check_cluster_storage("/data/runs", None)


def test_an_unreachable_cluster_is_one_clear_error(tmp_path: Path) -> None:
    # in a subprocess: Ray's client caches the auth token it loads once per process, which would
    # leak into the token-authenticated cluster of tests/orchestration/engine/test_cluster.py
    result = cli(["sweep", "status", "x", "--address", "http://127.0.0.1:1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert "error: http://127.0.0.1:1: cannot reach the Ray dashboard" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "submit", "SPEC", "--address", "head:8265"], "error: --address head:8265: give the Ray"),
        (["sweep", "submit", "SPEC", "--address", "http://127.0.0.1:1", "--storage", "runs"],
         "error: --storage: runs is a local path"),
        (["sweep", "logs", "x"], "error: sweep logs: needs --address"),
        (["sweep", "stop", "x"], "error: sweep stop: needs --address"),
    ],
)
def test_cli_errors_are_one_line_before_anything_starts(args: list[str], message: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, small_spec("remote"))
    result = cli([str(spec) if a == "SPEC" else a for a in args], cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


class _StartingCluster:
    """A job API whose head agent comes up after ``refusals`` submissions (what a just-started cluster
    answers; seen in CI's cluster test under load). No real cluster can be made to answer this on cue."""

    def __init__(self, refusals: int, error: str = remote.NO_AGENT) -> None:
        self.refusals, self.error, self.submitted = refusals, error, 0

    def list_jobs(self) -> list[object]:
        return []

    def submit_job(self, **_: object) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError(f"Request failed with status code 500: {self.error}, please try again later.")
        self.submitted += 1


@pytest.mark.parametrize(("refusals", "error", "ok"), [(2, remote.NO_AGENT, True), (1, "bad entrypoint", False)])
def test_a_submit_waits_for_a_starting_cluster_s_job_agent(
    refusals: int, error: str, ok: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepsad.errors import DeepSADError

    fake = _StartingCluster(refusals, error)
    monkeypatch.setattr(remote, "connect", lambda _address: fake)
    monkeypatch.setattr(remote, "AGENT_POLL_S", 0.0)
    args: dict[str, Any] = dict(address="http://127.0.0.1:1", name="s", storage="s3://b/p", spec_text="name: s\n",
                driver_args=["sweep", "submit", "spec.yaml"], action="submit", deps="image", python="python")
    if ok:
        assert remote.submit_job(**args).startswith("deepsad-s-") and fake.submitted == 1
    else:  # any other refusal is one error at once
        with pytest.raises(DeepSADError, match=r"the job was refused: .*bad entrypoint"):
            remote.submit_job(**args)
        assert fake.submitted == 0 and fake.refusals == 0
