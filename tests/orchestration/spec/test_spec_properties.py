"""Property tests of the sweep-file parser (issue 12): whatever the text — random characters, YAML-ish
token soup, random nested data dumped as YAML, mutations of the shipped sweeps — ``parse_spec`` gives
a :class:`SweepSpec` or one clean :class:`ConfigError` whose every line names the file; never another
exception and never a hang (each example has a deadline; pytest-timeout stops the whole test).
Derandomized, so that CI runs the same examples every time."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepsad.errors import ConfigError
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)

SHIPPED = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "sweeps").glob("*.yaml"))}
SOURCE = "prop.yaml"
# a few seconds per example: far above what a parse takes, far below a hang
SETTINGS = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

# the core modules parse_spec imports on first use (torch among them) load before any deadline runs
parse_spec(SHIPPED["quickstart.yaml"], SOURCE, base_dir="/prop")


def _parse(text: str) -> SweepSpec | None:
    try:
        spec = parse_spec(text, SOURCE, base_dir="/prop")
    except ConfigError as e:
        lines = str(e).splitlines()
        assert lines, "an empty error"
        assert all(line.startswith(f"{SOURCE}: ") for line in lines), lines
        assert not any("Traceback" in line or "pydantic" in line for line in lines), lines
        return None
    assert isinstance(spec, SweepSpec) and spec.source == SOURCE
    return spec


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["digits", "mnist", "grid", "tpe", "choice", "log_uniform", "auto", "asha", "deepsad",
                     "val_auroc", "1e-4", "0x10", ".inf", "~", "null", "yes", "2024-13-45", "<<", "&a", "*a"]),
)  # fmt: skip
KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["name", "data", "dataset", "protocol", "normal_classes", "known_anomaly_classes", "search",
                     "algorithm", "space", "eta", "rep_dim", "values", "distribution", "low", "high", "num_trials",
                     "seeds", "train", "pretrain", "net", "resources", "ablation", "axes", "methods", "policy",
                     "budget", "scheduler", "bundle_size", "description", "storage"]),
)  # fmt: skip
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=30,
)


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text(text: str) -> None:
    _parse(text)


YAMLISH = st.lists(
    st.sampled_from(["name", "data", ":", ": ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ",
                     "*b", "<<: ", "!!str ", "!!python/object ", "? ", "'", '"', "#", "|", ">", "---", "...",
                     "%YAML 1.1", "1", "-1", "0.5", "1e400", ".nan", "~", "x", "search", "seeds", "eta"]),
    max_size=60,
).map("".join)  # fmt: skip


@SETTINGS
@given(text=YAMLISH)
def test_yaml_ish_token_soup(text: str) -> None:
    _parse(text)


@SETTINGS
@given(data=NESTED)
def test_random_nested_data(data: Any) -> None:
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    _parse(text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_sweeps(draw: st.DrawFn) -> str:
    """A shipped sweep with a few of its values replaced, removed or added (at any depth)."""
    data = yaml.safe_load(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)[1:]))
        *head, last = path
        parent = data
        for step in head:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[last] = draw(NESTED)
        elif action == "remove":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(KEYS)] = draw(NESTED)
        else:
            parent.append(draw(NESTED))
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@SETTINGS
@given(text=mutated_sweeps())
def test_mutated_shipped_sweeps(text: str) -> None:
    _parse(text)


@st.composite
def edited_text(draw: st.DrawFn) -> str:
    """A shipped sweep's text with a few characters inserted, deleted or swapped."""
    text = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(["", ":", "-", " ", "\n", "[", "{", "&a ", "*a", "'", "1e999", "\t", "x"]))
        j = min(len(text), i + draw(st.integers(0, 3)))
        text = text[:i] + piece + text[j:]
    return text


@SETTINGS
@given(text=edited_text())
def test_edited_shipped_sweep_text(text: str) -> None:
    _parse(text)


def test_the_shipped_sweeps_parse() -> None:
    for name, text in SHIPPED.items():
        assert _parse(text) is not None, name


def test_non_finite_floats_never_reach_a_spec() -> None:
    """Any float that gets through is finite (NaN and inf are refused in every field)."""
    for value in (".nan", ".inf", "-.inf", "1e999"):
        text = SHIPPED["quickstart.yaml"].replace("eta: 1.0", f"eta: {value}")
        assert _parse(text) is None
    spec = _parse(SHIPPED["quickstart.yaml"])
    assert spec is not None and all(math.isfinite(v) for v in (spec.train.eta, spec.train.lr))


def test_the_tests_read_every_shipped_sweep() -> None:
    assert len(SHIPPED) == len(list(Path(REPO / "sweeps").glob("*.yaml"))) >= 10
