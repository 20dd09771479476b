"""``infra/aws/*.sh`` against a fake ``aws`` CLI (``fake_aws.py``, an account in a JSON file): they
make what they promise, every placeholder gets filled, and a rerun with the same settings changes
nothing and succeeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
AWS = HERE.parents[1] / "infra" / "aws"
MUTATING = ("create-", "add-", "authorize-", "revoke-", "update-pod-identity", "delete-")
BUCKET_ENV = {"BUCKET": "my-deepsad-sweeps", "PREFIX": "sweeps", "REGION": "eu-west-1",
              "AMI_ID": "ami-0123456789abcdef0", "SECURITY_GROUP_ID": "sg-0123456789abcdef0"}  # fmt: skip
POD_ENV = {"EKS_CLUSTER": "my-eks", "NAMESPACE": "deepsad", "BUCKET": "my-deepsad-sweeps", "PREFIX": "sweeps",
           "REGION": "eu-west-1"}  # fmt: skip
SG_ENV = {"VPC_ID": "vpc-0123", "ADMIN_CIDR": "203.0.113.7/32", "REGION": "eu-west-1"}


class Account:
    """A fake AWS account: ``run(script, env)`` runs an infra script against it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        aws = bin_dir / "aws"
        aws.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_aws.py"}" "$@"\n')
        aws.chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"
        self.state_file, self.log_file = tmp / "state.json", tmp / "calls.log"

    def run(self, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        self.log_file.write_text("")
        full = {"PATH": self.path, "HOME": str(self.tmp), "FAKE_AWS_STATE": str(self.state_file),
                "FAKE_AWS_LOG": str(self.log_file), **env}  # fmt: skip
        return subprocess.run(
            ["bash", str(AWS / script)], env=full, capture_output=True, text=True, timeout=120
        )

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def mutations(self) -> list[list[str]]:
        calls = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        return [c for c in calls if c[1].startswith(MUTATING)]


def _twice(account: Account, script: str, env: dict[str, str]) -> dict[str, Any]:
    first = account.run(script, env)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = account.state
    assert account.mutations(), "the first run created nothing"
    second = account.run(script, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert account.mutations() == [], "a rerun with the same settings changed something"
    assert account.state == after_first
    return after_first


def _no_placeholder_left(doc: Any) -> None:
    text = json.dumps(doc)
    for placeholder in ("BUCKET", "PREFIX", "REGION", "ACCOUNT_ID", "REPLACE_ME", "EKS_CLUSTER", "NAMESPACE",
                        "OIDC_ISSUER"):  # fmt: skip
        assert placeholder not in text, f"{placeholder} left in {text[:300]}"


def test_bucket_script_is_idempotent_and_fills_every_placeholder(tmp_path: Path) -> None:
    state = _twice(Account(tmp_path), "bucket.sh", BUCKET_ENV)
    bucket = state["buckets"]["my-deepsad-sweeps"]
    rule = bucket["put-bucket-lifecycle-configuration"]["Rules"][0]
    assert rule["Status"] == "Enabled" and rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    assert bucket["put-bucket-versioning"] == "Status=Enabled"
    assert set(state["roles"]) == {"deepsad-ray-head", "deepsad-ray-worker"}
    assert state["profiles"] == {
        "deepsad-ray-head": ["deepsad-ray-head"],
        "deepsad-ray-worker": ["deepsad-ray-worker"],
    }
    head = state["roles"]["deepsad-ray-head"]["policies"]
    assert set(head) == {"iam-policy", "ecr-pull-policy", "head-autoscaler-policy"}
    assert set(state["roles"]["deepsad-ray-worker"]["policies"]) == {"iam-policy", "ecr-pull-policy"}
    _no_placeholder_left(state)
    autoscaler = json.dumps(head["head-autoscaler-policy"])
    assert "image/ami-0123456789abcdef0" in autoscaler and "security-group/sg-0123456789abcdef0" in autoscaler
    assert "arn:aws:s3:::my-deepsad-sweeps/sweeps/*" in json.dumps(head["iam-policy"])


def test_bucket_script_repairs_a_profile_left_without_its_role(tmp_path: Path) -> None:
    account = Account(tmp_path)
    account.state_file.write_text(json.dumps({"profiles": {"deepsad-ray-worker": []}}))
    assert account.run("bucket.sh", BUCKET_ENV).returncode == 0
    assert account.state["profiles"]["deepsad-ray-worker"] == ["deepsad-ray-worker"]


@pytest.mark.parametrize("prefix", ["a/b", "sweeps/", "", "a b"])
def test_bucket_script_refuses_a_prefix_that_is_not_one_segment(tmp_path: Path, prefix: str) -> None:
    run = Account(tmp_path).run("bucket.sh", {**BUCKET_ENV, "PREFIX": prefix})
    assert run.returncode != 0 and "PREFIX" in run.stderr


@pytest.mark.parametrize("mode", ["pod-identity", "irsa"])
def test_pod_role_script_is_idempotent(tmp_path: Path, mode: str) -> None:
    state = _twice(Account(tmp_path), "eks-pod-role.sh", {**POD_ENV, "MODE": mode})
    role = state["roles"]["deepsad-ray-pods"]
    _no_placeholder_left(role)
    assert set(role["policies"]) == {"iam-policy"}
    trust = role["trust"]["Statement"][0]
    if mode == "irsa":
        subs = trust["Condition"]["StringEquals"]["oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123456789:sub"]
        assert subs == [
            "system:serviceaccount:deepsad:deepsad-ray-head",
            "system:serviceaccount:deepsad:deepsad-ray-worker",
        ]
        assert state["associations"] == {}
    else:
        assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert (
            trust["Condition"]["ArnEquals"]["aws:SourceArn"]
            == "arn:aws:eks:eu-west-1:123456789012:cluster/my-eks"
        )
        assert set(state["associations"]) == {"deepsad/deepsad-ray-head", "deepsad/deepsad-ray-worker"}


def test_security_group_script_is_idempotent_and_follows_the_admin_cidr(tmp_path: Path) -> None:
    account = Account(tmp_path)
    state = _twice(account, "security-group.sh", SG_ENV)
    ((gid, group),) = state["groups"].items()
    assert sorted(r[0] for r in group["rules"]) == ["-1", "tcp"]
    assert [r[3] for r in group["rules"] if r[0] == "tcp"] == ["203.0.113.7/32"]
    moved = account.run("security-group.sh", {**SG_ENV, "ADMIN_CIDR": "198.51.100.9/32"})
    assert moved.returncode == 0, moved.stderr
    ssh = [r[3] for r in account.state["groups"][gid]["rules"] if r[0] == "tcp"]
    assert ssh == ["198.51.100.9/32"], "the old admin CIDR must lose SSH"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_security_group_script_refuses_the_whole_internet(tmp_path: Path, cidr: str) -> None:
    run = Account(tmp_path).run("security-group.sh", {**SG_ENV, "ADMIN_CIDR": cidr})
    assert run.returncode == 2 and not (tmp_path / "state.json").exists()
