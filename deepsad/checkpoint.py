"""Checkpoints without pickle: tensors in safetensors, plain values in strict JSON.

A *bundle* is a directory holding two files:

- ``tensors.safetensors`` — named tensors. The safetensors format is a JSON header plus raw bytes, so
  loading it can never run code (unlike ``torch.load`` of a pickle).
- ``meta.json`` — ``{"format": "deepsad-checkpoint", "format_version": 1, "kind": <str>,
  "tensors_sha256": <hex>, "tensors_bytes": <int>, "meta": <the caller's dict>}``.

JSON policy — strict and exact. :func:`save_bundle` accepts as ``meta`` only values that come back from a
JSON round trip *unchanged*: dicts with ``str`` keys, lists, ``str``, ``int``, finite ``float``, ``bool``,
``None``. Anything else (a tuple would come back as a list; NaN and inf are not JSON) raises
:class:`CheckpointError` naming the offending path. Richer values go through :func:`to_json_value`, a small
tagged encoding that :func:`from_json_value` reverses exactly: tuples, non-finite floats (stored as
``{"$float": "nan"}``), ints beyond ±2**53 (as decimal strings, so that no JSON reader rounds them),
``Counter``\\ s, dicts with non-``str`` keys, numeric numpy arrays. The training-state helpers at the
bottom (optimizer, LR scheduler, RNGs) are built on that encoding and return strict JSON.

Nothing in this module unpickles, ever; ``.pt``/``.pkl`` files inside a bundle directory are ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from deepsad.errors import CheckpointError, IntegrityError, StorageError
from deepsad.jsonio import read_json_file

FORMAT = "deepsad-checkpoint"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"

# Integers beyond 2**53 lose precision in JSON readers that use doubles (JavaScript, DuckDB, ...).
_SAFE_INT = 2**53
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory). Raises StorageError if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e.strerror or e}") from e
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Exact JSON encoding of plain values
# ---------------------------------------------------------------------------------------------------------


class _Encoder:
    """Walks a value and returns strict JSON; tensors go to ``sink`` (if given) as ``{"$tensor": key}``."""

    def __init__(self, where: str, sink: dict[str, torch.Tensor] | None = None, prefix: str = "") -> None:
        self.where = where
        self.sink = sink
        self.prefix = prefix

    def fail(self, path: str, what: str) -> CheckpointError:
        return CheckpointError(f"{self.where}{'.' + path if path else ''}: {what}")

    def encode(self, v: Any, path: str = "") -> Any:
        if v is None or isinstance(v, bool | str):
            return str(v) if isinstance(v, str) else v
        if isinstance(v, int):
            v = int(v)
            return v if -_SAFE_INT <= v <= _SAFE_INT else {"$int": str(v)}
        if isinstance(v, float):
            if math.isfinite(v):
                return float(v)
            return {"$float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(v, torch.Tensor):
            return {"$tensor": self._put_tensor(v, path)}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise self.fail(
                    path, f"cannot store a numpy array of dtype {v.dtype} (numeric and bool only)"
                )
            data = [self.encode(x, path) for x in v.ravel().tolist()]
            return {"$ndarray": {"dtype": v.dtype.str, "shape": list(v.shape), "data": data}}
        if isinstance(v, np.generic):
            # numpy scalars become Python scalars of the same value (np.float32(0.1) -> 0.100000001...).
            return self.encode(v.item(), path)
        if isinstance(v, Counter):
            return {"$counter": [[self.encode(k, path), self.encode(n, path)] for k, n in v.items()]}
        if isinstance(v, Mapping):
            if all(isinstance(k, str) and not k.startswith("$") for k in v):
                return {str(k): self.encode(x, _join(path, k)) for k, x in v.items()}
            # Non-str keys (optimizer state is keyed by int) and keys that look like our tags.
            return {"$items": [[self.encode(k, path), self.encode(x, _join(path, k))] for k, x in v.items()]}
        if type(v) is tuple:
            return {"$tuple": [self.encode(x, _join(path, i)) for i, x in enumerate(v)]}
        if type(v) is list:
            return [self.encode(x, _join(path, i)) for i, x in enumerate(v)]
        raise self.fail(
            path,
            f"cannot store a {type(v).__name__} (only None, bool, int, float, str, list, tuple, dict, "
            "Counter, numpy numbers/arrays" + (", tensors)" if self.sink is not None else ")"),
        )

    def _put_tensor(self, t: torch.Tensor, path: str) -> str:
        if self.sink is None:
            raise self.fail(path, "a tensor cannot be a JSON value; pass it in the bundle's `tensors`")
        key, n = self.prefix + path, 1
        while key in self.sink:  # only for exotic keys such as "a.b" next to a nested "a" / "b"
            key, n = f"{self.prefix}{path}#{n}", n + 1
        # A snapshot: optimizer.state_dict() hands out the live buffers, which keep changing.
        self.sink[key] = t.detach().to("cpu", copy=True)
        return key


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class _Decoder:
    def __init__(self, where: str, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.where = where
        self.tensors = tensors

    def fail(self, path: str, what: str) -> CheckpointError:
        return CheckpointError(f"{self.where}{'.' + path if path else ''}: {what}")

    def decode(self, j: Any, path: str = "") -> Any:
        if j is None or isinstance(j, bool | int | float | str):
            return j
        if isinstance(j, list):
            return [self.decode(x, _join(path, i)) for i, x in enumerate(j)]
        if not isinstance(j, dict):
            raise self.fail(path, f"not a JSON value: {type(j).__name__}")
        if len(j) == 1:
            ((tag, payload),) = j.items()
            if isinstance(tag, str) and tag.startswith("$"):
                try:
                    return self._tagged(tag, payload, path)
                except (TypeError, ValueError, KeyError, OverflowError) as e:
                    raise self.fail(path, f"malformed {tag} value: {e}") from e
        if any(isinstance(k, str) and k.startswith("$") for k in j):
            raise self.fail(path, f"malformed tagged value with keys {sorted(j)}")
        return {k: self.decode(x, _join(path, k)) for k, x in j.items()}

    def _tagged(self, tag: str, p: Any, path: str) -> Any:
        if tag == "$float":
            if p not in ("nan", "inf", "-inf"):
                raise ValueError(f"unknown float {p!r}")
            return float(p)
        if tag == "$int":
            return int(p)
        if tag == "$tuple":
            return tuple(self.decode(x, _join(path, i)) for i, x in enumerate(p))
        if tag == "$counter":
            return Counter({self.decode(k, path): self.decode(n, path) for k, n in p})
        if tag == "$items":
            items = [(self.decode(k, path), x) for k, x in p]
            return {k: self.decode(x, _join(path, k)) for k, x in items}
        if tag == "$ndarray":
            data = [self.decode(x, path) for x in p["data"]]
            return np.array(data, dtype=np.dtype(p["dtype"])).reshape(p["shape"])
        if tag == "$tensor":
            if self.tensors is None or p not in self.tensors:
                raise self.fail(path, f"refers to tensor {p!r}, which is not in the bundle")
            return self.tensors[p]
        raise self.fail(path, f"unknown tag {tag!r}")


def to_json_value(value: Any) -> Any:
    """Encode ``value`` as strict JSON such that :func:`from_json_value` gives back an equal value.

    Supported: None, bool, int (any size), float (incl. NaN/±inf), str, list, tuple, dict (any hashable
    supported keys), Counter, numpy scalars (become Python scalars) and numeric/bool numpy arrays.
    Raises CheckpointError naming the path of an unsupported value (tensors belong in the bundle).
    """
    return _Encoder("value").encode(value)


def from_json_value(j: Any) -> Any:
    """Inverse of :func:`to_json_value`. Raises CheckpointError on a malformed encoding."""
    return _Decoder("value").decode(j)


def _check_strict_json(v: Any, path: str) -> None:
    """Raise CheckpointError unless ``v`` survives ``json.loads(json.dumps(v))`` unchanged."""
    # Exact types for int (an IntEnum would come back as a plain int); float and str subclasses
    # (np.float64, np.str_) come back equal.
    if v is None or type(v) in (bool, int) or isinstance(v, str):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CheckpointError(
                f"{path}: {v} is not valid JSON; encode it with deepsad.checkpoint.to_json_value() "
                '(stores it as {"$float": "nan"}) and decode with from_json_value()'
            )
        return
    if type(v) is list:
        for i, x in enumerate(v):
            _check_strict_json(x, f"{path}[{i}]")
        return
    if isinstance(v, dict) and not isinstance(v, Counter):
        for k, x in v.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: key {k!r} is a {type(k).__name__}; JSON keys must be str")
            _check_strict_json(x, f"{path}.{k}")
        return
    hint = "it would come back as a list; " if isinstance(v, tuple) else ""
    raise CheckpointError(
        f"{path}: a {type(v).__name__} is not a plain JSON value ({hint}encode it with "
        "deepsad.checkpoint.to_json_value(), tensors go in `tensors`)"
    )


# ---------------------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------------------


def save_bundle(
    directory: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, kind: str
) -> None:
    """Write a bundle atomically: both files go into a temp dir next to ``directory``, then it is renamed.

    An existing bundle is replaced (old renamed away, new renamed in, old deleted), so a crash leaves
    either the old or the new complete bundle under the final name — or, in the instant between the two
    renames, none (the old one then survives as ``.<name>.old-*``) — never a half-written one.

    ``tensors`` are detached, moved to CPU and made contiguous; tensors sharing storage are cloned (safetensors
    refuses aliases). ``meta`` must be strict JSON (see the module docstring). Two concurrent writers of
    the same ``directory`` are not coordinated: the last rename wins, or one gets StorageError.

    Raises CheckpointError (bad kind/meta/tensor, or ``directory`` exists and is not a bundle) and
    StorageError (the file system refused).
    """
    directory = Path(directory)
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"{directory}: checkpoint kind must be a non-empty string, got {kind!r}")
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{directory}: meta must be a dict, got {type(meta).__name__}")
    _check_strict_json(dict(meta), "meta")
    prepared = _prepare_tensors(tensors)
    if directory.exists() and not (directory.is_dir() and _is_bundle_or_empty(directory)):
        raise CheckpointError(f"refusing to replace {directory}: it exists and is not a checkpoint bundle")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    except OSError as e:
        raise StorageError(f"{directory}: cannot create checkpoint directory: {e.strerror or e}") from e
    try:
        tensors_path = tmp / TENSORS_FILE
        try:
            safetensors.torch.save_file(prepared, str(tensors_path))
        except (SafetensorError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{directory}: safetensors cannot store these tensors: {e}") from e
        _fsync(tensors_path)
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "tensors_sha256": sha256_file(tensors_path),
            "tensors_bytes": tensors_path.stat().st_size,
            "meta": dict(meta),
        }
        (tmp / META_FILE).write_text(json.dumps(record, allow_nan=False, indent=1) + "\n", encoding="utf-8")
        _fsync(tmp / META_FILE)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _fsync(tmp)
        swap_into_place(tmp, directory)
    except OSError as e:
        raise StorageError(f"{directory}: cannot write checkpoint: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once tmp has been renamed into place


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensors[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
        try:
            t = t.detach().to("cpu").contiguous()
        except (RuntimeError, NotImplementedError) as e:
            raise CheckpointError(f"tensors[{name!r}]: cannot move to CPU: {e}") from e
        if t.numel():
            storage = t.untyped_storage()
            # Tied weights or views share storage; safetensors refuses aliases, and a view of a larger
            # buffer would be written whole by some versions, so store an own copy.
            if storage.data_ptr() in seen or storage.nbytes() != t.nbytes or t.storage_offset():
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _is_bundle_or_empty(directory: Path) -> bool:
    return (directory / META_FILE).is_file() or not any(directory.iterdir())


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` over ``final``: readers see the old one or the new one,
    never a half-written one (the old one is renamed away first, then deleted)."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bundle_meta(directory: Path, *, kind: str | None = None) -> dict[str, Any]:
    """The full ``meta.json`` record of a bundle (format fields + ``"meta"``), without reading tensors.

    Raises CheckpointError if ``meta.json`` is missing, not strict JSON, of another format/version, or of
    a kind other than ``kind`` (when given).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory} (not a directory)")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory}: missing {META_FILE} (not a checkpoint, or an incomplete one)")
    record = read_json_file(meta_path, error=CheckpointError)  # bounded: size, depth, strict
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{meta_path}: not a deepsad checkpoint (format {got!r}, expected {FORMAT!r})")
    version = record.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        newer = (
            " (written by a newer deepsad?)" if isinstance(version, int) and version > FORMAT_VERSION else ""
        )
        raise CheckpointError(
            f"{meta_path}: unsupported format_version {version!r}{newer}; this version reads {FORMAT_VERSION}"
        )
    digest, size = record.get("tensors_sha256"), record.get("tensors_bytes")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise CheckpointError(f"{meta_path}: tensors_sha256 must be 64 lowercase hex digits, got {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointError(f"{meta_path}: tensors_bytes must be a non-negative integer, got {size!r}")
    if not isinstance(record.get("kind"), str) or not isinstance(record.get("meta"), dict):
        raise CheckpointError(f"{meta_path}: `kind` must be a string and `meta` an object")
    if kind is not None and record["kind"] != kind:
        raise CheckpointError(f"{meta_path}: checkpoint kind is {record['kind']!r}, expected {kind!r}")
    return record


def load_bundle(
    directory: Path, *, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and load a bundle written by :func:`save_bundle`; returns ``(tensors, meta)``.

    Checks, in order: both files present, meta.json format/version/kind, the tensors file's size and sha256
    against meta.json; only then parses it with ``safetensors.torch.load_file`` (which never unpickles).

    Raises CheckpointError (missing file, wrong format/version/kind, unparsable tensors file) and its
    subclass IntegrityError (size or sha256 mismatch, naming the file, expected and actual values).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory} (not a directory)")
    for name in (META_FILE, TENSORS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing {name} (not a checkpoint, or an incomplete one)")
    record = read_bundle_meta(directory, kind=kind)
    tensors_path = directory / TENSORS_FILE
    actual_size = tensors_path.stat().st_size
    if actual_size != record["tensors_bytes"]:
        raise IntegrityError(
            f"{tensors_path}: size mismatch: expected {record['tensors_bytes']} bytes (meta.json), "
            f"actual {actual_size}"
        )
    actual_digest = sha256_file(tensors_path)
    if actual_digest != record["tensors_sha256"]:
        raise IntegrityError(
            f"{tensors_path}: sha256 mismatch: expected {record['tensors_sha256']}, actual {actual_digest}"
        )
    try:
        tensors = safetensors.torch.load_file(str(tensors_path), device=str(torch.device(device)))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{tensors_path}: not a valid safetensors file: {e}") from e
    return tensors, record["meta"]


# ---------------------------------------------------------------------------------------------------------
# Resumable training state
# ---------------------------------------------------------------------------------------------------------


def optimizer_state_to_bundle(
    state_dict: Mapping[str, Any], prefix: str = "optim."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a ``torch.optim`` state dict into ``(tensors, meta)`` for :func:`save_bundle`.

    Every tensor (Adam's ``exp_avg``, ``exp_avg_sq``, the ``step`` tensor, a tensor ``lr``) is copied to
    CPU under a key ``prefix + <path>`` (e.g. ``"optim.state.0.exp_avg"``); everything else is encoded
    with :func:`to_json_value`, which keeps int state keys, ``betas`` tuples and non-finite floats exact.
    Merge the tensors into the bundle's and put ``meta`` anywhere in the bundle's meta.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = _Encoder("optimizer state", tensors, prefix).encode(dict(state_dict))
    return tensors, meta


def optimizer_state_from_bundle(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], prefix: str = "optim."
) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_bundle`: a state dict for ``optimizer.load_state_dict``.

    Only ``meta["state"]`` and ``meta["param_groups"]`` are read (all a torch optimizer state dict holds),
    so the optimizer's meta may be merged into a larger dict as well as nested in one.

    Raises CheckpointError if they are missing, or refer to a tensor that is missing or outside ``prefix``.
    """
    missing = [k for k in ("state", "param_groups") if k not in meta]
    if missing:
        raise CheckpointError(f"optimizer state: missing {' and '.join(repr(k) for k in missing)} in meta")
    own = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    decoder = _Decoder("optimizer state", own)
    return {k: decoder.decode(meta[k], k) for k in ("state", "param_groups")}


def scheduler_state_to_json(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Encode an LR scheduler state dict as strict JSON (MultiStepLR's ``milestones`` Counter,
    ReduceLROnPlateau's ``inf``, tuples, ... survive). Raises CheckpointError on e.g. a lambda."""
    return dict(_Encoder("scheduler state").encode(dict(sd)))


def scheduler_state_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`scheduler_state_to_json`, ready for ``scheduler.load_state_dict``."""
    return dict(_Decoder("scheduler state").decode(dict(d)))


def generator_state_to_tensor(g: torch.Generator) -> torch.Tensor:
    """The state of a torch generator (CPU or CUDA) as a 1-D uint8 CPU tensor, for a bundle's tensors."""
    return g.get_state().detach().to("cpu", copy=True)


def generator_state_from_tensor(
    state: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Generator:
    """Set ``state`` on ``generator`` (a new CPU generator if None) and return it.

    Raises CheckpointError if ``state`` is not a 1-D uint8 tensor valid for that generator.
    """
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise CheckpointError(
            f"generator state must be a 1-D uint8 tensor, got {state.dtype} of shape {tuple(state.shape)}"
        )
    g = torch.Generator() if generator is None else generator
    try:
        g.set_state(state.detach().to("cpu").contiguous())
    except RuntimeError as e:
        raise CheckpointError(f"not a valid state for a {g.device} generator: {e}") from e
    return g


# Closed registry: a name in a file never selects arbitrary code.
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def numpy_generator_state_to_json(rng: np.random.Generator) -> dict[str, Any]:
    """``rng.bit_generator.state`` as strict JSON; 128-bit PCG64 ints are stored as decimal strings."""
    return dict(_Encoder("numpy generator state").encode(rng.bit_generator.state))


def numpy_generator_state_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`numpy_generator_state_to_json`: assign it to ``rng.bit_generator.state``."""
    state = _Decoder("numpy generator state").decode(dict(d))
    if not isinstance(state, dict) or state.get("bit_generator") not in _BIT_GENERATORS:
        name = state.get("bit_generator") if isinstance(state, dict) else None
        raise CheckpointError(
            f"numpy generator state: unknown bit generator {name!r} (known: {', '.join(_BIT_GENERATORS)})"
        )
    return state


def numpy_generator_from_json(d: Mapping[str, Any]) -> np.random.Generator:
    """A new ``np.random.Generator`` in the state stored by :func:`numpy_generator_state_to_json`."""
    state = numpy_generator_state_from_json(d)
    bit_generator = _BIT_GENERATORS[state["bit_generator"]]()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"numpy generator state: invalid {state['bit_generator']} state: {e}") from e
    return np.random.Generator(bit_generator)
