"""The bounded JSON reader: size, depth (measured without recursion), strictness; any text → a value
or one DataError (issue 12, item 4: a deeply nested meta.json crashed export and score)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepsad.jsonio as jsonio
from deepsad.errors import CheckpointError, DataError
from deepsad.jsonio import check_depth, load_json_bounded, read_json_file


def _reference_depth(text: str) -> int:
    """Bracket depth outside strings, one character at a time (the vectorised scan must agree)."""
    depth = deepest = run = 0
    inside = False
    for ch in text:
        if ch == '"' and run % 2 == 0:
            inside = not inside
        elif not inside and ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not inside and ch in "]}":
            depth -= 1
        run = run + 1 if ch == "\\" else 0
    return deepest


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),  # was a RecursionError
        ('{"a":' * 5_000 + "1" + "}" * 5_000, "nested deeper than 64 levels"),
        ("[NaN]", "NaN is not allowed"),
        ('{"x": Infinity}', "Infinity is not allowed"),
        ("[1e999]", "out of range"),  # Python's json would give inf
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("[1, 2", "not valid strict JSON"),
        ("1" * 5_000, "not valid strict JSON"),  # int digits limit: a ValueError, caught
        ('"' + '\\"' * 50_000, "not valid strict JSON"),  # an unterminated string of escaped quotes
    ],
)
def test_hostile_json_is_one_clean_error(text: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as e:
        load_json_bounded(text, "meta.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("meta.json: ")


def test_size_bound_and_error_class(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="too large"):
        load_json_bounded("[" + "1," * 100 + "1]", "x", max_bytes=50, error=CheckpointError)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2_000 + b"{}")
    with pytest.raises(DataError, match="too large"):
        read_json_file(big, max_bytes=1_000)
    assert read_json_file(big) == {}
    with pytest.raises(DataError, match="cannot read"):
        read_json_file(tmp_path / "missing.json")
    with pytest.raises(DataError, match="not UTF-8"):
        load_json_bounded(b'{"a": "\xff"}', "x")
    assert load_json_bounded('{"a": [1, 2.5, {"b": "[[[[{{"}], "c": null}', "x", max_depth=3) == {
        "a": [1, 2.5, {"b": "[[[[{{"}],
        "c": None,
    }
    with pytest.raises(DataError, match="deeper than 2"):
        load_json_bounded('{"a": [1, 2.5, {"b": "[[[[{{"}]}', "x", max_depth=2)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet='[]{}"\\a,: ', max_size=60))
def test_depth_scan_equals_a_character_walk(text: str, chunk: int) -> None:
    # chunk sizes that split escapes and strings across chunk borders
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonio, "_CHUNK", chunk)
        assert check_depth(text.encode(), 10**9) == _reference_depth(text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_strict_json_round_trips(value: object) -> None:
    text = json.dumps(value, allow_nan=False)
    assert load_json_bounded(text, "x", max_depth=1_000) == value


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_a_value_or_one_data_error(data: bytes) -> None:
    try:
        load_json_bounded(data, "x", max_depth=8)
    except DataError as e:
        assert "\n" not in str(e)
