"""A sweep's identity: what a resubmitted sweep file may change under an existing name.

A sweep directory (``<storage>/<name>/``) holds the results of one sweep file (its ``spec.yaml``).
Submitting a file under the same name and storage again may only **grow** that sweep — run more of
the same experiment — and never change what its finished trials mean:

* ``seeds``: more seeds (grid, random and ablation sweeps; a TPE study scores each configuration by
  its mean over the seeds, so its seeds stay as they are);
* ``search.num_trials``: larger (random search draws the same first configurations; TPE goes on);
* ``search.space.<key>.values`` of a grid search: more values;
* ``ablation.axes.<axis>`` and ``ablation.methods``: more values (the axis and the method are part
  of each cell's key, so the cells done stay done).

Fields that say where or how a sweep runs, not what it computes, may change freely:
``description``, ``storage``, ``data.data_dir``, ``train.device`` and ``resources``. Everything
else — the data set, the protocol, the network, the optimisers, the search algorithm, its seed, its
space and objective, the scheduler, the ablation's policy and budget — must be equal, and any
difference is refused (:func:`check_identity`) with one line per field, before anything starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from deepsad.errors import ConfigError, DeepSADError
from deepsad.jsonio import load_json_bounded
from orchestration.spec.load import parse_spec
from orchestration.spec.model import PROTOCOL_AXES, SweepSpec, show

if TYPE_CHECKING:
    from orchestration.store.storage import Storage

#: Fields (and sections) that may differ between the stored and the new file.
FREE: tuple[str, ...] = ("description", "storage", "data.data_dir", "train.device", "resources")

_ABSENT: Any = object()


def differences(stored: SweepSpec, new: SweepSpec) -> list[str]:
    """The changes from ``stored`` to ``new`` that are not allowed under the same sweep name, one line
    per field, ``<dotted.field>: <why> (stored <value>, now <value>)``; empty when ``new`` only grows
    ``stored`` or changes what may change (see the module's docstring). Pure: reads no files.
    """
    axes = {axis for spec in (stored, new) if spec.ablation is not None for axis, _ in spec.ablation.axes.items()}
    old, now = _fields(stored, axes), _fields(new, axes)
    lines = []
    for path in [*old, *(p for p in now if p not in old)]:
        a, b = old.get(path, _ABSENT), now.get(path, _ABSENT)
        if _free(path) or _same(a, b):
            continue
        if _choice(a) and _choice(b):  # name the list that differs, show only it
            path, a, b = f"{path}.values", a["values"], b["values"]
        refusal = _growth_refusal(path, a, b, stored, new)
        if refusal is not None:
            lines.append(f"{path}: {refusal} (stored {_show(a)}, now {_show(b)})")
    return lines


def stored_spec(sweep_dir: Storage) -> SweepSpec | None:
    """The spec stored in ``sweep_dir`` by an earlier submit (None: there is none).

    Raises:
        ConfigError: the stored ``spec.yaml`` cannot be read as a sweep file any more.
    """
    from orchestration.store.layout import SPEC_FILE

    if not sweep_dir.exists(SPEC_FILE):
        return None
    where = f"{sweep_dir.uri}/{SPEC_FILE}"
    try:
        text = sweep_dir.read_bytes(SPEC_FILE).decode("utf-8")
        raw = sweep_dir.read_bytes("submission.json") if sweep_dir.exists("submission.json") else b"{}"
        submission = load_json_bounded(raw, f"{sweep_dir.uri}/submission.json", error=ConfigError)
        base_dir = submission.get("base_dir") if isinstance(submission, dict) else None
        return parse_spec(text, where, base_dir=base_dir if isinstance(base_dir, str) else None)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: the stored sweep file cannot be read ({e}); submit under a new name") from e
    except DeepSADError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: the stored sweep file is no longer valid ({first}); submit under a "
                          "new name") from e  # fmt: skip


def check_identity(spec: SweepSpec, sweep_dir: Storage) -> None:
    """Refuse ``spec`` when ``sweep_dir`` holds another sweep under its name (see :func:`differences`).

    Raises:
        ConfigError: one line per differing field, each prefixed with ``spec.source``, and a last
            line saying what to do.
    """
    stored = stored_spec(sweep_dir)
    if stored is None:
        return
    lines = differences(stored, spec)
    if not lines:
        return
    lines = [f"{spec.source}: {line}" for line in lines]
    lines.append(f"{spec.source}: sweep {spec.name} in {sweep_dir.uri} was submitted with another sweep file; "
                 "a resubmit may only add seeds, grid values, ablation axis values or methods, or raise "
                 "num_trials — give the changed sweep a new name (or another --storage)")  # fmt: skip
    raise ConfigError("\n".join(lines))


# --------------------------------------------------------------------------- the comparison


def _fields(spec: SweepSpec, axes: set[str]) -> dict[str, Any]:
    """The spec as ``{dotted.field: value}``: sections flattened, lists and search distributions kept
    whole; the fields that ablation ``axes`` set for each cell (``protocol.<axis>``, ``data.dataset``)
    left out (the axes themselves are compared), and a data file's path made absolute (the file is
    the data set)."""
    dump = spec.model_dump()
    if dump.get("net") is None:
        dump["net"] = {"name": None, "rep_dim": None, "h_dims": None}  # no overrides, either way
    for axis in axes:
        if axis in PROTOCOL_AXES:
            dump["protocol"].pop(axis, None)
        else:
            dump["data"].pop("dataset", None)
    if "dataset" in dump["data"] and _is_file(spec):
        from orchestration.plan.cells import resolve_data

        dump["data"]["dataset"] = resolve_data(spec)[0]
    return dict(_flatten(dump, ""))


def _is_file(spec: SweepSpec) -> bool:
    from orchestration.spec.model import is_data_file

    return is_data_file(spec.data.dataset)


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and "distribution" not in value and (value or not path):
        for k, v in value.items():
            yield from _flatten(v, f"{path}.{k}" if path else str(k))
    else:
        yield path, value


def _free(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return bool(a == b)


def _growth_refusal(path: str, a: Any, b: Any, stored: SweepSpec, new: SweepSpec) -> str | None:
    """Why ``a`` → ``b`` at ``path`` is refused, or None when it only grows the sweep."""
    ablation = stored.ablation is not None and new.ablation is not None
    grid = not ablation and stored.search.algorithm == new.search.algorithm == "grid"
    if path == "seeds":
        if not ablation and new.search.algorithm == "tpe":
            return "a TPE study scores configurations by their mean over the seeds; its seeds cannot change"
        return _superset(a, b, "seeds")
    same = stored.search.algorithm == new.search.algorithm
    if path == "search.num_trials" and not ablation and same and new.search.algorithm in ("tpe", "random"):
        if isinstance(a, int) and isinstance(b, int) and b > a:
            return None
        return "num_trials may only grow"
    if path.startswith("search.space.") and grid:
        if path.endswith(".values"):
            return _superset(a, b, "a grid's values")
        return "a grid's values may only grow; its keys and distributions cannot change"
    if ablation and (path.startswith("ablation.axes.") or path == "ablation.methods"):
        if a is None or b is None:
            return "an axis cannot be added or removed (its values may only grow)"
        return _superset(a, b, "an axis' values" if path != "ablation.methods" else "methods")
    return "differs from the stored sweep"


def _superset(a: Any, b: Any, what: str) -> str | None:
    if not isinstance(a, list | tuple) or not isinstance(b, list | tuple):
        return f"{what} may only grow"
    missing = [v for v in a if v not in b]
    if missing:
        return f"{what} may only grow ({_show(missing[0])} is gone)"
    return None


def _choice(v: Any) -> bool:
    return isinstance(v, Mapping) and v.get("distribution") == "choice"


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    return show(list(value) if isinstance(value, tuple) else value)
