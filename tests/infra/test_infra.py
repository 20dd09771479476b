"""Offline checks of the deployment files under ``infra/`` (never imported by the packages).

They parse, carry the fields the Ray launcher and KubeRay need, agree with ``pyproject.toml`` on the
project and Ray versions, keep Ray's ports off the internet, keep the IAM policy least-privilege and
hold no secret.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
CLUSTER = INFRA / "aws" / "cluster.yaml"
RAYCLUSTER = INFRA / "k8s" / "raycluster.yaml"
RAYJOB = INFRA / "k8s" / "rayjob.yaml"
IAM_POLICY = INFRA / "aws" / "iam-policy.json"
BUCKET_POLICY = INFRA / "aws" / "bucket-policy.json"

# Ray's well-known ports: GCS, dashboard, client server, object manager, node manager,
# dashboard agent, metrics export, runtime-env agent
RAY_PORTS = {6379, 8265, 10001, 8076, 8077, 52365, 8080, 8090}

YAML_FILES = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
JSON_FILES = sorted(INFRA.rglob("*.json"))
TEXT_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file())
# what configures something (README prose names ports and CIDRs while explaining them)
CONFIG_FILES = [p for p in TEXT_FILES if p.suffix != ".md"]


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _project_version() -> str:
    return str(_pyproject()["project"]["version"])


def _ray_minor() -> str:
    """``"2.60"`` from the pinned ``ray[...]>=2.60,<2.61`` dependency."""
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.match(r"ray(\[[^\]]*\])?\s*>=\s*(\d+)\.(\d+)", dep)
        if m:
            return f"{m.group(2)}.{m.group(3)}"
    raise AssertionError("pyproject.toml pins no ray version")


def _load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    doc = docs[0]
    assert isinstance(doc, dict), f"{path}: top level is not a mapping"
    return doc


def _walk(node: Any) -> Iterator[Any]:
    """Every mapping and list value in a parsed YAML/JSON tree, depth first."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _images(doc: Any) -> list[str]:
    return [n["image"] for n in _walk(doc) if isinstance(n, dict) and isinstance(n.get("image"), str)]


def _pods(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(headGroupSpec, workerGroupSpecs) of a RayCluster spec."""
    return doc["headGroupSpec"], doc["workerGroupSpecs"]


def _gpu_limit(group: dict[str, Any]) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


# --- parsing ---------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    for path in (DOCKERFILE, CLUSTER, RAYCLUSTER, RAYJOB, IAM_POLICY, BUCKET_POLICY, INFRA / "README.md"):
        assert path.is_file(), path
    assert (INFRA / "aws" / "bucket.sh").is_file() or (INFRA / "aws" / "bucket.tf").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert any(d is not None for d in docs), path


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# --- required fields -------------------------------------------------------------------------


def test_cluster_yaml_has_a_gpu_worker_group_and_the_image() -> None:
    conf = _load(CLUSTER)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "docker"):
        assert key in conf, f"cluster.yaml: missing {key}"
    assert conf["provider"]["type"] == "aws"
    assert conf["docker"]["image"]
    types = conf["available_node_types"]
    assert conf["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != conf["head_node_type"]}
    gpu = [v for v in workers.values() if v["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu, "cluster.yaml: no GPU worker group"
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in gpu)
    # every node has a profile and our own security group (Ray's default one opens SSH to the world)
    for name, node in types.items():
        cfg = node["node_config"]
        assert "IamInstanceProfile" in cfg, f"cluster.yaml: {name} has no instance profile"
        assert cfg.get("SecurityGroupIds"), f"cluster.yaml: {name} uses Ray's default security group"


def test_cluster_yaml_turns_on_token_auth() -> None:
    conf = _load(CLUSTER)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c for c in conf[key]), key


def test_raycluster_has_a_head_and_a_gpu_worker_group() -> None:
    doc = _load(RAYCLUSTER)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    head, workers = _pods(doc["spec"])
    assert head["template"]["spec"]["containers"]
    assert any(_gpu_limit(g) >= 1 for g in workers), "raycluster.yaml: no worker group with a GPU limit"


def test_rayjob_runs_the_sweep_against_s3() -> None:
    doc = _load(RAYJOB)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    entry = doc["spec"]["entrypoint"]
    assert "deepsad sweep submit" in entry
    assert "sweeps/mnist_search.yaml" in entry
    assert "--storage s3://" in entry
    head, workers = _pods(doc["spec"]["rayClusterSpec"])
    assert head and any(_gpu_limit(g) >= 1 for g in workers)


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_credentials_come_from_a_secret(path: Path) -> None:
    doc = _load(path)
    envs = [e for n in _walk(doc) if isinstance(n, dict) for e in n.get("env", []) if isinstance(e, dict)]
    creds = [e for e in envs if e["name"] in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}]
    assert creds, f"{path.name}: no S3 credentials wired"
    for e in creds:
        assert "value" not in e, f"{path.name}: {e['name']} is inline"
        assert "secretKeyRef" in e["valueFrom"], f"{path.name}: {e['name']} not from a Secret"


# --- network exposure ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_kubernetes_services_stay_inside_the_cluster(path: Path) -> None:
    doc = _load(path)
    types = [n["serviceType"] for n in _walk(doc) if isinstance(n, dict) and "serviceType" in n]
    assert types and all(t == "ClusterIP" for t in types), f"{path.name}: serviceType {types}"
    code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any("LoadBalancer" in line or "NodePort" in line for line in code), path.name


def _rules(conf: dict[str, Any]) -> list[dict[str, Any]]:
    perms = conf.get("provider", {}).get("security_group", {}).get("IpPermissions", [])
    return [p for p in perms if isinstance(p, dict)]


def _opens(rule: dict[str, Any], port: int) -> bool:
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    return rule.get("IpProtocol") == "-1" or lo == -1 or lo <= port <= hi


def test_no_security_group_rule_opens_ray_ports_to_the_world() -> None:
    for rule in _rules(_load(CLUSTER)):
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        assert not (world and any(_opens(rule, p) for p in RAY_PORTS)), rule


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_world_open_cidr_near_a_ray_port(path: Path) -> None:
    lines = path.read_text().splitlines()
    port_re = re.compile(r"\b(" + "|".join(str(p) for p in sorted(RAY_PORTS)) + r")\b")
    for i, line in enumerate(lines):
        if "0.0.0.0/0" not in line or line.lstrip().startswith("#"):
            continue
        window = "\n".join(lines[max(0, i - 5) : i + 6])
        assert not port_re.search(window), f"{path.name}:{i + 1}: 0.0.0.0/0 next to a Ray port"


def test_the_security_group_script_opens_only_ssh_to_the_admin() -> None:
    script = (INFRA / "aws" / "security-group.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    ports = re.findall(r"FromPort=(-?\d+),ToPort=(-?\d+),IpRanges", code)
    assert ports == [("22", "22")], ports
    assert "CidrIp=${ADMIN_CIDR}" in code
    assert "CidrIp=0.0.0.0/0" not in code


# --- IAM and the bucket ----------------------------------------------------------------------


def _statements(path: Path) -> list[dict[str, Any]]:
    stmts = json.loads(path.read_text())["Statement"]
    return stmts if isinstance(stmts, list) else [stmts]


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def test_iam_policy_is_least_privilege() -> None:
    """Structure only; what it allows and denies, request by request: test_iam_policies.py."""
    stmts = _statements(IAM_POLICY)
    for s in stmts:
        for action in _as_list(s["Action"]):
            assert "*" not in action, f"wildcard action {action}"
        for res in _as_list(s["Resource"]):
            assert res != "*" and res.startswith("arn:aws:s3:::BUCKET"), res
        assert "NotAction" not in s and "NotResource" not in s
    objects = [s for s in stmts if "s3:GetObject" in _as_list(s["Action"])]
    assert objects and all(_as_list(s["Resource"]) == ["arn:aws:s3:::BUCKET/PREFIX/*"] for s in objects)
    for needed in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert any(needed in _as_list(s["Action"]) for s in objects), needed
    # listing: allowed on the bucket (HeadBucket, 404s), denied for any s3:prefix outside PREFIX/
    deny = [s for s in stmts if s["Effect"] == "Deny"]
    assert [_as_list(s["Action"]) for s in deny] == [["s3:ListBucket"]]
    assert _as_list(deny[0]["Condition"]["StringNotLike"]["s3:prefix"]) == ["PREFIX/*"]


def test_bucket_policy_denies_insecure_transport() -> None:
    stmts = _statements(BUCKET_POLICY)
    assert any(
        s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for s in stmts
    )


def test_bucket_script_secures_the_bucket() -> None:
    script = (INFRA / "aws" / "bucket.sh").read_text()
    for call in (
        "put-public-access-block",
        "put-bucket-versioning",
        "put-bucket-encryption",
        "put-bucket-policy",
    ):
        assert call in script, call
    assert "BlockPublicPolicy=true" in script and "Status=Enabled" in script
    assert "iam-policy.json" in script


# --- versions --------------------------------------------------------------------------------


def test_dockerfile_label_matches_the_project_version() -> None:
    text = DOCKERFILE.read_text()
    m = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', text)
    assert m, "Dockerfile: no version LABEL"
    assert m.group(1) == _project_version()


def test_dockerfile_ray_matches_the_pin_and_installs_the_project() -> None:
    text = DOCKERFILE.read_text()
    m = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+)\.\d+-", text, re.MULTILINE)
    assert m, "Dockerfile: base is not a rayproject/ray image"
    assert m.group(1) == _ray_minor()
    assert re.search(r"torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cu\d+", text)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}@", text, re.MULTILINE)
    assert re.search(r"^USER\s+(?!root\b)\S+", text, re.MULTILINE), "Dockerfile: no non-root USER"
    assert re.search(r"^RUN pip install --no-cache-dir -c constraints\.txt \.", text, re.MULTILINE)


@pytest.mark.parametrize("path", [CLUSTER, RAYCLUSTER, RAYJOB], ids=["cluster", "raycluster", "rayjob"])
def test_manifest_image_tags_match_the_project_version(path: Path) -> None:
    images = _images(_load(path))
    assert images, f"{path.name}: no image"
    for image in images:
        assert image.rsplit(":", 1)[-1] == _project_version(), f"{path.name}: {image}"
        assert "deepsad-sweeps" in image


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_kuberay_ray_version_matches_the_pin(path: Path) -> None:
    doc = _load(path)
    versions = [n["rayVersion"] for n in _walk(doc) if isinstance(n, dict) and "rayVersion" in n]
    assert versions and all(str(v).startswith(_ray_minor() + ".") for v in versions), versions


# --- secrets ---------------------------------------------------------------------------------

_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_INLINE_SECRET = re.compile(
    r"(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|RAY_AUTH_TOKEN)\s*[:=]\s*['\"]?(?![\s'\"$<]|\{\{)[^\s'\"]{8,}"
)


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_literal_secrets(path: Path) -> None:
    text = path.read_text()
    assert not _KEY_ID.search(text), f"{path.name}: an AWS access key id"
    assert not _INLINE_SECRET.search(text), f"{path.name}: an inline secret"
    assert "BEGIN RSA PRIVATE KEY" not in text and "BEGIN OPENSSH PRIVATE KEY" not in text


def test_the_secret_patterns_catch_what_they_should() -> None:
    # the scanners above must not be vacuous
    assert _KEY_ID.search("key: AKIAABCDEFGHIJKLMNOP")
    assert _INLINE_SECRET.search("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    assert not _INLINE_SECRET.search('AWS_SECRET_ACCESS_KEY="$SECRET"')


def test_readme_shows_remote_submission_and_every_sweep_runs_on_the_cluster() -> None:
    text = (INFRA / "README.md").read_text()
    assert "deepsad sweep submit" in text and "--address http://127.0.0.1:8265" in text
    assert "RAY_AUTH_MODE=token" in text and "env -u RAY_ADDRESS" not in text
    entry = _load(RAYJOB)["spec"]["entrypoint"]
    assert "--in-cluster" in entry and "RAY_ADDRESS" not in entry
    head, _ = _pods(_load(RAYJOB)["spec"]["rayClusterSpec"])
    assert _gpu_limit(head) == 0, "rayjob.yaml: the head runs only the driver; trials go to the GPU workers"


def test_heads_declare_the_trial_slot_resource_of_ray_train_trials() -> None:
    assert _load(CLUSTER)["available_node_types"]["head"]["resources"]["trial_slot"] >= 1
    for path in (RAYCLUSTER, RAYJOB):
        doc = _load(path)
        spec = doc["spec"] if path == RAYCLUSTER else doc["spec"]["rayClusterSpec"]
        assert "trial_slot" in spec["headGroupSpec"]["rayStartParams"]["resources"], path.name
