"""A stand-in for the ``aws`` CLI that keeps a little AWS account in a JSON file, for the idempotency
tests of ``infra/aws/*.sh`` (offline). It knows exactly the calls those scripts make, answers their
``--query`` the way the real CLI would, logs every call, and fails on anything else (so a script that
starts calling something new fails its test until this file learns it).

Run as ``python fake_aws.py ARGS``; ``FAKE_AWS_STATE`` is the account file, ``FAKE_AWS_LOG`` the log.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _opt(args: list[str], name: str, default: str | None = None) -> str:
    if name in args:
        return args[args.index(name) + 1]
    if default is None:
        raise SystemExit(f"fake aws: {name} missing in {args}")
    return default


def _opts(args: list[str], name: str) -> list[str]:
    """Every value after ``name`` up to the next option."""
    i, out = args.index(name) + 1, []
    while i < len(args) and not args[i].startswith("--"):
        out.append(args[i])
        i += 1
    return out


def _doc(value: str) -> Any:
    return (
        json.loads(Path(value.removeprefix("file://")).read_text()) if value.startswith("file://") else value
    )


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_AWS_STATE"])
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    with open(os.environ["FAKE_AWS_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    service, command, args = argv[0], argv[1], argv[2:]
    out: Any = None
    buckets = state.setdefault("buckets", {})
    roles = state.setdefault("roles", {})
    profiles = state.setdefault("profiles", {})
    groups = state.setdefault("groups", {})
    assoc = state.setdefault("associations", {})
    key = (service, command)
    if key == ("sts", "get-caller-identity"):
        out = "123456789012"
    elif key == ("s3api", "head-bucket"):
        if _opt(args, "--bucket") not in buckets:
            print("An error occurred (404) when calling the HeadBucket operation: Not Found", file=sys.stderr)
            return 254
    elif key == ("s3api", "create-bucket"):
        buckets[_opt(args, "--bucket")] = {}
    elif (service == "s3api" and command.startswith("put-bucket-")) or key == (
        "s3api",
        "put-public-access-block",
    ):
        value = args[3] if len(args) > 3 else ""
        buckets[_opt(args, "--bucket")][command] = _doc(value)
    elif key == ("iam", "get-role"):
        if _opt(args, "--role-name") not in roles:
            return 254
    elif key == ("iam", "create-role"):
        roles[_opt(args, "--role-name")] = {
            "trust": _doc(_opt(args, "--assume-role-policy-document")),
            "policies": {},
        }
    elif key == ("iam", "update-assume-role-policy"):
        roles[_opt(args, "--role-name")]["trust"] = _doc(_opt(args, "--policy-document"))
    elif key == ("iam", "put-role-policy"):
        roles[_opt(args, "--role-name")]["policies"][_opt(args, "--policy-name")] = _doc(
            _opt(args, "--policy-document")
        )
    elif key == ("iam", "get-instance-profile"):
        name = _opt(args, "--instance-profile-name")
        if name not in profiles:
            return 254
        out = (
            "\t".join(profiles[name]) if "--query" in args else {"InstanceProfile": {"Roles": profiles[name]}}
        )
    elif key == ("iam", "create-instance-profile"):
        profiles[_opt(args, "--instance-profile-name")] = []
    elif key == ("iam", "add-role-to-instance-profile"):
        profiles[_opt(args, "--instance-profile-name")].append(_opt(args, "--role-name"))
    elif key == ("ec2", "describe-security-groups"):
        filters = dict(
            f.split(",Values=") for f in (x.removeprefix("Name=") for x in _opts(args, "--filters"))
        )
        found = [
            g
            for g, v in groups.items()
            if v["vpc"] == filters["vpc-id"] and v["name"] == filters["group-name"]
        ]
        out = found[0] if found else "None"
    elif key == ("ec2", "create-security-group"):
        gid = f"sg-{len(groups):017d}"
        groups[gid] = {"vpc": _opt(args, "--vpc-id"), "name": _opt(args, "--group-name"), "rules": []}
        out = gid
    elif key == ("ec2", "describe-security-group-rules"):
        gid = _opts(args, "--filters")[0].split("Values=")[1]
        out = "\n".join("\t".join(r) for r in groups[gid]["rules"])
    elif key == ("ec2", "authorize-security-group-ingress"):
        gid, perm = _opt(args, "--group-id"), _opt(args, "--ip-permissions")
        rule_id = f"sgr-{sum(len(g['rules']) for g in groups.values()):017d}"
        if "UserIdGroupPairs" in perm:
            rule = ["-1", "-1", "-1", "None", perm.split("GroupId=")[1].split(",")[0], rule_id]
        else:
            cidr = perm.split("CidrIp=")[1].split(",")[0]
            rule = ["tcp", "22", "22", cidr, "None", rule_id]
        if any(r[:5] == rule[:5] for r in groups[gid]["rules"]):
            print("An error occurred (InvalidPermission.Duplicate)", file=sys.stderr)
            return 254
        groups[gid]["rules"].append(rule)
    elif key == ("ec2", "revoke-security-group-ingress"):
        gid, rid = _opt(args, "--group-id"), _opt(args, "--security-group-rule-ids")
        groups[gid]["rules"] = [r for r in groups[gid]["rules"] if r[5] != rid]
    elif key == ("eks", "describe-cluster"):
        out = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123456789"
    elif key == ("eks", "list-pod-identity-associations"):
        out = assoc.get(f"{_opt(args, '--namespace')}/{_opt(args, '--service-account')}", {}).get(
            "id", "None"
        )
    elif key == ("eks", "create-pod-identity-association"):
        name = f"{_opt(args, '--namespace')}/{_opt(args, '--service-account')}"
        assoc[name] = {"id": f"a-{len(assoc)}", "role": _opt(args, "--role-arn")}
    elif key == ("eks", "describe-pod-identity-association"):
        out = next(a["role"] for a in assoc.values() if a["id"] == _opt(args, "--association-id"))
    elif key == ("eks", "update-pod-identity-association"):
        for a in assoc.values():
            if a["id"] == _opt(args, "--association-id"):
                a["role"] = _opt(args, "--role-arn")
    else:
        print(f"fake aws: unknown call {argv}", file=sys.stderr)
        return 2
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
