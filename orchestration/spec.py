"""The sweep file: a strict pydantic model of ``sweeps/*.yaml`` and :func:`load_spec`.

A sweep file is read with ``yaml.safe_load`` and validated in two passes; every problem of a pass
is reported at once, one line each, as ``<file>: <dotted.field>: <message> (got <value>)``:

1. structure — unknown fields (with a "did you mean"), types, ranges of single fields, unknown
   data set names (:class:`SweepSpec` and its section models, all ``extra="forbid"``);
2. consistency — rules that span fields or need the core's own checks: the protocol (built as a
   :class:`deepsad.data.splits.Protocol`), the network and every ``rep_dim`` the search may try
   (built as :class:`deepsad.networks.NetConfig` for registry data sets), the search space's
   bounds, grid vs. sampled search, ``device`` vs. ``gpus_per_trial``. A check runs when the
   sections it reads passed pass 1, so most problems still show up together.

An ``ablation:`` section (see :class:`AblationSpec`) turns a file into a grid of *cells*: the product of
its axes (protocol fields, data sets) × ``seeds`` × ``methods``, each run once (one Tune trial). With it,
``search`` is optional and reads as a grid over the cells: ``algorithm`` may only be absent (or
``grid``), ``num_trials`` and ``scheduler`` must be absent, and ``search.space`` is what policy ``tuned``
tunes inside each cell (required then; not allowed with policy ``fixed``, which trains the file's own
hyperparameters). ``protocol`` and ``data`` may leave out the fields an axis gives (giving one in both
places is an error); when ``normal_classes`` and ``known_anomaly_classes`` are both axes, the
combinations where they overlap are left out of the grid.

Nothing here loads data or trains: :func:`orchestration.plan.validate_spec` (and
:func:`orchestration.ablation.validate_ablation`) do the checks that need the data. Paths in the file (``data.dataset`` files, ``data.data_dir``, ``storage``) are relative to
the *current directory* of the command (:attr:`SweepSpec.base_dir`), not to the sweep file, so that
``data_dir: ../shared/data`` means the same in every sweep file. This module imports only pydantic
and yaml at module level (the CLI imports it while building ``--help``); the core is imported when
a file is validated.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from deepsad.errors import ConfigError

#: The hyperparameters a search may vary (a closed set; ``ae_*`` apply to pretraining).
SPACE_KEYS: tuple[str, ...] = ("eta", "rep_dim", "weight_decay", "lr", "ae_lr", "ae_weight_decay")
#: Search keys that change the autoencoder, so the AE cache cannot share across their values.
AE_KEYS: frozenset[str] = frozenset({"rep_dim", "ae_lr", "ae_weight_decay"})
NetName = Literal["mnist_lenet", "fmnist_lenet", "cifar10_lenet", "mlp"]
DISTRIBUTIONS: tuple[str, ...] = ("log_uniform", "uniform", "int_uniform", "choice")

# One sample's shape per registry data set, so that networks (and trial keys) can be built without
# loading the data; plan.validate_spec checks it against the loaded data.
REGISTRY_SAMPLE_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (1, 28, 28),
    "fmnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "arrhythmia": (274,),
    "cardio": (21,),
    "satellite": (36,),
    "satimage-2": (36,),
    "shuttle": (9,),
    "thyroid": (6,),
    "digits": (64,),
    "breast_cancer": (30,),
}


#: Where sweeps live when neither the file nor the command line says (relative to the current directory).
DEFAULT_STORAGE = "runs/sweeps"


def is_data_file(dataset: str) -> bool:
    """Whether ``data.dataset`` names a user's ``.npz``/``.csv`` file rather than a registry set."""
    return dataset.lower().endswith((".npz", ".csv"))


# --------------------------------------------------------------------------- problems


_NO_VALUE: Any = object()


@dataclass(frozen=True)
class Problem:
    """One problem of a sweep file: the dotted field, what is wrong, and the offending value."""

    field: str
    message: str
    value: Any = _NO_VALUE

    def format(self, source: str) -> str:
        where = f"{source}: {self.field}: " if self.field else f"{source}: "
        got = "" if self.value is _NO_VALUE else f" (got {show(self.value)})"
        return f"{where}{self.message}{got}"


def problems_error(source: str, problems: list[Problem]) -> ConfigError:
    """A :class:`ConfigError` listing ``problems`` one per line (duplicates dropped, order kept)."""
    lines = list(dict.fromkeys(p.format(source) for p in problems))
    return ConfigError("\n".join(lines))


def show(value: Any, limit: int = 80) -> str:
    """``value`` as a user wrote it in YAML (``null``, ``true``, ``[1, 2]``, bare strings), cut short."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value if value and value.strip() == value and value.isprintable() else repr(value)
    elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        text = str(int(value))  # YAML's `0` reaches pass 2 as 0.0; show what the user wrote
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k}: {show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the models


def _no_bool(v: Any) -> Any:
    # pydantic's lax mode reads `true` as 1; a boolean where a number belongs is always a slip.
    if isinstance(v, bool):
        raise ValueError("must be a number")
    return v


# Lax (not strict) numbers on purpose: PyYAML reads `1e-4` (no dot) as a string, and lax mode
# turns it into the float the user meant.
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def dataset_name(v: str) -> str:
    """A registry name (aliases resolved) or a data file path, as given; ValueError for anything else."""
    if is_data_file(v):
        return v
    from deepsad.data.sources import ALIASES, DATASETS

    key = v.strip().lower()
    key = ALIASES.get(key, key)
    if key in DATASETS:
        return key
    near = difflib.get_close_matches(key, [*DATASETS, *ALIASES], n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    raise ValueError(f"unknown data set; {hint}known: {', '.join(DATASETS)}, or a .npz/.csv file path")


class DataSpec(_Section):
    """``data``: a registry name (aliases resolve to it) or a ``.npz``/``.csv`` path, and its directory."""

    dataset: str
    data_dir: str | None = None

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        return dataset_name(v)


class ProtocolSpec(_Section):
    """``protocol``: :class:`deepsad.data.splits.Protocol` without ``seed`` (seeds come from ``seeds``).

    Ranges are checked by ``Protocol`` itself in the second pass.
    """

    normal_classes: tuple[Int, ...]
    known_anomaly_classes: tuple[Int, ...] | None = None
    n_known_outlier_classes: Int = 1
    n_labeled_anomalies: Int | None = None
    ratio_known_outlier: Float = 0.0
    ratio_pollution: Float = 0.0
    ratio_known_normal: Float = 0.0
    val_fraction: Float = 0.15
    test_fraction: Float = 0.4


class NetSpec(_Section):
    """``net``: overrides of the data set's reference network (missing values keep the reference's)."""

    name: NetName | None = None
    rep_dim: Int | None = Field(default=None, ge=1)
    h_dims: tuple[Annotated[Int, Field(ge=1)], ...] | None = Field(default=None, min_length=1)


class _OptimSpec(_Section):
    # Defaults are deepsad.training.OptimConfig's (a test keeps them equal).
    lr: Float = Field(default=1e-4, gt=0)
    epochs: Int = Field(default=150, ge=1)
    milestones: tuple[Int, ...] = (50,)
    batch_size: Int = Field(default=128, ge=2)
    weight_decay: Float = Field(default=0.5e-6, ge=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(m < 1 for m in v) or list(v) != sorted(set(v)):
            raise ValueError("must be increasing positive epochs")
        return v


class TrainSpec(_OptimSpec):
    """``train``: the Deep SAD phase — η, its optimiser, the device and numerics."""

    eta: Float = Field(default=1.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: Annotated[bool, Field(strict=True)] = False
    reference_compat: Annotated[bool, Field(strict=True)] = False


class PretrainSpec(_OptimSpec):
    """``pretrain``: the autoencoder's optimiser (``pretrain: null`` turns pretraining off)."""

    weight_decay: Float = Field(default=0.5e-3, ge=0)


class LogUniform(_Section):
    """Uniform in log space on ``[low, high]``, ``0 < low < high``."""

    distribution: Literal["log_uniform"]
    low: Float
    high: Float


class Uniform(_Section):
    """Uniform on ``[low, high]``."""

    distribution: Literal["uniform"]
    low: Float
    high: Float


class IntUniform(_Section):
    """An integer in ``[low, high]``, both included."""

    distribution: Literal["int_uniform"]
    low: Int
    high: Int


class Choice(_Section):
    """One of ``values`` (non-empty, no repeats); the only distribution grid search takes."""

    distribution: Literal["choice"]
    values: tuple[Annotated[int | float, BeforeValidator(_no_bool)], ...] = Field(min_length=1)


Distribution = Annotated[LogUniform | Uniform | IntUniform | Choice, Field(discriminator="distribution")]


class SpaceSpec(_Section):
    """``search.space``: one distribution per searched hyperparameter (keys: :data:`SPACE_KEYS`)."""

    eta: Distribution | None = None
    rep_dim: Distribution | None = None
    weight_decay: Distribution | None = None
    lr: Distribution | None = None
    ae_lr: Distribution | None = None
    ae_weight_decay: Distribution | None = None

    def items(self) -> list[tuple[str, LogUniform | Uniform | IntUniform | Choice]]:
        """The searched entries, in :data:`SPACE_KEYS` order."""
        return [(k, d) for k in SPACE_KEYS if (d := getattr(self, k)) is not None]


class ObjectiveSpec(_Section):
    metric: str = "val_auroc"
    mode: Literal["max"] = "max"

    @field_validator("metric")
    @classmethod
    def _validation_only(cls, v: str) -> str:
        if v.startswith("test"):
            raise ValueError("test metrics may not be tuned on — use val_auroc or val_ap")
        if v not in ("val_auroc", "val_ap"):
            raise ValueError("must be val_auroc or val_ap")
        return v


class SchedulerSpec(_Section):
    """``search.scheduler``: ASHA early stopping; its time unit is the reported Deep SAD epoch."""

    type: Literal["asha"]
    grace_period: Int = Field(default=1, ge=1)
    reduction_factor: Float = Field(default=2.0, gt=1)


class SearchSpec(_Section):
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    seed: Int = Field(default=0, ge=0)
    num_trials: Int | None = Field(default=None, ge=1)
    space: SpaceSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    scheduler: SchedulerSpec | None = None


class ResourcesSpec(_Section):
    cpus_per_trial: Float = Field(default=1.0, gt=0)
    gpus_per_trial: Float = Field(default=0.0, ge=0)
    workers_per_trial: Int = Field(default=1, ge=1)
    max_concurrent_trials: Int = Field(default=1, ge=1)
    max_failures: Int = Field(default=2, ge=0)
    # a trial checkpoints at the end of each phase and otherwise at most this often (0: every epoch);
    # tiny epochs would spend more time checkpointing than training
    checkpoint_interval_s: Float = Field(default=10.0, ge=0)
    # many trials per process (deepsad.bundle): compatible trials train together, K at a time, each
    # exactly as alone. An integer caps K; "auto" sizes bundles to the device's memory (GPU) or 8 (CPU).
    bundle_size: Int | Literal["auto"] = 1

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("fractions of a GPU are only possible below 1")
        return v


Method = Literal["deepsad", "deepsvdd", "isoforest", "ocsvm"]
METHODS: tuple[str, ...] = ("deepsad", "deepsvdd", "isoforest", "ocsvm")
#: The ablation axes, in the order the grid nests them (the last varies fastest).
AXES: tuple[str, ...] = (
    "dataset", "normal_classes", "known_anomaly_classes", "n_known_outlier_classes",
    "n_labeled_anomalies", "ratio_known_outlier", "ratio_pollution",
)  # fmt: skip
#: The axes that are fields of ``protocol``.
PROTOCOL_AXES: tuple[str, ...] = AXES[1:]
_Classes = tuple[Int, ...]


class AxesSpec(_Section):
    """``ablation.axes``: each a non-empty list of values without repeats; absent axes keep the
    ``protocol``/``data`` value. ``known_anomaly_classes`` values may be ``null`` (drawn at random)."""

    dataset: tuple[str, ...] | None = Field(default=None, min_length=1)
    normal_classes: tuple[_Classes, ...] | None = Field(default=None, min_length=1)
    known_anomaly_classes: tuple[_Classes | None, ...] | None = Field(default=None, min_length=1)
    n_known_outlier_classes: tuple[Int, ...] | None = Field(default=None, min_length=1)
    n_labeled_anomalies: tuple[Int, ...] | None = Field(default=None, min_length=1)
    ratio_known_outlier: tuple[Float, ...] | None = Field(default=None, min_length=1)
    ratio_pollution: tuple[Float, ...] | None = Field(default=None, min_length=1)

    @field_validator("dataset")
    @classmethod
    def _datasets(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(dataset_name(d) for d in v)

    @field_validator("*")
    @classmethod
    def _no_repeats(cls, v: Any) -> Any:
        if v is not None:
            repeated = [x for i, x in enumerate(v) if x in v[:i]]
            if repeated:
                raise ValueError(f"value {show(repeated[0])} is repeated")
        return v

    def items(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The given axes and their values, in :data:`AXES` order."""
        return [(k, v) for k in AXES if (v := getattr(self, k)) is not None]


class AblationSpec(_Section):
    """``ablation``: axes × seeds × methods form the cells; each cell trains the file's hyperparameters
    (policy ``fixed``) or tunes ``search.space`` on its validation part with ``budget`` trainings
    (policy ``tuned``; Deep SAD and Deep SVDD only — the baselines always choose their own)."""

    axes: AxesSpec = AxesSpec()
    methods: tuple[Method, ...] = Field(default=("deepsad",), min_length=1)
    policy: Literal["fixed", "tuned"] = "fixed"
    budget: Int | None = Field(default=None, ge=1)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        repeated = [m for i, m in enumerate(v) if m in v[:i]]
        if repeated:
            raise ValueError(f"method {repeated[0]} is repeated")
        return v


class SweepSpec(_Section):
    """A whole sweep file. Build it with :func:`load_spec` (or :func:`parse_spec`)."""

    name: str
    description: str | None = None
    data: DataSpec
    protocol: ProtocolSpec
    net: NetSpec | None = None
    train: TrainSpec = TrainSpec()
    pretrain: PretrainSpec | None = PretrainSpec()
    search: SearchSpec
    seeds: tuple[Annotated[Int, Field(ge=0)], ...] = Field(default=(0,), min_length=1)
    resources: ResourcesSpec = ResourcesSpec()
    storage: str | None = None
    ablation: AblationSpec | None = None

    _source: str = PrivateAttr(default="<sweep>")
    _base_dir: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """The file the spec was read from, as given (prefixes every error message)."""
        return self._source

    @property
    def base_dir(self) -> str:
        """The absolute directory relative paths in the file are taken from: the ``base_dir`` given to
        :func:`parse_spec`, else the current directory when the file was read."""
        return self._base_dir or os.getcwd()

    @field_validator("name")
    @classmethod
    def _directory_name(cls, v: str) -> str:
        # It names a directory under the storage root: no separators, no "." / ".." / hidden names.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v.startswith("."):
            raise ValueError(
                "must be letters, digits, '_', '.', '-' and not start with '.' (it names the sweep's directory)"
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        repeated = [s for s in dict.fromkeys(v) if v.count(s) > 1]
        if repeated:
            raise ValueError(f"seed {repeated[0]} is repeated")
        return v


# --------------------------------------------------------------------------- loading


def load_spec(path: Path, *, base_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; relative paths in it are relative to ``base_dir`` (default:
    the current directory).

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML or not a mapping, or has
            problems; the message has one line per problem, each prefixed with ``path``.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
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
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{source}: {where}invalid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from e
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
        problems = _structure_problems(e)
        bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
        problems += _consistency({**_valid_sections(raw, bad), "given": given})
        raise problems_error(source, problems) from None
    problems = _consistency({**{name: getattr(spec, name) for name in SweepSpec.model_fields}, "given": given})
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
        out["search"] = {"algorithm": "grid", **search}
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
    from pydantic import TypeAdapter

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


# --------------------------------------------------------------------------- pydantic errors → lines


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


def _structure_problems(error: ValidationError) -> list[Problem]:
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
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input", _NO_VALUE)
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


# --------------------------------------------------------------------------- pass 2: consistency


Check = Callable[[dict[str, Any]], Iterator[Problem]]
_CHECKS: list[tuple[tuple[str, ...], Check]] = []


def _check(*sections: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        _CHECKS.append((sections, fn))
        return fn

    return register


def _consistency(sections: dict[str, Any]) -> list[Problem]:
    return [p for needs, fn in _CHECKS if all(s in sections for s in needs) for p in fn(sections)]


@_check("protocol")
def _protocol(s: dict[str, Any]) -> Iterator[Problem]:
    from deepsad.data.splits import Protocol

    ablation: AblationSpec | None = s.get("ablation")
    if ablation is None or not any(k in PROTOCOL_AXES for k, _ in ablation.axes.items()):
        try:
            Protocol(**s["protocol"].model_dump(), seed=0)
        except ConfigError as e:
            yield from protocol_problems(e)
        return
    combos = list(protocol_combinations(s["protocol"], ablation.axes))
    if not combos:
        yield Problem("ablation.axes", "every normal_classes value overlaps every known_anomaly_classes value; "
                      "no cell is left")  # fmt: skip
    for combo in combos:
        try:
            Protocol(**{**s["protocol"].model_dump(), **{k: v for k, (_, v) in combo.items()}}, seed=0)
        except ConfigError as e:
            yield from (_on_axis(p, combo) for p in protocol_problems(e))


def protocol_combinations(
    protocol: ProtocolSpec, axes: AxesSpec
) -> Iterator[dict[str, tuple[int, Any]]]:
    """Every combination of the protocol axes as ``{axis: (index, value)}``, in grid order (last axis
    fastest); combinations whose normal and known anomaly classes overlap are left out when both are
    axes (when only one is, an overlap is an error of that value)."""
    entries = [(k, v) for k, v in axes.items() if k in PROTOCOL_AXES]
    for picks in itertools.product(*[list(enumerate(v)) for _, v in entries]):
        combo = {k: pick for (k, _), pick in zip(entries, picks, strict=True)}
        normal, known = combo.get("normal_classes"), combo.get("known_anomaly_classes")
        if normal is not None and known is not None and set(normal[1]) & set(known[1] or ()):
            continue
        yield combo


def _on_axis(problem: Problem, combo: Mapping[str, tuple[int, Any]]) -> Problem:
    """A ``protocol.<field>`` problem as one of the axis value that caused it, when an axis set it."""
    name = problem.field.removeprefix("protocol.")
    head = name.split(" ", 1)[0]
    if head == "known_anomaly_classes" and head not in combo and "normal_classes" in combo:
        # the fixed known classes overlap this normal-classes value: the value is what to change
        index, _ = combo["normal_classes"]
        return Problem(f"ablation.axes.normal_classes[{index}]", f"protocol.{head}: {problem.message}")
    if head not in combo:
        return problem
    index, _ = combo[head]
    message = problem.message if name == head else f"{name}: {problem.message}"
    return Problem(f"ablation.axes.{head}[{index}]", message)


def protocol_problems(error: ConfigError) -> list[Problem]:
    """A :class:`~deepsad.data.splits.Protocol` error as problems of ``protocol.<field>``."""
    problems = []
    # Protocol joins its problems with "; " and starts each with "protocol.<field>: ".
    for line in re.split(r"; (?=protocol\.)", str(error)):
        field, _, message = line.partition(": ")
        problems.append(
            Problem(field, message) if field.startswith("protocol.") else Problem("protocol", line)
        )
    return problems


# The smallest value of each searched hyperparameter: (comparison, bound).
_KEY_BOUNDS: dict[str, tuple[str, float]] = {
    "eta": (">", 0.0),
    "lr": (">", 0.0),
    "ae_lr": (">", 0.0),
    "weight_decay": (">=", 0.0),
    "ae_weight_decay": (">=", 0.0),
    "rep_dim": (">=", 1.0),
}


@_check("search")
def _space(s: dict[str, Any]) -> Iterator[Problem]:
    search: SearchSpec = s["search"]
    # "ablation" is missing from s when that section is broken: then neither kind of check is sure
    ablation = s.get("ablation", _NO_VALUE)
    if not search.space.items() and ablation is None:
        yield Problem(
            "search.space", f"empty — nothing to search; give at least one of {', '.join(SPACE_KEYS)}", {}
        )
    for key, dist in search.space.items():
        at = f"search.space.{key}"
        op, bound = _KEY_BOUNDS[key]

        def out_of_bounds(v: float, op: str = op, bound: float = bound) -> bool:
            return not (v > bound if op == ">" else v >= bound)

        shown_bound = int(bound) if bound == int(bound) else bound
        if key == "rep_dim" and isinstance(dist, LogUniform | Uniform):
            yield Problem(
                f"{at}.distribution", "rep_dim is an integer; use int_uniform or choice", dist.distribution
            )
            continue
        if key != "rep_dim" and isinstance(dist, IntUniform):
            yield Problem(
                f"{at}.distribution",
                f"{key} is continuous; use log_uniform, uniform or choice",
                dist.distribution,
            )
            continue
        if isinstance(dist, Choice):
            for i, v in enumerate(dist.values):
                if key == "rep_dim" and not isinstance(v, int):
                    yield Problem(f"{at}.values[{i}]", "must be an integer", v)
                elif out_of_bounds(v):
                    yield Problem(f"{at}.values[{i}]", f"must be {op} {shown_bound}", v)
            repeated = [v for v in dict.fromkeys(dist.values) if list(dist.values).count(v) > 1]
            if repeated:
                yield Problem(f"{at}.values", f"value {show(repeated[0])} is repeated", list(dist.values))
            continue
        if isinstance(dist, LogUniform) and dist.low <= 0 and op == ">=":
            # the key itself allows 0 (a weight decay), a log scale does not
            yield Problem(f"{at}.low", "must be > 0 for log_uniform (use uniform to include 0)", dist.low)
        elif out_of_bounds(dist.low):
            yield Problem(f"{at}.low", f"must be {op} {shown_bound}", dist.low)
        elif dist.high <= dist.low:
            yield Problem(f"{at}.high", f"must be > low ({show(dist.low)})", dist.high)

    if ablation is not None:
        return  # the cells are a grid whatever the space holds: see _ablation
    if search.algorithm == "grid":
        for key, dist in search.space.items():
            if not isinstance(dist, Choice):
                yield Problem(
                    f"search.space.{key}", "grid search needs a choice of values", f"{dist.distribution}"
                )
        if search.num_trials is not None:
            yield Problem(
                "search.num_trials", "grid runs every combination; remove num_trials", search.num_trials
            )
    elif search.num_trials is None:
        yield Problem(
            "search.num_trials", f"missing (required for {search.algorithm}: how many configurations to try)"
        )


@_check("search", "pretrain")
def _ae_space(s: dict[str, Any]) -> Iterator[Problem]:
    if s["pretrain"] is not None:
        return
    for key, _ in s["search"].space.items():
        if key.startswith("ae_"):
            yield Problem(
                f"search.space.{key}",
                "pretraining is off (pretrain: null), so there is no autoencoder to tune",
            )


@_check("search", "train")
def _scheduler(s: dict[str, Any]) -> Iterator[Problem]:
    scheduler, epochs = s["search"].scheduler, s["train"].epochs
    if scheduler is not None and scheduler.grace_period > epochs:
        yield Problem(
            "search.scheduler.grace_period", f"must be <= train.epochs ({epochs})", scheduler.grace_period
        )


@_check("search", "resources")
def _bundles(s: dict[str, Any]) -> Iterator[Problem]:
    size, search, res = s["resources"].bundle_size, s["search"], s["resources"]
    if size == 1:
        return
    if isinstance(size, int) and size < 1:
        yield Problem("resources.bundle_size", "must be >= 1 or auto", size)
        return
    if search.algorithm == "tpe" and s.get("ablation") is None:
        yield Problem("resources.bundle_size", "bundles pack trials planned up front: use search.algorithm grid "
                      "or random (TPE suggests one configuration at a time)", size)  # fmt: skip
    if search.scheduler is not None:
        yield Problem("resources.bundle_size", "a bundle trains its members to the end together; remove "
                      "search.scheduler", size)  # fmt: skip
    if res.workers_per_trial > 1:
        yield Problem("resources.bundle_size", "bundles run in one process; workers_per_trial must be 1", size)


@_check("train", "resources")
def _device(s: dict[str, Any]) -> Iterator[Problem]:
    if s["train"].device == "cuda" and s["resources"].gpus_per_trial == 0:
        yield Problem("train.device", "cuda needs resources.gpus_per_trial > 0", "cuda")


def rep_dim_candidates(space: SpaceSpec, fixed: int) -> list[tuple[str, int]]:
    """Every ``rep_dim`` a sweep may build, with the field it comes from (int_uniform: every integer)."""
    dist = space.rep_dim
    if dist is None:
        return [("net.rep_dim", fixed)]
    if isinstance(dist, Choice):
        return [(f"search.space.rep_dim.values[{i}]", int(v)) for i, v in enumerate(dist.values)]
    if isinstance(dist, IntUniform):
        span = range(int(dist.low), int(dist.high) + 1)
        return [("search.space.rep_dim", v) for v in itertools.islice(span, 4096)]
    return []


def net_problem(message: str, rep_field: str) -> Problem:
    """A core :class:`~deepsad.networks.NetConfig` error as a problem of the field it is about."""
    field, _, rest = message.partition(": ")
    if field == "rep_dim":
        return Problem(rep_field, rest)
    if field.startswith("net") and "h_dims" in rest:
        return Problem("net.h_dims", message)
    return Problem("net.name", message)


@_check("data", "net", "search")
def _networks(s: dict[str, Any]) -> Iterator[Problem]:
    ablation: AblationSpec | None = s.get("ablation")
    datasets = (ablation.axes.dataset if ablation is not None else None) or (s["data"].dataset,)
    from deepsad.networks import NetConfig

    for dataset in datasets:
        if is_data_file(dataset):
            continue  # the sample shape is known once the file is loaded: plan.validate_spec checks it
        shape = REGISTRY_SAMPLE_SHAPES[dataset]
        try:
            name, rep_dim, h_dims = net_fields(dataset, shape, s["net"])
        except ConfigError as e:
            yield Problem("net.name", f"{dataset}: {e}")
            continue
        for field, rep in rep_dim_candidates(s["search"].space, rep_dim):
            try:
                NetConfig(name=name, rep_dim=rep, input_shape=shape, h_dims=h_dims)
            except ConfigError as e:
                yield net_problem(str(e), field)
                if field == "search.space.rep_dim":
                    break  # int_uniform: the first bad integer says it all


@_check("ablation", "given")
def _ablation(s: dict[str, Any]) -> Iterator[Problem]:
    ablation: AblationSpec | None = s["ablation"]
    if ablation is None:
        return
    given: dict[str, frozenset[str]] = s["given"]
    has_search = "search" in given[""]
    if ablation.policy == "tuned":
        if not has_search:
            yield Problem("ablation.policy", "tuned needs search.space: the hyperparameters to tune in each cell",
                          "tuned")  # fmt: skip
        if ablation.budget is None:
            yield Problem("ablation.budget", "missing (required for policy tuned: the trainings per cell)")
    else:
        if has_search:
            yield Problem("search", "policy fixed trains the file's own hyperparameters; remove search, or set "
                          "ablation.policy: tuned")  # fmt: skip
        if ablation.budget is not None:
            yield Problem("ablation.budget", "only policy tuned has a budget; remove it", ablation.budget)
    search = s.get("search")
    if has_search and search is not None:
        if search.algorithm != "grid":
            yield Problem("search.algorithm", "an ablation runs its cells as a grid (policy tuned: a TPE study "
                          "inside each cell); remove algorithm", search.algorithm)  # fmt: skip
        if search.num_trials is not None:
            yield Problem("search.num_trials", "ablation.budget sets the trainings per cell; remove num_trials",
                          search.num_trials)  # fmt: skip
        if search.scheduler is not None:
            yield Problem("search.scheduler", "ablation cells train to the end; remove scheduler")
        if ablation.policy == "tuned" and not search.space.items():
            yield Problem("search.space", f"empty — nothing to tune; give at least one of {', '.join(SPACE_KEYS)}",
                          {})  # fmt: skip
    for axis, _ in ablation.axes.items():
        section = "data" if axis == "dataset" else "protocol"
        if axis in given[section]:
            yield Problem(f"ablation.axes.{axis}", f"also given as {section}.{axis}; give it in one place")
    resources = s.get("resources")
    if resources is not None and resources.workers_per_trial > 1:
        yield Problem("resources.workers_per_trial", "ablation cells run in one process each; must be 1",
                      resources.workers_per_trial)  # fmt: skip


def net_fields(
    dataset: str, sample_shape: tuple[int, ...], net: NetSpec | None
) -> tuple[str, int, tuple[int, ...]]:
    """``(name, rep_dim, h_dims)`` of a sweep's network: the data set's reference network
    (:func:`deepsad.networks.default_net_config`) with the file's ``net`` overrides. A network other
    than the data set's default starts from its own reference sizes (its first data set in
    ``DEFAULT_NETS``). Nothing is validated here: building the ``NetConfig`` does that.

    Raises:
        ConfigError: an image shape that no network takes (from ``default_net_config``).
    """
    from deepsad.networks import DEFAULT_NETS, default_net_config

    base = default_net_config(dataset, tuple(sample_shape))
    name, rep, h_dims = base.name, base.rep_dim, tuple(base.h_dims)
    if net is not None and net.name is not None and net.name != base.name:
        name = net.name
        rep, h_dims = next(((r, h) for n, r, h in DEFAULT_NETS.values() if n == name), (32, ()))
    if net is not None:
        rep = net.rep_dim if net.rep_dim is not None else rep
        h_dims = tuple(net.h_dims) if net.h_dims is not None else h_dims
    return name, int(rep), h_dims
