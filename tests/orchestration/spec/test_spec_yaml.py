"""Hostile YAML in a sweep file: aliases, anchors, duplicate keys, deep nesting, long text and values
PyYAML's own constructors choke on are one ConfigError line each, naming the line — never a
traceback, a hang or an expansion (issue 12, finding 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepsad.errors import ConfigError
from orchestration.spec.load import load_spec, parse_spec
from orchestration.spec.safe_yaml import MAX_CHARS, MAX_DEPTH, read_yaml
from tests.conftest import REPO

GOOD = (REPO / "sweeps" / "quickstart.yaml").read_text(encoding="utf-8")

# nine levels of nine references each: 9**9 (387 million) strings once expanded
BOMB = "name: bomb\n" + 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


def _error(text: str, source: str = "x.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ndescription: &s [*s]\n", "x.yaml: line 2: anchors (&s) are not allowed"),
        ("name: x\nseeds: *s\n", "x.yaml: line 2: aliases (*s) are not allowed"),
        (BOMB, "x.yaml: line 2: anchors (&a0) are not allowed"),
        ("name: x\nbase: {a: 1}\ndata:\n  <<: {dataset: digits}\n", "x.yaml: line 4: merge keys (<<) are not allowed"),
    ],
    ids=["self-reference", "alias", "bomb", "merge key"],
)
def test_aliases_anchors_and_merge_keys_are_refused(text: str, expected: str) -> None:
    message = _error(text)
    assert message.startswith(expected) and "\n" not in message


def test_a_duplicate_key_is_refused_with_its_line() -> None:
    text = GOOD.replace("name: quickstart\n", "name: quickstart\nseeds: [1]\n", 1)
    line = text.splitlines().index("seeds: [0]") + 1
    assert _error(text) == f"x.yaml: line {line}: duplicate key 'seeds'"
    nested = "name: x\ndata:\n  dataset: digits\n  data_dir: a\n  dataset: mnist\n"
    assert _error(nested) == "x.yaml: line 5: duplicate key 'dataset'"
    # keys equal once read are duplicates however they are written
    assert _error('name: x\n"name": y\n') == "x.yaml: line 2: duplicate key 'name'"


def test_nesting_is_bounded() -> None:
    flow = "a: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert _error(flow) == f"x.yaml: line 1: nested deeper than {MAX_DEPTH} levels"
    block = "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 2))
    assert "nested deeper than" in _error(block)
    ok = "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH - 1))
    assert isinstance(read_yaml(ok, "x.yaml"), dict)


def test_text_size_is_bounded(tmp_path: Path) -> None:
    long = "name: x\ndescription: " + "a" * MAX_CHARS + "\n"
    assert _error(long) == f"x.yaml: {len(long):,} characters; a sweep file may have at most {MAX_CHARS:,}"
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (4 * MAX_CHARS + 10))  # only the first 4 * MAX_CHARS + 1 bytes are read
    with pytest.raises(ConfigError, match=r"huge\.yaml: larger than .* bytes; a sweep file may have at most"):
        load_spec(huge)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nwhen: 2024-13-45\n", "x.yaml: line 2, column 7: invalid YAML: not a valid timestamp: month must be in 1..12"),
        ("name: x\nn: " + "9" * 5000 + "\n", "x.yaml: line 2, column 4: invalid YAML: not a valid int: too many digits"),
        ("name: x\nd: \x01\n", "x.yaml: character 12: invalid YAML: a special character (#x0001) is not allowed"),
        ("name: x\n  y: [\n", "x.yaml: line 2, column 4: invalid YAML: mapping values are not allowed here"),
        ("? [a, b]\n: 1\n", "x.yaml: line 1, column 3: invalid YAML: found unhashable key"),
        ("name: !!python/object:os.system x\n", "x.yaml: line 1, column 7: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
    ],
    ids=["bad date", "long integer", "control character", "syntax", "unhashable key", "python tag"],
)
def test_values_pyyaml_cannot_construct_are_one_line(text: str, expected: str) -> None:
    assert _error(text) == expected


def test_the_shipped_sweeps_use_nothing_refused() -> None:
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        assert isinstance(read_yaml(path.read_text(encoding="utf-8"), str(path)), dict), path


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DEEPSAD_DEBUG", None)
    # a timeout, not a time assertion: before the fix the bomb ran until killed (40 s and more)
    return subprocess.run([sys.executable, "-m", "orchestration.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD.replace('description: "', 'description: &s [*s]\nx: "'), "anchors (&s) are not allowed"),
        (GOOD.replace("seeds: [0]", "seeds: *a8\n" + BOMB.replace("name: bomb\n", "")), "aliases (*a8) are not allowed"),
        (GOOD.replace("name: quickstart\n", "name: quickstart\nname: other\n"), "duplicate key 'name'"),
    ],
    ids=["self-referencing alias", "alias bomb in seeds", "duplicate name"],
)
def test_hostile_yaml_through_the_command_is_one_line_and_exit_2(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(body, encoding="utf-8")
    run = _cli(["sweep", "submit", "bomb.yaml", "--dry-run"], tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bomb.yaml: line ") and expected in lines[0], run.stderr
    assert not (tmp_path / "runs").exists()
