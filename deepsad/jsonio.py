"""Reading JSON that someone else wrote (a model's ``meta.json``, an export's ``export.json``,
``selection.json``, manifests) with bounds, so that a hostile or broken file is one clear error.

Python's ``json`` recurses once per nesting level: ``[[[[...]]]]`` a few thousand levels deep raises
``RecursionError`` (and anything that walks the result recursively would fail later). So before
parsing, :func:`check_depth` measures the bracket depth *without recursion* — a vectorised scan of
the UTF-8 bytes, a chunk at a time, that skips brackets inside strings — and the size is bounded
before anything is read.

The JSON accepted is strict: no ``NaN``/``Infinity`` constants and no number that overflows to
``inf`` (``1e999``), no duplicate keys in an object (two readers could disagree on which one wins),
UTF-8 text only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepsad.errors import DataError, DeepSADError

#: Defaults: far above anything this project writes (a training-state ``meta.json`` is a few KB and
#: about 8 levels deep) and far below what would exhaust memory or the parser's stack.
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64

_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENS, _CLOSES = (ord("["), ord("{")), (ord("]"), ord("}"))


def check_depth(data: bytes, max_depth: int) -> int:
    """The deepest nesting of ``[``/``{`` in the JSON text ``data`` (UTF-8), outside strings.

    Iterative and in constant memory per 1 MiB chunk; never recurses. Raises ``ValueError`` as soon
    as the depth exceeds ``max_depth``. For text that is not JSON the number is only an estimate,
    but it agrees with the JSON grammar on every valid prefix, which is all the parser ever reaches.
    """
    in_string = False  # inside a string at the start of the chunk
    trailing_bs = 0  # backslashes that end the previous chunk (only their parity matters)
    depth = deepest = 0
    buf = np.frombuffer(data, dtype=np.uint8)
    for start in range(0, buf.size, _CHUNK):
        c = buf[start : start + _CHUNK]
        idx = np.arange(c.size, dtype=np.int64)
        is_bs = c == _BACKSLASH
        # the length of the run of backslashes ending just before each position
        last_other = np.maximum.accumulate(np.where(is_bs, -1, idx))
        before = np.empty(c.size, dtype=np.int64)
        before[0] = trailing_bs
        run = idx[:-1] - last_other[:-1]  # run ending at i-1 within this chunk
        before[1:] = np.where(last_other[:-1] < 0, idx[1:] + trailing_bs, run)
        toggles = (c == _QUOTE) & (before % 2 == 0)
        inside = (np.cumsum(toggles, dtype=np.int64) % 2 == 1) ^ in_string
        step = (np.isin(c, _OPENS).astype(np.int8) - np.isin(c, _CLOSES).astype(np.int8)) * ~inside
        levels = np.cumsum(step, dtype=np.int64) + depth
        if levels.size:
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        if deepest > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels; refusing to parse it")
        in_string = bool(inside[-1])
        last = int(last_other[-1])
        trailing_bs = c.size - 1 - last if last >= 0 else trailing_bs + c.size
    return deepest


def load_json_bounded(
    data: str | bytes,
    source: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    error: type[DeepSADError] = DataError,
) -> Any:
    """Parse strict JSON text of at most ``max_bytes`` bytes nested at most ``max_depth`` deep.

    ``source`` names the file (or storage key) in the message.

    Raises:
        ``error`` (a :class:`DeepSADError` subclass, DataError by default) with one line naming
        ``source``: too large, too deep, not UTF-8, not strict JSON, or a duplicate key.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise error(f"{source}: JSON file too large ({len(raw)} bytes > {max_bytes})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{source}: not UTF-8 text (byte {e.start})") from e
    try:
        check_depth(raw, max_depth)
    except ValueError as e:
        raise error(f"{source}: JSON {e}") from e
    try:
        return json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError as e:  # unreachable behind check_depth; a second line of defence
        raise error(f"{source}: not valid JSON (nested too deeply)") from e
    except ValueError as e:  # json.JSONDecodeError, our hooks, the int digits limit
        raise error(f"{source}: not valid strict JSON ({_one_line(e)})") from e


def read_json_file(
    path: Path,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    error: type[DeepSADError] = DataError,
) -> Any:
    """:func:`load_json_bounded` of the file at ``path``, read no further than ``max_bytes + 1``.

    Raises ``error``: unreadable, too large, or as :func:`load_json_bounded`.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    if len(raw) > max_bytes:
        raise error(f"{path}: JSON file too large (more than {max_bytes} bytes)")
    return load_json_bounded(raw, str(path), max_bytes=max_bytes, max_depth=max_depth, error=error)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
