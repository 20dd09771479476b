"""The IAM policies under ``infra/aws`` allow what the product does and nothing else.

S3: ``s3_requests.json`` holds the requests a sweep and the Storage API really send (recorded by
``tests/orchestration/store/test_s3.py`` against moto); ``iam-policy.json`` must allow each of them and deny
every other S3 action, resource and ``s3:prefix`` this file probes. The head's EC2 rights: the
requests Ray's AWS node provider makes (its calls are read from Ray's source, so a Ray upgrade that
calls something new fails here) for the worker type of ``cluster.yaml``; the policy allows those and
denies tagging or terminating anything that is not this cluster's, and every other EC2/IAM action.
The policies of db87093 (before issue 14) are kept in ``fixtures/`` to show the checks catch them.

``parliament`` lints every policy; each finding it reports must be listed in :data:`EXPLAINED`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.iam import (
    ALLOW,
    Request,
    UnsupportedPolicy,
    allowed,
    evaluate,
    import_parliament,
    load_policy,
    matching_allows,
    service_actions,
)
from tests.infra.s3_requests import BUCKET, PREFIX, UNDER, load_record

HERE = Path(__file__).resolve().parent
AWS = HERE.parents[1] / "infra" / "aws"
S3_POLICY = AWS / "iam-policy.json"
HEAD_POLICY = AWS / "head-autoscaler-policy.json"
OLD_S3_POLICY = HERE / "fixtures" / "iam-policy-db87093.json"
OLD_HEAD_POLICY = HERE / "fixtures" / "head-autoscaler-policy-db87093.json"

# what bucket.sh substitutes, with sample values
REGION, ACCOUNT = "us-east-1", "123456789012"
RENDER = {"REGION": REGION, "ACCOUNT_ID": ACCOUNT}


# ------------------------------------------------------------------------------------- the evaluator


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def test_the_evaluator_follows_aws_semantics() -> None:
    allow_prefix = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
                    "Condition": {"StringLike": {"s3:prefix": ["p/*"]}}}  # fmt: skip
    p = _policy(allow_prefix)
    assert evaluate(p, Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "p/x"})) == ALLOW
    # a missing key fails a positive operator: HeadBucket carries no s3:prefix
    assert evaluate(p, Request("s3:ListBucket", "arn:aws:s3:::b")) == "implicitDeny"
    assert (
        evaluate(p, Request("s3:listbucket", "arn:aws:s3:::b", {"s3:prefix": "p/"})) == ALLOW
    )  # action case
    assert evaluate(p, Request("s3:ListBucket", "arn:aws:s3:::B", {"s3:prefix": "p/"})) != ALLOW  # ARN case
    deny = {
        "Effect": "Deny",
        "Action": "s3:*",
        "Resource": "*",
        "Condition": {"StringNotLike": {"s3:prefix": "p/*"}},
    }
    p = _policy(allow_prefix | {"Condition": {}}, deny)
    # ... and satisfies a negated one; an explicit deny wins over any allow
    assert evaluate(p, Request("s3:ListBucket", "arn:aws:s3:::b")) == "explicitDeny"
    assert evaluate(p, Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "p/a"})) == ALLOW
    ifexists = _policy(allow_prefix | {"Condition": {"StringLikeIfExists": {"s3:prefix": "p/*"}}})
    assert allowed(ifexists, Request("s3:ListBucket", "arn:aws:s3:::b"))
    null = _policy(allow_prefix | {"Condition": {"Null": {"s3:prefix": "true"}}})
    assert allowed(null, Request("s3:ListBucket", "arn:aws:s3:::b"))
    assert not allowed(null, Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ""}))
    tags = _policy({"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
                    "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["ray-*"]}}})  # fmt: skip
    assert allowed(tags, Request("ec2:CreateTags", "x", {"aws:TagKeys": ("ray-a", "ray-b")}))
    assert not allowed(tags, Request("ec2:CreateTags", "x", {"aws:TagKeys": ("ray-a", "owner")}))
    assert allowed(tags, Request("ec2:CreateTags", "x"))  # ForAllValues on a missing key: true, as on AWS
    not_action = _policy({"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "arn:aws:s3:::b/*"})
    assert allowed(not_action, Request("s3:GetObject", "arn:aws:s3:::b/k"))
    assert not allowed(not_action, Request("s3:DeleteObject", "arn:aws:s3:::b/k"))
    with pytest.raises(UnsupportedPolicy):
        evaluate(_policy(allow_prefix | {"Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020"}}}),
                 Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "p/"}))  # fmt: skip


# ----------------------------------------------------------------------------------------------- S3

S3_RESOURCES = [
    f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/{PREFIX}", f"arn:aws:s3:::{BUCKET}/{UNDER}",
    f"arn:aws:s3:::{BUCKET}/{PREFIX}other/k", f"arn:aws:s3:::{BUCKET}/other/k", "arn:aws:s3:::other-bucket",
    f"arn:aws:s3:::other-bucket/{UNDER}", "*",
]  # fmt: skip
S3_CONTEXTS: list[dict[str, str]] = [
    {}, {"s3:prefix": UNDER}, {"s3:prefix": PREFIX}, {"s3:prefix": ""}, {"s3:prefix": f"{PREFIX}other/"},
    {"s3:prefix": "other/"},
]  # fmt: skip


def _s3_probes() -> list[Request]:
    """Every S3 action on every resource above; the list actions (the only ones with ``s3:prefix`` in
    their request context) also with each ``s3:prefix``."""
    return [
        Request(a, r, c)
        for a in service_actions("s3")
        for r in S3_RESOURCES
        for c in (S3_CONTEXTS if a.startswith("s3:ListBucket") else [{}])
    ]


def _s3_problems(policy: dict[str, Any]) -> list[str]:
    """Every recorded request the policy denies, and every probe it allows that nothing recorded needs."""
    recorded = load_record()
    needed = {r for _, r in recorded}
    problems = [
        f"denies {why}: {r.as_json()} ({evaluate(policy, r)})"
        for why, r in recorded
        if not allowed(policy, r)
    ]
    problems += [
        f"allows what nothing needs: {p.as_json()}"
        for p in _s3_probes()
        if allowed(policy, p) and p not in needed
    ]
    return problems


def test_the_record_covers_the_storage_layer() -> None:
    ops = {why for why, _ in load_record()}
    assert {"HeadBucket", "ListObjectsV2", "HeadObject", "GetObject", "PutObject", "DeleteObject"} <= ops
    assert {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= ops


def test_the_s3_policy_allows_every_recorded_request_and_nothing_else() -> None:
    policy = load_policy(S3_POLICY)
    assert _s3_problems(policy) == []
    # every Allow statement is used by some recorded request: no dead grants
    used = {sid for _, r in load_record() for sid in matching_allows(policy, r)}
    assert used == {s["Sid"] for s in policy["Statement"] if s["Effect"] == "Allow"}


def test_the_s3_policy_of_db87093_fails_the_check() -> None:
    """Issue 14, finding 1: HeadBucket (and the 404 of a missing key) needs s3:ListBucket without
    s3:prefix, which the old policy allowed only under an s3:prefix condition."""
    problems = _s3_problems(load_policy(OLD_S3_POLICY))
    assert any(p.startswith("denies HeadBucket: ") for p in problems), problems
    assert any("(404, not 403, for a missing key)" in p for p in problems)


def test_the_s3_policy_keeps_other_prefixes_and_buckets_out() -> None:
    policy = load_policy(S3_POLICY)
    for probe in (
        Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "other/"}),
        Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": ""}),
        Request("s3:GetObject", f"arn:aws:s3:::{BUCKET}/other/k"),
        Request("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}other/k"),
        Request("s3:DeleteObject", "arn:aws:s3:::other-bucket/x"),
        Request("s3:PutBucketPolicy", f"arn:aws:s3:::{BUCKET}"),
        Request("s3:DeleteObjectVersion", f"arn:aws:s3:::{BUCKET}/{UNDER}"),  # old versions stay recoverable
    ):
        assert not allowed(policy, probe), probe


# ------------------------------------------------------------------------------- the head's EC2 rights

CLUSTER = yaml.safe_load((AWS / "cluster.yaml").read_text())
WORKER = CLUSTER["available_node_types"]["gpu_worker"]["node_config"]
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/"


def _render(text: str) -> str:
    for name, value in RENDER.items():
        text = text.replace(name, value)
    return text


def _ours(**extra: Any) -> dict[str, Any]:
    return {"ec2:ResourceTag/ray-cluster-name": CLUSTER["cluster_name"], **extra}


def _launch(node: dict[str, Any], *, tags: dict[str, str] | None = None) -> list[Request]:
    """The IAM requests of one RunInstances as Ray's node provider sends it (``_create_node``: the
    node config plus TagSpecifications for the instance, ray-cluster-name first) — per the EC2
    docs, one request per resource the launch touches, plus CreateTags for tag-on-create and PassRole
    for the instance profile's role."""
    tags = tags if tags is not None else {
        "ray-cluster-name": CLUSTER["cluster_name"], "ray-node-kind": "worker", "ray-node-status": "uninitialized",
        "ray-user-node-type": "gpu_worker", "ray-launch-config": "0123abcd", "Name": "ray-deepsad-worker",
    }  # fmt: skip
    tag_ctx = {f"aws:RequestTag/{k}": v for k, v in tags.items()} | {"aws:TagKeys": tuple(tags)}
    profile = _render(node["IamInstanceProfile"]["Arn"])
    instance = {"ec2:InstanceType": node["InstanceType"], "ec2:InstanceProfile": profile,
                "ec2:MetadataHttpTokens": node["MetadataOptions"]["HttpTokens"], **tag_ctx}  # fmt: skip
    encrypted = str(node["BlockDeviceMappings"][0]["Ebs"]["Encrypted"]).lower()
    return [
        Request("ec2:RunInstances", INSTANCE + "*", instance),
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*", {"ec2:Encrypted": encrypted}),
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/{node['ImageId']}"),
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/*"),
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-0123456789abcdef0"),
        *(
            Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/{sg}")
            for sg in node["SecurityGroupIds"]
        ),
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:key-pair/ray-autoscaler_1_{REGION}"),
        Request("ec2:CreateTags", INSTANCE + "*", {"ec2:CreateAction": "RunInstances", **tag_ctx}),
        Request(
            "iam:PassRole",
            f"arn:aws:iam::{ACCOUNT}:role/" + profile.rsplit("/", 1)[1],
            {"iam:PassedToService": "ec2.amazonaws.com"},
        ),
    ]


def _retag(instance_ctx: dict[str, Any], key: str, value: str) -> Request:
    """``set_node_tags``: Ray's node provider updates status tags of running nodes with CreateTags."""
    return Request("ec2:CreateTags", INSTANCE + "i-0aaaaaaaaaaaaaaaa",
                   {**instance_ctx, f"aws:RequestTag/{key}": value, "aws:TagKeys": (key,)})  # fmt: skip


def _autoscaler_requests() -> list[Request]:
    return [
        Request("ec2:DescribeInstances", "*"),  # non_terminated_nodes: ec2.instances.filter
        Request("ec2:DescribeInstanceTypes", "*"),  # the worker's CPU/GPU/memory
        *_launch(WORKER),
        _retag(_ours(), "ray-node-status", "up-to-date"),
        _retag(_ours(), "Name", "ray-deepsad-worker"),
        Request("ec2:TerminateInstances", INSTANCE + "i-0aaaaaaaaaaaaaaaa", _ours()),
    ]


#: EC2 calls of Ray's AWS node provider -> the IAM action; those the cluster config never reaches
#: are listed with why, and tied to the config below
RAY_CALLS = {
    "create_instances": "ec2:RunInstances", "create_tags": "ec2:CreateTags",
    "instances.filter": "ec2:DescribeInstances", "describe_instance_types": "ec2:DescribeInstanceTypes",
    "terminate_instances": "ec2:TerminateInstances", "terminate": "ec2:TerminateInstances",
}  # fmt: skip
NOT_REACHED = {
    "stop_instances": "cache_stopped_nodes: false — idle workers are terminated, never stopped",
    "stop": "cache_stopped_nodes: false",
    "start_instances": "cache_stopped_nodes: false — no stopped node is ever restarted",
    "describe_images": "only for the CloudWatch agent, which cluster.yaml does not configure",
}


def test_the_modelled_calls_are_those_of_rays_node_provider() -> None:
    # Read the file without importing it: importing ray in the test process fixes Ray's auth mode for the
    # process ("disabled"), and the token-authenticated cluster of tests/orchestration/engine/test_cluster.py,
    # later in the same run, then cannot start (seen in CI).
    spec = importlib.util.find_spec("ray")  # a top-level package: found, not imported
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    source = (Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "_private" / "aws"
              / "node_provider.py").read_text()
    # client methods, called or taken as values (terminate_nodes picks terminate_ vs stop_instances)
    calls = set(re.findall(r"\.(create_tags|create_instances|terminate_instances|stop_instances|start_instances|"
                           r"describe_\w+)\b", source))  # fmt: skip
    calls |= set(re.findall(r"\.(terminate|stop)\(\)", source))  # ec2.Instance methods
    calls |= {"instances.filter"} if "instances.filter(" in source else set()
    assert calls == set(RAY_CALLS) | set(NOT_REACHED), "Ray's AWS node provider calls something new"
    assert CLUSTER["provider"]["cache_stopped_nodes"] is False
    assert "cloudwatch" not in CLUSTER["provider"]
    assert {r.action for r in _autoscaler_requests()} == set(RAY_CALLS.values()) | {"iam:PassRole"}


def _head(path: Path = HEAD_POLICY) -> dict[str, Any]:
    return load_policy(path, **RENDER)


def test_the_head_policy_allows_what_the_autoscaler_does() -> None:
    policy = _head()
    denied = [r.as_json() for r in _autoscaler_requests() if not allowed(policy, r)]
    assert denied == []
    used = {sid for r in _autoscaler_requests() for sid in matching_allows(policy, r)}
    assert used == {s["Sid"] for s in policy["Statement"]}, "an Allow statement nothing uses"


def _attacks() -> dict[str, Request]:
    other = {"ec2:ResourceTag/ray-cluster-name": "someone-else"}
    launch = {
        r.resource.rsplit(":", 1)[-1].split("/")[0]: r
        for r in _launch(WORKER)
        if r.action == "ec2:RunInstances"
    }
    inst = launch["instance"]
    return {
        "tag an instance that is not the cluster's": _retag({}, "ray-cluster-name", "deepsad"),
        "re-tag another cluster's instance": _retag(other, "ray-cluster-name", "deepsad"),
        "move one of ours to another cluster name": _retag(_ours(), "ray-cluster-name", "x"),
        "tag ours with a non-Ray key": _retag(_ours(), "owner", "x"),
        "terminate an untagged instance": Request("ec2:TerminateInstances", INSTANCE + "i-0bbbbbbbbbbbbbbbb"),
        "terminate another cluster's instance": Request("ec2:TerminateInstances", INSTANCE + "i-0b", other),
        "stop one of ours": Request("ec2:StopInstances", INSTANCE + "i-0a", _ours()),
        "start one of ours": Request("ec2:StartInstances", INSTANCE + "i-0a", _ours()),
        "launch without the cluster tag": Request(inst.action, inst.resource, {
            k: v for k, v in inst.context.items() if k != "aws:RequestTag/ray-cluster-name"}),
        "launch another instance type": Request(inst.action, inst.resource, {**inst.context, "ec2:InstanceType": "p5.48xlarge"}),
        "launch with the head's profile": Request(inst.action, inst.resource, {
            **inst.context, "ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/deepsad-ray-head"}),
        "launch without IMDSv2": Request(inst.action, inst.resource, {**inst.context, "ec2:MetadataHttpTokens": "optional"}),
        "launch with an unencrypted volume": Request("ec2:RunInstances", launch["volume"].resource, {"ec2:Encrypted": "false"}),
        "launch another image": Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0evil"),
        "launch into another security group": Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0other"),
        "pass the head's role": Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/deepsad-ray-head",
                                        {"iam:PassedToService": "ec2.amazonaws.com"}),
        "pass the worker role to Lambda": Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/deepsad-ray-worker",
                                                  {"iam:PassedToService": "lambda.amazonaws.com"}),
    }  # fmt: skip


@pytest.mark.parametrize("attack", list(_attacks()))
def test_the_head_policy_refuses(attack: str) -> None:
    assert not allowed(_head(), _attacks()[attack])


def test_the_head_policy_of_db87093_let_the_head_tag_then_terminate_any_instance() -> None:
    """Issue 14, finding 3: CreateTags on instance/* without condition, then terminate by that tag."""
    old, attacks = _head(OLD_HEAD_POLICY), _attacks()
    assert allowed(old, attacks["tag an instance that is not the cluster's"])
    assert allowed(old, Request("ec2:TerminateInstances", INSTANCE + "i-0b", _ours()))  # after re-tagging
    assert allowed(old, attacks["stop one of ours"]) and allowed(
        old, attacks["pass the worker role to Lambda"]
    )


def test_the_head_policy_allows_no_other_ec2_or_iam_action() -> None:
    policy = _head()
    wanted = {r.action for r in _autoscaler_requests()}
    contexts = [{}, _ours(), {"ec2:CreateAction": "RunInstances"}]
    for action in service_actions("ec2") + service_actions("iam"):
        if action in wanted:
            continue
        for resource in ("*", INSTANCE + "i-0a", f"arn:aws:iam::{ACCOUNT}:role/deepsad-ray-worker"):
            for ctx in contexts:
                assert not allowed(policy, Request(action, resource, ctx)), (action, resource, ctx)


def test_the_head_policy_and_cluster_yaml_agree() -> None:
    text = HEAD_POLICY.read_text()
    assert f'"ec2:InstanceType": "{WORKER["InstanceType"]}"' in text, (
        "worker InstanceType differs from cluster.yaml"
    )
    assert f"image/{WORKER['ImageId']}" in text and f"security-group/{WORKER['SecurityGroupIds'][0]}" in text
    assert f'"aws:RequestTag/ray-cluster-name": "{CLUSTER["cluster_name"]}"' in text


# ----------------------------------------------------------------------------------------- parliament

#: every parliament finding on the shipped policies, and why it stays (a finding not listed here, or
#: a listing parliament no longer reports, fails the test)
EXPLAINED = {
    ("head-autoscaler-policy.json", "PRIVILEGE_ESCALATION"):
        "iam:PassRole: the autoscaler must hand workers their instance profile; limited to the one worker "
        "role, and only to ec2.amazonaws.com",
    ("head-autoscaler-policy.json", "PERMISSIONS_MANAGEMENT_ACTIONS"): "the same iam:PassRole",
    ("head-autoscaler-policy.json", "RESOURCE_MISMATCH"):
        "RunInstances is split into one statement per resource type so each gets its own conditions "
        "(instance: tag/type/profile/IMDSv2, volume: encrypted, image: the cluster's AMI); parliament "
        "checks each statement alone and misses the others",
    ("ecr-pull-policy.json", "CREDENTIALS_EXPOSURE"):
        "ecr:GetAuthorizationToken is how Docker logs in to ECR (no resource-level permissions); the "
        "token can do only what the role may: pull the one project repository",
}  # fmt: skip

SAMPLE = {"BUCKET": "my-deepsad-sweeps", "PREFIX": "sweeps", "REGION": REGION, "ACCOUNT_ID": ACCOUNT,
          "ami-REPLACE_ME": "ami-0123456789abcdef0", "sg-REPLACE_ME": "sg-0123456789abcdef0"}  # fmt: skip


def test_parliament_finds_nothing_unexplained() -> None:
    parliament = import_parliament()
    found = set()
    # trust-*.json are role trust policies, outside parliament's scope: it reads every policy as an
    # identity policy and calls one without a Resource (which trust policies never have) MALFORMED
    for path in sorted(p for p in AWS.glob("*.json") if not p.name.startswith("trust-")):
        policy = parliament.analyze_policy_string(
            load_policy_text(path), include_community_auditors=True, private_auditors_custom_path=None
        )
        found |= {(path.name, f.issue) for f in policy.findings}
    assert found == set(EXPLAINED)


def load_policy_text(path: Path) -> str:
    text = path.read_text()
    for name, value in SAMPLE.items():
        text = text.replace(name, value)
    return text
