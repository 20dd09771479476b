"""Reading a sweep file: :func:`load_spec` (a path) and :func:`parse_spec` (its text).

A sweep file is read with ``yaml.safe_load`` (with limits: :mod:`orchestration.spec.safe_yaml`) and validated
in two passes; every problem of a pass is reported at once, one line each, as
``<file>: <dotted.field>: <message> (got <value>)``:

1. structure — unknown fields (with a "did you mean"), types, ranges of single fields, unknown
   data set names (:class:`~orchestration.spec.model.SweepSpec` and its section models; the lines
   come from :mod:`orchestration.spec.problems`);
2. consistency (:mod:`orchestration.spec.checks`) — rules that span fields or need the core's own checks:
   the protocol (built as a :class:`deepsad.data.splits.Protocol`), the network and every ``rep_dim`` the
   search may try (built as :class:`deepsad.networks.NetConfig` for registry data sets), the search
   space's bounds, grid vs. sampled search, ``device`` vs. ``gpus_per_trial``. A check runs when the
   sections it reads passed pass 1, so most problems still show up together.

Nothing here loads data or trains: :func:`orchestration.plan.preflight.validate_spec` (and
:func:`orchestration.plan.ablation.validate_ablation`) do the checks that need the data. Relative paths
in the file are taken from ``base_dir`` (:attr:`~orchestration.spec.model.SweepSpec.base_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from deepsad.errors import ConfigError
from orchestration.spec.checks import consistency, raw_choice_problems
from orchestration.spec.model import SweepSpec, problems_error, show
from orchestration.spec.problems import structure_problems
from orchestration.spec.safe_yaml import MAX_CHARS, read_yaml


def load_spec(path: Path, *, base_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; relative paths in it are relative to ``base_dir`` (default:
    the current directory).

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML or not a mapping, or has
            problems; the message has one line per problem, each prefixed with ``path``.
    """
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(4 * MAX_CHARS + 1)  # UTF-8 takes at most 4 bytes a character
        if len(data) > 4 * MAX_CHARS:
            raise ConfigError(f"{source}: larger than {4 * MAX_CHARS:,} bytes; a sweep file may have at most "
                              f"{MAX_CHARS:,} characters")
        text = data.decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{source}: file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{source}: is a directory, not a sweep file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror or e})") from e
    return parse_spec(text, source, base_dir=base_dir)


def parse_spec(text: str, source: str = "<sweep>", *, base_dir: str | Path | None = None) -> SweepSpec:
    """Validate sweep-file text; ``source`` names it in messages, ``base_dir`` (default: the current
    directory, now) is where its relative paths start — pass the submitting directory when a spec
    is parsed again elsewhere (a Ray worker runs in its own directory).

    Raises:
        ConfigError: as :func:`load_spec`.
    """
    raw = read_yaml(text, source)
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; a sweep needs name, data, protocol and search")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: must be a mapping of sections (name, data, protocol, search, ...) (got {show(raw)})"
        )
    given = _given(raw)
    raw = _ablation_defaults(raw)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        problems = structure_problems(e)
        bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
        problems += consistency({**_valid_sections(raw, bad), "given": given})
        if "search" in bad:  # the values of choices that are numbers are still checked
            problems += raw_choice_problems(raw)
        raise problems_error(source, problems) from None
    problems = consistency({**{name: getattr(spec, name) for name in SweepSpec.model_fields}, "given": given})
    if problems:
        raise problems_error(source, problems)
    spec._source = source
    spec._base_dir = os.path.abspath(base_dir if base_dir is not None else os.getcwd())
    return spec


def _given(raw: dict[str, Any]) -> dict[str, frozenset[str]]:
    """The keys the file itself gives: top-level, and in ``search``, ``protocol`` and ``data``."""
    out = {"": frozenset(raw)}
    for name in ("search", "protocol", "data"):
        section = raw.get(name)
        out[name] = frozenset(section) if isinstance(section, dict) else frozenset()
    return out


def _ablation_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """With an ``ablation`` mapping: an absent ``search`` reads as a grid with nothing searched, and
    ``protocol.normal_classes``/``data.dataset`` default to their axis' first value (each cell sets its
    own), so the file need not repeat them. Other files are returned unchanged."""
    ablation = raw.get("ablation")
    if not isinstance(ablation, dict):
        return raw
    out = dict(raw)
    search = out.get("search")
    if search is None:
        out["search"] = {"algorithm": "grid", "space": {}}
    elif isinstance(search, dict) and "algorithm" not in search:
        out["search"] = {"algorithm": "grid", "space": {}, **search}  # a fixed ablation may give only objective
    axes = ablation.get("axes")
    axes = axes if isinstance(axes, dict) else {}
    for section, key in (("protocol", "normal_classes"), ("data", "dataset")):
        current = out.get(section, {})
        values = axes.get(key)
        if isinstance(current, dict) and key not in current and isinstance(values, list) and values:
            out[section] = {**current, key: values[0]}
    return out


def _valid_sections(raw: dict[str, Any], bad: set[str]) -> dict[str, Any]:
    """The top-level sections that passed pass 1 (defaults for absent ones), validated alone."""
    out: dict[str, Any] = {}
    for name, info in SweepSpec.model_fields.items():
        if name in bad:
            continue
        if name in raw:
            annotation: Any = info.annotation
            out[name] = TypeAdapter(annotation).validate_python(raw[name])
        elif not info.is_required():
            out[name] = info.get_default(call_default_factory=True)
    return out
