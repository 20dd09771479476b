"""A small IAM policy evaluator for the infra tests: does an identity policy allow one request?

It follows AWS's documented evaluation logic for a single identity-based policy (no SCPs, no
permission boundaries, no session policies, no resource policy): an explicit ``Deny`` wins, else an
``Allow`` that matches, else an implicit deny. A statement matches a request when its
``Action``/``NotAction``, ``Resource``/``NotResource`` and every condition match.

Conditions (all operators of a statement and all keys of an operator must hold, any listed value of
one key may match):

- ``String{Equals,NotEquals,EqualsIgnoreCase,NotEqualsIgnoreCase,Like,NotLike}``, ``Arn{Equals,Like,
  NotEquals,NotLike}``, ``Bool``, ``Null``, ``Numeric{Equals,NotEquals,LessThan,LessThanEquals,
  GreaterThan,GreaterThanEquals}``;
- the ``...IfExists`` suffix (a missing key makes the operator true);
- the ``ForAnyValue:`` / ``ForAllValues:`` set operators for multi-valued keys such as
  ``aws:TagKeys`` (``ForAllValues`` is true when the key is missing, as on AWS).

A single-valued key that is missing from the request makes a positive operator false and a negated
one (``...Not...``) true, as AWS documents. Any other operator raises :class:`UnsupportedPolicy`, so a
policy that uses something this evaluator does not understand fails the tests instead of being
judged wrongly. Policy variables (``${aws:username}``) are not supported either.

Verify the same questions on a real account with ``aws iam simulate-custom-policy`` (see
``infra/README.md``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALLOW, EXPLICIT_DENY, IMPLICIT_DENY = "allowed", "explicitDeny", "implicitDeny"

ContextValue = str | Sequence[str]


class UnsupportedPolicy(ValueError):
    """The policy uses an element or operator this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    """One authorisation question: ``action`` (``s3:GetObject``) on ``resource`` (an ARN or ``*``)
    with the request's condition keys in ``context`` (a key that is absent is simply not there;
    multi-valued keys hold a tuple)."""

    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        ctx = {k: (list(v) if not isinstance(v, str) else v) for k, v in sorted(self.context.items())}
        return {"action": self.action, "resource": self.resource, "context": ctx}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Request:
        ctx = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("context", {}).items()}
        return cls(d["action"], d["resource"], ctx)

    def __hash__(self) -> int:
        return hash((self.action, self.resource, json.dumps(self.as_json()["context"], sort_keys=True)))


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def load_policy(path: Path | str, **placeholders: str) -> dict[str, Any]:
    """The policy JSON at ``path`` with each placeholder (``BUCKET="b"``) replaced in every string,
    the way ``infra/aws/bucket.sh`` renders it. Without placeholders the policy is taken as written."""
    text = Path(path).read_text()
    for name, value in placeholders.items():
        text = text.replace(name, value)
    return json.loads(text)


def _glob(pattern: str, value: str, *, case: bool = True) -> bool:
    """IAM wildcards: ``*`` any run of characters (also ``/``), ``?`` one character."""
    if "${" in pattern:
        raise UnsupportedPolicy(f"policy variables are not supported: {pattern!r}")
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, 0 if case else re.IGNORECASE) is not None


def _action_matches(patterns: list[str], action: str) -> bool:
    return any(_glob(p, action, case=False) for p in patterns)


def _resource_matches(patterns: list[str], resource: str) -> bool:
    return any(_glob(p, resource) for p in patterns)


def _single(op: str, want: str, have: str) -> bool:
    """One policy value against one request value for a base (non-negated) operator."""
    if op in ("StringEquals", "ArnEquals"):
        return want == have
    if op == "StringEqualsIgnoreCase":
        return want.lower() == have.lower()
    if op in ("StringLike", "ArnLike"):
        return _glob(want, have)
    if op == "Bool":
        return want.lower() == have.lower()
    if op.startswith("Numeric"):
        w, h = float(want), float(have)
        return {
            "NumericEquals": h == w, "NumericLessThan": h < w, "NumericLessThanEquals": h <= w,
            "NumericGreaterThan": h > w, "NumericGreaterThanEquals": h >= w,
        }[op]  # fmt: skip
    raise UnsupportedPolicy(f"condition operator {op!r}")


_NEGATED = {
    "StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
}  # fmt: skip
_BASE = {
    "StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike", "Bool",
    "NumericEquals", "NumericLessThan", "NumericLessThanEquals", "NumericGreaterThan",
    "NumericGreaterThanEquals",
}  # fmt: skip


def _operator_holds(operator: str, key: str, wanted: list[Any], context: Mapping[str, ContextValue]) -> bool:
    set_op = ""
    if ":" in operator and operator.split(":", 1)[0] in ("ForAnyValue", "ForAllValues"):
        set_op, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    op = operator.removesuffix("IfExists")
    wanted = [str(w).lower() if isinstance(w, bool) else str(w) for w in wanted]
    present = key in context
    if op == "Null":
        if set_op or if_exists:
            raise UnsupportedPolicy(f"{operator} with a set operator")
        return any((w.lower() == "true") == (not present) for w in wanted)
    negated = op in _NEGATED
    base = _NEGATED.get(op, op)
    if base not in _BASE:
        raise UnsupportedPolicy(f"condition operator {operator!r}")
    if not present:
        if if_exists:
            return True
        if set_op == "ForAllValues":
            return True  # AWS: ForAllValues on a missing key is true
        if set_op == "ForAnyValue":
            return False
        return negated  # AWS: a missing key fails a positive operator and satisfies a negated one
    raw = context[key]
    values = [raw] if isinstance(raw, str) else list(raw)

    def one(v: str) -> bool:
        hit = any(_single(base, w, v) for w in wanted)
        return not hit if negated else hit

    if set_op == "ForAllValues":
        return all(one(v) for v in values)
    if set_op == "ForAnyValue":
        return any(one(v) for v in values)
    if len(values) != 1:
        raise UnsupportedPolicy(f"{operator} on the multi-valued key {key!r} needs ForAnyValue/ForAllValues")
    return one(values[0])


def _conditions_hold(cond: Mapping[str, Mapping[str, Any]], context: Mapping[str, ContextValue]) -> bool:
    return all(
        _operator_holds(operator, key, _as_list(values), context)
        for operator, keys in cond.items()
        for key, values in keys.items()
    )


_KNOWN = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def statement_matches(stmt: Mapping[str, Any], req: Request) -> bool:
    """Whether ``stmt`` applies to ``req`` (its effect aside)."""
    unknown = set(stmt) - _KNOWN
    if unknown:
        raise UnsupportedPolicy(
            f"statement {stmt.get('Sid', '?')}: {sorted(unknown)} (identity policies only)"
        )
    if "Action" in stmt:
        if not _action_matches(_as_list(stmt["Action"]), req.action):
            return False
    elif "NotAction" in stmt:
        if _action_matches(_as_list(stmt["NotAction"]), req.action):
            return False
    else:
        raise UnsupportedPolicy(f"statement {stmt.get('Sid', '?')}: no Action")
    if "Resource" in stmt:
        if not _resource_matches(_as_list(stmt["Resource"]), req.resource):
            return False
    elif "NotResource" in stmt:
        if _resource_matches(_as_list(stmt["NotResource"]), req.resource):
            return False
    else:
        raise UnsupportedPolicy(f"statement {stmt.get('Sid', '?')}: no Resource")
    return _conditions_hold(stmt.get("Condition", {}), req.context)


def statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    if policy.get("Version") != "2012-10-17":
        raise UnsupportedPolicy("policy Version must be 2012-10-17")
    return _as_list(policy["Statement"])


def evaluate(policy: Mapping[str, Any], req: Request) -> str:
    """``"allowed"``, ``"explicitDeny"`` or ``"implicitDeny"`` — the words the IAM policy simulator uses."""
    decision = IMPLICIT_DENY
    for stmt in statements(policy):
        if statement_matches(stmt, req):
            if stmt["Effect"] == "Deny":
                return EXPLICIT_DENY
            if stmt["Effect"] == "Allow":
                decision = ALLOW
            else:
                raise UnsupportedPolicy(f"Effect {stmt['Effect']!r}")
    return decision


def allowed(policy: Mapping[str, Any], req: Request) -> bool:
    return evaluate(policy, req) == ALLOW


def matching_allows(policy: Mapping[str, Any], req: Request) -> list[str]:
    """The Sids of the Allow statements that match ``req`` (to find grants nothing uses)."""
    return [
        s.get("Sid", "?") for s in statements(policy) if s["Effect"] == "Allow" and statement_matches(s, req)
    ]


def _parliament_dir() -> Path:
    spec = importlib.util.find_spec("parliament")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("parliament is not installed (pip install parliament)")
    return Path(spec.origin).parent


def import_parliament() -> Any:
    """``parliament`` (the IAM linter), importable although it still calls ``pkg_resources``, which
    setuptools >= 81 no longer ships: a stand-in module gives it the one function it uses
    (``resource_filename``, for its own data files)."""
    try:
        import pkg_resources  # noqa: F401
    except ModuleNotFoundError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(_parliament_dir() / name)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import parliament

    return parliament


def service_actions(prefix: str) -> list[str]:
    """Every action of an AWS service (``"s3"`` -> ``["s3:AbortMultipartUpload", ...]``), from the IAM
    definition that ``parliament`` ships (offline)."""
    path = _parliament_dir() / "iam_definition.json"
    for service in json.loads(path.read_text()):
        if service["prefix"] == prefix:
            return sorted(f"{prefix}:{p['privilege']}" for p in service["privileges"])
    raise KeyError(prefix)
