"""Pass 1 of reading a sweep file: pydantic's validation errors as one line each, naming the field
(the dotted path), what is wrong, and the offending value.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from orchestration.spec.model import (
    DISTRIBUTIONS,
    NO_VALUE,
    Problem,
    SweepSpec,
)

_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def structure_problems(error: ValidationError) -> list[Problem]:
    """pydantic's errors as problems, one per field."""
    problems: dict[str, Problem] = {}
    for err in error.errors():
        ctx = err.get("ctx") or {}
        if err["type"] == "too_short" and ctx.get("actual_length") != len(err.get("input") or ()):
            continue  # pydantic counts only the items that validated; the bad items are reported
        problem = _rewrite(err)
        # A union of scalars (a choice value: int | float) fails once per member; keep the last
        # ("must be a number"), in the first one's place.
        problems[problem.field] = problem
    return list(problems.values())


def _rewrite(err: Mapping[str, Any]) -> Problem:
    """One pydantic error as a :class:`Problem` (loc → dotted path, ``input`` → value)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input", NO_VALUE)
    path, siblings = _walk(tuple(err["loc"]))
    if kind == "extra_forbidden":
        return Problem(path, _unknown_field(path, siblings))
    if kind == "missing":
        return Problem(path, "missing (required)")
    if kind == "union_tag_not_found":
        return Problem(f"{path}.distribution", f"missing (one of {', '.join(DISTRIBUTIONS)})")
    if kind == "union_tag_invalid":
        return Problem(f"{path}.distribution", f"must be one of {', '.join(DISTRIBUTIONS)}", ctx.get("tag"))
    if kind == "literal_error":
        return Problem(path, f"must be one of {str(ctx.get('expected', '')).replace(chr(39), '')}", value)
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le"))
        return Problem(path, f"must be {_BOUNDS[kind]} {_number(bound)}", value)
    if kind == "too_long":  # the list itself is not shown: it is long
        return Problem(path, f"must have at most {ctx.get('max_length'):,} values (got {ctx.get('actual_length')})")
    if kind == "too_short":
        return Problem(path, "must not be empty" if ctx.get("min_length") == 1 else err["msg"], value)
    if kind == "value_error":
        return Problem(path, str(ctx.get("error", err["msg"])), value)
    return Problem(path, _TYPE_MESSAGES.get(kind, str(err["msg"])), value)


def _number(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _unknown_field(path: str, siblings: list[str]) -> str:
    if path in ("protocol.seed", "ablation.axes.seed"):
        return "unknown field; the split seeds come from the top-level `seeds` list"
    leaf = path.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if near:
        return f"unknown field; did you mean {near[0]}?"
    return f"unknown field (known: {', '.join(siblings)})" if siblings else "unknown field"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, Annotated, tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, tuple, list):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def _walk(loc: tuple[str | int, ...]) -> tuple[str, list[str]]:
    """``loc`` as a dotted path (list items as ``[i]``, union tags dropped), and the field names of
    the model that holds its last element (for "did you mean")."""
    models: list[type[BaseModel]] = [SweepSpec]
    parts: list[str] = []
    holder: list[type[BaseModel]] = models
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        tagged = [m for m in models if _tag(m) == item]
        if tagged and not any(item in m.model_fields for m in models):
            models = tagged  # a discriminated union's tag: not part of the user's path
            continue
        if not models and parts:
            continue  # a member of a union of scalars (``int`` in int | float): not the user's path
        holder = models
        parts.append(("." if parts else "") + item)
        fields = [m.model_fields[item] for m in models if item in m.model_fields]
        models = [m for f in fields for m in _models_in(f.annotation)]
    siblings = sorted({name for m in holder for name in m.model_fields})
    return "".join(parts), siblings


def _tag(model: type[BaseModel]) -> str | None:
    f = model.model_fields.get("distribution")
    args = typing.get_args(f.annotation) if f is not None else ()
    return str(args[0]) if args else None
