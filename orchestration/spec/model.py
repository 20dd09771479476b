"""The sweep file's model: a strict pydantic model of ``sweeps/*.yaml`` (:class:`SweepSpec` and its
sections, all ``extra="forbid"``), its limits, and :class:`Problem`, one line of what is wrong with a file.

The models check single fields (types, ranges, unknown data set names); the rules that span fields live
in :mod:`orchestration.spec.checks`, and :mod:`orchestration.spec.load` reads a file (both passes, every
problem at once).

An ``ablation:`` section (see :class:`AblationSpec`) turns a file into a grid of *cells*: the product of
its axes (protocol fields, data sets) × ``seeds`` × ``methods``, each run once (one Tune trial). With it,
``search`` is optional and reads as a grid over the cells: ``algorithm`` may only be absent (or
``grid``), ``num_trials`` and ``scheduler`` must be absent, and ``search.space`` is what policy ``tuned``
tunes inside each cell (required then; not allowed with policy ``fixed``, which trains the file's own
hyperparameters). ``protocol`` and ``data`` may leave out the fields an axis gives (giving one in both
places is an error); when ``normal_classes`` and ``known_anomaly_classes`` are both axes, the
combinations where they overlap are left out of the grid.

Paths in the file (``data.dataset`` files, ``data.data_dir``, ``storage``) are relative to the *current
directory* of the command (:attr:`SweepSpec.base_dir`), not to the sweep file, so that
``data_dir: ../shared/data`` means the same in every sweep file. This module imports only pydantic and
:mod:`deepsad.errors` at module level (the CLI imports it while building ``--help``), and no other module of
:mod:`orchestration.spec`: they import it. The core is imported when a data set name is validated.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WrapSerializer,
    WrapValidator,
    field_validator,
)

from deepsad.errors import ConfigError
from deepsad.metrics import VALIDATION_METRICS

#: The hyperparameters a search may vary (a closed set; ``ae_*`` apply to pretraining).
SPACE_KEYS: tuple[str, ...] = ("eta", "rep_dim", "weight_decay", "lr", "ae_lr", "ae_weight_decay")
#: Search keys that change the autoencoder, so the AE cache cannot share across their values.
AE_KEYS: frozenset[str] = frozenset({"rep_dim", "ae_lr", "ae_weight_decay"})
NetName = Literal["mnist_lenet", "fmnist_lenet", "cifar10_lenet", "mlp"]
DISTRIBUTIONS: tuple[str, ...] = ("log_uniform", "uniform", "int_uniform", "choice")

# One sample's shape per registry data set, so that networks (and trial keys) can be built without
# loading the data; preflight.validate_spec checks it against the loaded data.
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


# Upper bounds of the numeric fields: far beyond any sensible value, low enough that a typo (or a
# hostile file) is refused here, naming its field, rather than hours into a sweep. The optimiser's
# and η's are the core's (deepsad.training; a test keeps them accepted there).
#: Seeds seed numpy, scikit-learn and Optuna, which take 0 <= seed < 2**32.
SEED_LIMIT = 2**32
#: Most trials one sweep may plan: num_trials, grid cells × seeds, ablation cells.
MAX_TRIALS = 1_000_000
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_ETA = 1e6
#: Network sizes (rep_dim, h_dims; the paper's are 32-128): deepsad.netconfig.MAX_REP_DIM.
MAX_WIDTH = 4096
#: Counts in the protocol: labelled anomalies, known classes.
MAX_COUNT = 1_000_000_000
#: Values in one list: seeds, choice values, ablation axis values, h_dims, milestones.
MAX_ITEMS = 10_000
MAX_NAME = 100
#: The largest explicit bundle (``auto`` takes at most orchestration.plan.bundles.MAX_BUNDLE).
MAX_BUNDLE_SIZE = 4096


def is_data_file(dataset: str) -> bool:
    """Whether ``data.dataset`` names a user's ``.npz``/``.csv`` file rather than a registry set."""
    return dataset.lower().endswith((".npz", ".csv"))


# --------------------------------------------------------------------------- problems


#: The value of a :class:`Problem` that shows none, and :func:`first_repeat`'s "nothing repeats"
#: (``None`` is a value a file may hold).
NO_VALUE: Any = object()


@dataclass(frozen=True)
class Problem:
    """One problem of a sweep file: the dotted field, what is wrong, and the offending value."""

    field: str
    message: str
    value: Any = NO_VALUE

    def format(self, source: str) -> str:
        where = f"{source}: {self.field}: " if self.field else f"{source}: "
        got = "" if self.value is NO_VALUE else f" (got {show(self.value)})"
        return printable(f"{where}{self.message}{got}")  # field names come from the file too


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, tabs, U+2028, ...) escaped, so
    that a message built from what a file holds stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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
        text = "{" + ", ".join(f"{show(k, limit)}: {show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_repeat(values: tuple[Any, ...] | list[Any]) -> Any:
    """The first value of ``values`` (hashable) that occurs earlier too, else :data:`NO_VALUE`; in linear
    time (a quadratic scan of 10,000 values takes seconds)."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return NO_VALUE


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


Count = Annotated[Int, Field(le=MAX_COUNT)]
_ClassList = Annotated[tuple[Count, ...], Field(max_length=MAX_ITEMS)]


class ProtocolSpec(_Section):
    """``protocol``: :class:`deepsad.data.splits.Protocol` without ``seed`` (seeds come from ``seeds``).

    Ranges are checked by ``Protocol`` itself in the second pass (here only upper bounds of counts).
    """

    normal_classes: _ClassList
    known_anomaly_classes: _ClassList | None = None
    n_known_outlier_classes: Count = 1
    n_labeled_anomalies: Count | None = None
    ratio_known_outlier: Float = 0.0
    ratio_pollution: Float = 0.0
    ratio_known_normal: Float = 0.0
    val_fraction: Float = 0.15
    test_fraction: Float = 0.4


class NetSpec(_Section):
    """``net``: overrides of the data set's reference network (missing values keep the reference's)."""

    name: NetName | None = None
    rep_dim: Int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    h_dims: tuple[Annotated[Int, Field(ge=1, le=MAX_WIDTH)], ...] | None = Field(
        default=None, min_length=1, max_length=64
    )


class _OptimSpec(_Section):
    # Defaults are deepsad.training.OptimConfig's (a test keeps them equal).
    lr: Float = Field(default=1e-4, gt=0, le=MAX_LR)
    epochs: Int = Field(default=150, ge=1, le=MAX_EPOCHS)
    milestones: tuple[Annotated[Int, Field(le=MAX_EPOCHS)], ...] = Field(default=(50,), max_length=MAX_ITEMS)
    batch_size: Int = Field(default=128, ge=2, le=MAX_BATCH_SIZE)
    weight_decay: Float = Field(default=0.5e-6, ge=0, le=MAX_WEIGHT_DECAY)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(m < 1 for m in v) or list(v) != sorted(set(v)):
            raise ValueError("must be increasing positive epochs")
        return v


class TrainSpec(_OptimSpec):
    """``train``: the Deep SAD phase — η, its optimiser, the device and numerics."""

    eta: Float = Field(default=1.0, gt=0, le=MAX_ETA)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast: not a speed option (slower than fp32 for these networks on an H200); precision studies
    bf16: Annotated[bool, Field(strict=True)] = False
    reference_compat: Annotated[bool, Field(strict=True)] = False


class PretrainSpec(_OptimSpec):
    """``pretrain``: the autoencoder's optimiser (``pretrain: null`` turns pretraining off). Defaults
    are :class:`deepsad.training.TrainConfig`'s AE defaults: weight decay 0.5e-3, no milestone."""

    milestones: tuple[Annotated[Int, Field(le=MAX_EPOCHS)], ...] = Field(default=(), max_length=MAX_ITEMS)
    weight_decay: Float = Field(default=0.5e-3, ge=0, le=MAX_WEIGHT_DECAY)


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
    values: tuple[Annotated[int | float, BeforeValidator(_no_bool)], ...] = Field(min_length=1, max_length=MAX_ITEMS)


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
        if v not in VALIDATION_METRICS:
            raise ValueError(f"must be one of {', '.join(VALIDATION_METRICS)} (val_auroc, val_ap: labelled anomalies "
                             "against the rest of the validation part; _oracle: its true labels, for comparison only)")
        return v


class SchedulerSpec(_Section):
    """``search.scheduler``: ASHA early stopping; its time unit is the reported Deep SAD epoch."""

    type: Literal["asha"]
    grace_period: Int = Field(default=1, ge=1, le=MAX_EPOCHS)
    reduction_factor: Float = Field(default=2.0, gt=1, le=1000)


class SearchSpec(_Section):
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    seed: Int = Field(default=0, ge=0, lt=SEED_LIMIT)
    num_trials: Int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    space: SpaceSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    scheduler: SchedulerSpec | None = None


def _keep_auto(v: Any, handler: Any) -> Any:
    """``auto`` as given; anything else validated (serialised) as the field's number (with its bounds)."""
    return v if v == "auto" else handler(v)


class ResourcesSpec(_Section):
    """``resources``. ``auto`` (cpus_per_trial, gpus_per_trial, max_concurrent_trials, bundle_size) is
    sized by the driver from the Ray cluster it runs on (:func:`orchestration.plan.resources.resolve`):
    read :meth:`has_auto` before using these numbers."""

    # typed as numbers: what trials and Tune read is always resolved (auto → numbers) first
    cpus_per_trial: Annotated[Float, Field(gt=0, le=4096), WrapValidator(_keep_auto), WrapSerializer(_keep_auto)] = 1.0
    gpus_per_trial: Annotated[Float, Field(ge=0, le=64), WrapValidator(_keep_auto), WrapSerializer(_keep_auto)] = 0.0
    workers_per_trial: Int = Field(default=1, ge=1, le=4096)
    max_concurrent_trials: Annotated[Int, Field(ge=1, le=MAX_TRIALS), WrapValidator(_keep_auto), WrapSerializer(_keep_auto)] = 1
    max_failures: Int = Field(default=2, ge=0, le=1000)
    # a trial checkpoints at the end of each phase and otherwise at most this often (0: every epoch);
    # tiny epochs would spend more time checkpointing than training
    checkpoint_interval_s: Float = Field(default=10.0, ge=0, le=86_400)
    # many trials per process (deepsad.bundle): compatible trials train together, K at a time, each
    # exactly as alone. An integer caps K; "auto" sizes bundles to the device's memory (GPU) or 8 (CPU).
    bundle_size: Int | Literal["auto"] = 1  # range: spec_checks (a union reports only its last member)

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v != "auto" and v > 1 and v != int(v):
            raise ValueError("fractions of a GPU are only possible below 1")
        return v

    def has_auto(self) -> bool:
        """Whether any field says ``auto`` (the driver resolves it before trials start)."""
        return "auto" in (self.cpus_per_trial, self.gpus_per_trial, self.max_concurrent_trials, self.bundle_size)


Method = Literal["deepsad", "deepsvdd", "isoforest", "ocsvm"]
METHODS: tuple[str, ...] = ("deepsad", "deepsvdd", "isoforest", "ocsvm")
#: The ablation axes, in the order the grid nests them (the last varies fastest).
AXES: tuple[str, ...] = (
    "dataset", "normal_classes", "known_anomaly_classes", "n_known_outlier_classes",
    "n_labeled_anomalies", "ratio_known_outlier", "ratio_pollution",
)  # fmt: skip
#: The axes that are fields of ``protocol``.
PROTOCOL_AXES: tuple[str, ...] = AXES[1:]
_Classes = _ClassList


class AxesSpec(_Section):
    """``ablation.axes``: each a non-empty list of values without repeats; absent axes keep the
    ``protocol``/``data`` value. ``known_anomaly_classes`` values may be ``null`` (drawn at random)."""

    dataset: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    normal_classes: tuple[_Classes, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    known_anomaly_classes: tuple[_Classes | None, ...] | None = Field(default=None, min_length=1,
                                                                      max_length=MAX_ITEMS)
    n_known_outlier_classes: tuple[Count, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    n_labeled_anomalies: tuple[Count, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    ratio_known_outlier: tuple[Float, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    ratio_pollution: tuple[Float, ...] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)

    @field_validator("dataset")
    @classmethod
    def _datasets(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(dataset_name(d) for d in v)

    @field_validator("*")
    @classmethod
    def _no_repeats(cls, v: Any) -> Any:
        if v is not None:
            repeated = first_repeat(v)
            if repeated is not NO_VALUE:
                raise ValueError(f"value {show(repeated)} is repeated")
        return v

    def items(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The given axes and their values, in :data:`AXES` order."""
        return [(k, v) for k in AXES if (v := getattr(self, k)) is not None]


class AblationSpec(_Section):
    """``ablation``: axes × seeds × methods form the cells; each cell trains the file's hyperparameters
    (policy ``fixed``) or tunes ``search.space`` on its validation part with ``budget`` trainings
    (policy ``tuned``; Deep SAD and Deep SVDD only — the baselines always choose their own)."""

    axes: AxesSpec = AxesSpec()
    methods: tuple[Method, ...] = Field(default=("deepsad",), min_length=1, max_length=MAX_ITEMS)
    policy: Literal["fixed", "tuned"] = "fixed"
    budget: Int | None = Field(default=None, ge=1, le=MAX_TRIALS)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        repeated = first_repeat(v)
        if repeated is not NO_VALUE:
            raise ValueError(f"method {repeated} is repeated")
        return v


class RacingSpec(_Section):
    """``racing``: seeds raced, not multiplied (:mod:`orchestration.plan.racing`). Every configuration
    starts on the first ``start`` of ``seeds``; more go only to configurations whose ``confidence``
    interval of their seed-by-seed difference to the leader still reaches 0."""

    start: Int = Field(default=3, ge=2, le=MAX_ITEMS)
    confidence: Float = Field(default=0.95, gt=0.5, lt=1)


class SweepSpec(_Section):
    """A whole sweep file. Build it with :func:`orchestration.spec.load.load_spec` (or ``parse_spec``)."""

    name: str
    description: str | None = None
    data: DataSpec
    protocol: ProtocolSpec
    net: NetSpec | None = None
    train: TrainSpec = TrainSpec()
    pretrain: PretrainSpec | None = PretrainSpec()
    search: SearchSpec
    seeds: tuple[Annotated[Int, Field(ge=0, lt=SEED_LIMIT)], ...] = Field(
        default=(0,), min_length=1, max_length=MAX_ITEMS
    )
    resources: ResourcesSpec = ResourcesSpec()
    storage: str | None = None
    ablation: AblationSpec | None = None
    racing: RacingSpec | None = None

    _source: str = PrivateAttr(default="<sweep>")
    _base_dir: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """The file the spec was read from, as given (prefixes every error message)."""
        return self._source

    @property
    def base_dir(self) -> str:
        """The absolute directory relative paths in the file are taken from: the ``base_dir`` given to
        :func:`~orchestration.spec.load.parse_spec`, else the current directory when the file was read."""
        return self._base_dir or os.getcwd()

    @field_validator("name")
    @classmethod
    def _directory_name(cls, v: str) -> str:
        # It names a directory under the storage root: no separators, no "." / ".." / hidden names,
        # and well inside a file name's limit (255 bytes).
        if len(v) > MAX_NAME:
            raise ValueError(f"must be at most {MAX_NAME} characters (it names the sweep's directory)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v.startswith("."):
            raise ValueError(
                "must be letters, digits, '_', '.', '-' and not start with '.' (it names the sweep's directory)"
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        repeated = first_repeat(v)
        if repeated is not NO_VALUE:
            raise ValueError(f"seed {repeated} is repeated")
        return v
