"""Ablation sweeps: the cells of an ``ablation:`` section, their keys, the checks before any trial,
which of them are done, and the summary ``--dry-run`` prints.

A *unit* (:class:`AblationUnit`) is one combination of the axis values × one seed × one method, and
one Tune trial. Its :attr:`~AblationUnit.key` names its result row(s), so it hashes what changes the
result: the method, the policy and the cell's trial identity (data set, the protocol the axes set,
the training config) — a grown axis adds keys and changes none. Its rows:

* policy ``fixed`` (Deep SAD, Deep SVDD) and ``own`` (the baselines, which choose their own
  hyperparameters on validation): one row keyed :attr:`~AblationUnit.key`, ``selected`` true;
* policy ``tuned``: one row per inner training, keyed ``<key>-<i>`` (``inner_trial`` i), and the
  one chosen on validation marked ``selected`` at the end.

A unit is *done* when its selected row is finished (:meth:`orchestration.store.results.Ledger.done`);
resubmits run the others. The units run as jobs (:mod:`orchestration.jobs.ablation`).
Deep SAD and Deep SVDD of a cell share the AE key (pretraining ignores labels), so the AE cache
trains their autoencoder once. Deep SVDD's η is fixed to 1 (with no labels it has no effect), so its
key does not change with ``train.eta``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from deepsad.errors import ConfigError, DataError
from deepsad.metrics import VALIDATION_METRICS
from orchestration.plan.cells import amount, build_trial, resolve_data, sample_shape_of, typed_params
from orchestration.plan.preflight import no_validation_anomalies, protocol_field
from orchestration.plan.trial import TrialConfig, digest, plain
from orchestration.spec.checks import protocol_combinations
from orchestration.spec.model import (
    AE_KEYS,
    METHODS,
    PROTOCOL_AXES,
    REGISTRY_SAMPLE_SHAPES,
    Problem,
    SweepSpec,
    is_data_file,
    problems_error,
)
from orchestration.store.layout import DEFAULT_STORAGE

if TYPE_CHECKING:

    pass

# Bump when the meaning of a unit key's inputs changes.
ABLATION_KEY_VERSION = "deepsad-ablation-v1"
DEEP_METHODS: tuple[str, ...] = ("deepsad", "deepsvdd")
BASELINES: tuple[str, ...] = ("isoforest", "ocsvm")
POLICIES: tuple[str, ...] = ("fixed", "tuned", "own")


@dataclass(frozen=True)
class AblationUnit:
    """One cell × seed × method of an ablation: what one Tune trial runs.

    Attributes:
        trial: the cell's trial at the file's hyperparameters (protocol and data set from the axes;
            Deep SVDD: η = 1). Baselines use only its data set, protocol and seed.
        method: ``deepsad``, ``deepsvdd``, ``isoforest`` or ``ocsvm``.
        policy: ``fixed`` or ``tuned`` (Deep SAD, Deep SVDD), ``own`` (baselines).
        axes: the cell's axis values (plain JSON), e.g. ``{"ratio_known_outlier": 0.05}``.
        budget: tuned: inner trainings; otherwise 1.
        space: tuned: the searched distributions (``search.space`` as plain JSON; Deep SVDD without η).
        objective: tuned: the validation metric the inner study maximises; baselines: the one their
            hyperparameters are chosen on.
        search_seed: tuned: seeds the inner TPE sampler.

    Raises:
        ConfigError: an unknown method or policy, a policy the method cannot have, a bad budget.
    """

    trial: TrialConfig
    method: str
    policy: str
    axes: dict[str, Any] = field(default_factory=dict, hash=False)
    budget: int = 1
    space: dict[str, Any] = field(default_factory=dict, hash=False)
    objective: str = "val_auroc"
    search_seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"ablation unit: unknown method {self.method!r} (known: {', '.join(METHODS)})")
        allowed = ("own",) if self.method in BASELINES else ("fixed", "tuned")
        if self.policy not in allowed:
            raise ConfigError(
                f"ablation unit: {self.method} cannot have policy {self.policy!r} (only {', '.join(allowed)})"
            )
        if self.budget < 1 or (self.policy != "tuned" and self.budget != 1):
            raise ConfigError(f"ablation unit: budget must be >= 1, and 1 unless tuned (got {self.budget})")
        if self.policy == "tuned" and not self.space:
            raise ConfigError("ablation unit: policy tuned needs a non-empty space")
        if self.objective not in VALIDATION_METRICS:
            raise ConfigError(
                f"ablation unit: objective must be one of {', '.join(VALIDATION_METRICS)} (got {self.objective!r})"
            )
        object.__setattr__(self, "axes", plain(dict(self.axes)))
        object.__setattr__(self, "space", plain(dict(self.space)))

    @property
    def seed(self) -> int:
        return self.trial.seed

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES

    @cached_property
    def key(self) -> str:
        """16 hex chars of sha256 over the method, the policy and what the method's result depends on."""
        if self.is_baseline:  # no network, no optimiser: only the split matters
            identity: dict[str, Any] = {
                "dataset": self.trial.dataset,
                "protocol": plain(asdict(self.trial.protocol)),
            }
        else:
            identity = self.trial.identity()
        extra: dict[str, Any] = {}
        if self.is_baseline and self.objective != "val_auroc":  # it chose on another metric (keys before kept)
            extra = {"objective": self.objective}
        if self.policy == "tuned":
            extra = {"budget": self.budget, "space": self.space, "objective": self.objective,
                     "search_seed": self.search_seed}  # fmt: skip
        return digest({"version": ABLATION_KEY_VERSION, "method": self.method, "policy": self.policy,
                        **identity, **extra})  # fmt: skip

    @cached_property
    def cell(self) -> str:
        """The cell's short id: its axis values, seed and method (not the hyperparameters)."""
        return digest({"axes": self.axes, "seed": self.seed, "method": self.method})

    def row_key(self, inner: int | None = None) -> str:
        """The key of the unit's row (``inner`` None), or of its inner training ``inner`` (tuned)."""
        return self.key if inner is None else f"{self.key}-{inner}"

    @property
    def ae_key(self) -> str | None:
        """The trial's AE key (Deep SAD and Deep SVDD of a cell share it); None for baselines."""
        return None if self.is_baseline else self.trial.ae_key

    @property
    def params(self) -> dict[str, float | int]:
        return dict(self.trial.params)

    def columns(self, *, selected: bool | None = None, inner: int | None = None) -> dict[str, object]:
        """Flat values for the result store: the trial's columns (baselines: only data set, protocol and
        seed) and :meth:`ablation_columns`."""
        cols = self.trial.columns()
        if self.is_baseline:
            keep = ("dataset", "normal_classes", "known_anomaly_classes", "n_known_outlier_classes",
                    "n_labeled_anomalies", "ratio_known_outlier", "ratio_pollution", "ratio_known_normal",
                    "val_fraction", "seed")  # fmt: skip
            cols = {k: v for k, v in cols.items() if k in keep}
        return {**cols, **self.ablation_columns(selected=selected, inner=inner)}

    def ablation_columns(
        self, *, selected: bool | None = None, inner: int | None = None
    ) -> dict[str, object]:
        """``method``, ``policy``, ``cell``, ``axes_json``, ``selected`` (default: true unless tuned) and
        ``inner_trial``."""
        return {"method": self.method, "policy": self.policy, "cell": self.cell,
                "axes_json": json.dumps(self.axes, sort_keys=True),
                "selected": (self.policy != "tuned") if selected is None else selected, "inner_trial": inner}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` rebuilds an equal unit."""
        return {"unit": "ablation", "trial": self.trial.to_dict(), "method": self.method, "policy": self.policy,
                "axes": self.axes, "budget": self.budget, "space": self.space, "objective": self.objective,
                "search_seed": self.search_seed}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AblationUnit:
        """Inverse of :meth:`to_dict`. Raises ConfigError on a malformed entry."""
        try:
            return cls(trial=TrialConfig.from_dict(d["trial"]), method=str(d["method"]), policy=str(d["policy"]),
                       axes=dict(d["axes"]), budget=int(d["budget"]), space=dict(d["space"]),
                       objective=str(d["objective"]), search_seed=int(d["search_seed"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"ablation unit: malformed ({type(e).__name__}: {e})") from e


def with_params(trial: TrialConfig, params: Mapping[str, float | int]) -> TrialConfig:
    """``trial`` with searched values put in (a tuned cell's inner training): ``eta``, ``lr``,
    ``weight_decay``, ``ae_lr``, ``ae_weight_decay``; ``rep_dim`` builds a new network.

    Raises:
        ConfigError: a value the core rejects (e.g. a ``rep_dim`` the network cannot take).
    """
    value = typed_params(params)
    t = trial.train
    net = replace(t.net, rep_dim=int(value["rep_dim"])) if "rep_dim" in value else t.net
    sad = replace(
        t.sad,
        lr=float(value.get("lr", t.sad.lr)),
        weight_decay=float(value.get("weight_decay", t.sad.weight_decay)),
    )
    ae = t.ae
    if ae is not None:
        ae = replace(ae, lr=float(value.get("ae_lr", ae.lr)),
                     weight_decay=float(value.get("ae_weight_decay", ae.weight_decay)))  # fmt: skip
    train = replace(t, net=net, sad=sad, ae=ae, eta=float(value.get("eta", t.eta)))
    return replace(trial, train=train, params=value)


# --------------------------------------------------------------------------- spec → units


@dataclass(frozen=True)
class Cell:
    """One combination of the axis values: ``values`` as the spec types them, ``index`` of each value
    in its axis (for messages)."""

    values: dict[str, Any]
    index: dict[str, int]

    def spec(self, spec: SweepSpec) -> SweepSpec:
        """``spec`` with this cell's protocol fields and data set put in."""
        protocol = spec.protocol.model_copy(
            update={k: v for k, v in self.values.items() if k in PROTOCOL_AXES}
        )
        data = (
            spec.data.model_copy(update={"dataset": self.values["dataset"]})
            if "dataset" in self.values
            else spec.data
        )
        return spec.model_copy(update={"protocol": protocol, "data": data})

    def describe(self, seed: int | None = None) -> str:
        parts = [f"{k}={json.dumps(plain(v))}" for k, v in self.values.items()]
        return ", ".join(parts + ([f"seed {seed}"] if seed is not None else [])) or "the cell"


def cells(spec: SweepSpec) -> list[Cell]:
    """The combinations of the axis values in grid order (data set outermost, last axis fastest),
    without the overlapping normal/known-class combinations."""
    assert spec.ablation is not None
    axes = spec.ablation.axes
    datasets = list(enumerate(axes.dataset)) if axes.dataset is not None else [None]
    out = []
    for d in datasets:
        for combo in protocol_combinations(spec.protocol, axes):
            values = {k: v for k, (_, v) in combo.items()}
            index = {k: i for k, (i, _) in combo.items()}
            if d is not None:
                values, index = {"dataset": d[1], **values}, {"dataset": d[0], **index}
            out.append(Cell(values, index))
    return out


def _datasets(spec: SweepSpec) -> list[tuple[str, str]]:
    """``(field, dataset)`` of every data set the ablation uses."""
    assert spec.ablation is not None
    if spec.ablation.axes.dataset is None:
        return [("data.dataset", spec.data.dataset)]
    return [(f"ablation.axes.dataset[{i}]", d) for i, d in enumerate(spec.ablation.axes.dataset)]


def expand_units(
    spec: SweepSpec, *, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> list[AblationUnit]:
    """Every unit of an ablation: cells × seeds × methods, in that nesting (methods fastest); a fixed
    order, so resubmits can diff by key. ``shapes`` (data set → sample shape) saves loading data files.

    Raises:
        ConfigError: one line per problem of any cell's trial.
    """
    return [u for _, u in _expand(spec, shapes)]


def _expand(spec: SweepSpec, shapes: Mapping[str, tuple[int, ...]] | None) -> list[tuple[Cell, AblationUnit]]:
    ablation = spec.ablation
    if ablation is None:
        raise ValueError("expand_units needs a spec with an ablation section")
    space = {k: d.model_dump() for k, d in spec.search.space.items()}
    units: list[tuple[Cell, AblationUnit]] = []
    lines: list[str] = []
    for cell in cells(spec):
        cell_spec = cell.spec(spec)
        dataset = cell_spec.data.dataset
        shape = (shapes or {}).get(dataset) or (
            None if is_data_file(dataset) else REGISTRY_SAMPLE_SHAPES[dataset]
        )
        axes = {k: plain(v) for k, v in cell.values.items()}
        for seed in spec.seeds:
            try:
                base = build_trial(cell_spec, {}, seed, sample_shape=shape or sample_shape_of(cell_spec))
            except ConfigError as e:
                lines += str(e).splitlines()
                continue
            for method in ablation.methods:
                units.append((cell, _unit(base, method, ablation.policy, axes, ablation.budget, space, spec)))
    if lines:
        raise ConfigError("\n".join(dict.fromkeys(lines)))
    return units


def _unit(base: TrialConfig, method: str, policy: str, axes: dict[str, Any], budget: int | None,
          space: dict[str, Any], spec: SweepSpec) -> AblationUnit:  # fmt: skip
    if method in BASELINES:  # they choose their hyperparameters on the sweep's objective
        return AblationUnit(base, method, "own", axes, objective=spec.search.objective.metric)
    if method == "deepsvdd":
        base = replace(base, train=replace(base.train, eta=1.0))  # no labels: η has no effect
        space = {k: v for k, v in space.items() if k != "eta"}
        if not space:
            policy = "fixed"  # only η was tuned: nothing is left to tune for Deep SVDD
    if policy == "tuned":
        return AblationUnit(base, method, "tuned", axes, budget or 1, space, spec.search.objective.metric,
                            spec.search.seed)  # fmt: skip
    return AblationUnit(base, method, "fixed", axes)


# --------------------------------------------------------------------------- checks before any trial


def _load_datasets(spec: SweepSpec) -> dict[str, Any]:
    """Every data set the ablation uses, loaded once, by name.

    Raises:
        ConfigError: one line per data set that cannot be loaded or has samples of the wrong shape.
    """
    from deepsad.data.sources import load_dataset

    problems: list[Problem] = []
    data = {}
    for where, name in _datasets(spec):
        dataset, data_dir = resolve_data(
            spec.model_copy(update={"data": spec.data.model_copy(update={"dataset": name})})
        )
        try:
            data[name] = load_dataset(dataset, data_dir)
        except (ConfigError, DataError) as e:
            problems.append(Problem("data.data_dir" if "data directory" in str(e) else where, str(e)))
            continue
        expected = None if is_data_file(name) else REGISTRY_SAMPLE_SHAPES[name]
        if expected is not None and expected != data[name].sample_shape:
            problems.append(
                Problem(where, f"loaded samples have shape {data[name].sample_shape}, not {expected}")
            )
    if problems:
        raise problems_error(spec.source, problems)
    return data


def validate_ablation(spec: SweepSpec) -> list[AblationUnit]:
    """Check every unit of an ablation without training: load each data set once, build every unit,
    and draw every distinct split (data set × protocol × seed) to prove it feasible.

    A split that cannot be drawn gives one line per axis value that caused it (the first cell's
    message, and how many more cells fail the same way). Policy ``tuned`` also needs anomalies in
    every validation part (its objective is undefined without them); ``fixed`` and the baselines do not.

    Raises:
        ConfigError: one line per problem, ``<spec file>: <field>: <message>``.
    """
    from deepsad.data.splits import make_split
    from deepsad.metrics import validation_labels

    data = _load_datasets(spec)
    problems: list[Problem] = []
    expanded = _expand(spec, {k: v.sample_shape for k, v in data.items()})
    tuned = any(u.policy == "tuned" for _, u in expanded)
    splits = {(u.trial.dataset, u.trial.protocol): (cell, u) for cell, u in expanded}
    failures: dict[str, list[str]] = {}
    for (_, protocol), (cell, unit) in splits.items():
        name = str(cell.values.get("dataset", spec.data.dataset))
        at = f"at {cell.describe(unit.seed)}"
        try:
            split = make_split(data[name], protocol)
        except (ConfigError, DataError) as e:
            message = str(e)
            head, _, rest = message.partition(": ")
            where, message = (
                (head, rest)
                if head.startswith("protocol.")
                else (protocol_field(message, protocol), message)
            )
            axis = where.removeprefix("protocol.")
            if axis in cell.index:
                where = f"ablation.axes.{axis}[{cell.index[axis]}]"
            failures.setdefault(where, []).append(f"{at}: {message}")
            continue
        metric = spec.search.objective.metric
        if tuned and not (validation_labels(metric, semi_targets=split.val.semi_targets,
                                            labels=split.val.labels) == 1).any():
            failures.setdefault("ablation.policy", []).append(
                f"tuned chooses on validation, but {at} {no_validation_anomalies(metric)}")
    for where, messages in failures.items():
        more = f" (and {len(messages) - 1} more cells)" if len(messages) > 1 else ""
        problems.append(Problem(where, messages[0] + more))
    if problems:
        raise problems_error(spec.source, problems)
    return [u for _, u in expanded]


# --------------------------------------------------------------------------- the dry-run summary


@dataclass(frozen=True)
class AblationPlan:
    """What an ablation will do (``deepsad sweep submit --dry-run``, ``plan.json``).

    ``n_trainings`` counts Deep SAD/SVDD trainings (tuned: ``budget`` per trial); ``n_ae_trainings``
    the distinct autoencoders among them — exact unless policy tuned searches an AE setting (then
    an upper bound).
    """

    name: str
    source: str
    axes: tuple[tuple[str, int], ...]
    n_cells: int
    n_left_out: int  # overlapping normal/known-class combinations
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    policy: str
    budget: int | None
    searched: tuple[str, ...]
    objective: str
    n_trials: int
    n_trainings: int
    n_ae_trainings: int
    ae_exact: bool
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent_trials: int
    max_failures: int
    storage: str
    algorithm: str = "ablation"

    @property
    def ae_reuse(self) -> int:
        """Deep SAD/SVDD trainings expected to take their autoencoder from the cache."""
        return self.n_trainings - self.n_ae_trainings

    def to_dict(self) -> dict[str, Any]:
        return {**plain(asdict(self)), "ae_reuse": self.ae_reuse}

    def describe(self) -> list[str]:
        """Lines for the terminal."""
        axes = " × ".join(f"{k} ({n})" for k, n in self.axes) or "no axes"
        left_out = (
            f" ({self.n_left_out} overlapping normal/known-class combinations left out)"
            if self.n_left_out
            else ""
        )
        seeds = ", ".join(str(s) for s in self.seeds)
        lines = [
            f"sweep {self.name} ({self.source}): ablation over {axes}, policy {self.policy}",
            f"  trials: {amount(self.n_cells, 'cell')}{left_out} × {amount(len(self.seeds), 'seed')} [{seeds}] × "
            f"{amount(len(self.methods), 'method')} [{', '.join(self.methods)}] = {amount(self.n_trials, 'trial')}",
        ]
        if self.policy == "tuned":
            lines.append(
                f"  tuned: {self.budget} trainings per Deep SAD/SVDD trial over {', '.join(self.searched)} "
                f"(TPE, maximising {self.objective} on the cell's validation part)"
            )
        if self.n_trainings == 0:
            lines.append("  autoencoders: none (no Deep SAD/SVDD training)")
        elif self.n_ae_trainings == 0:
            lines.append("  autoencoders: none (no pretraining)")
        elif self.ae_exact:
            lines.append(
                f"  autoencoders: {self.n_ae_trainings} to train; the cache serves the other "
                f"{amount(self.ae_reuse, 'training')}"
            )
        else:
            lines.append(f"  autoencoders: up to {self.n_ae_trainings} to train (the tuned values decide)")
        baselines = [m for m in self.methods if m in BASELINES]
        if baselines:
            lines.append(f"  {', '.join(baselines)}: hyperparameters chosen on {self.objective} of the cell's "
                         "validation part")  # fmt: skip
        lines.append(
            f"  per trial: {amount(self.cpus_per_trial, 'CPU')}, {amount(self.gpus_per_trial, 'GPU')} · "
            f"at most {self.max_concurrent_trials} at once · up to "
            f"{amount(self.max_failures, 'retry', 'retries')} of a failed trial"
        )
        lines.append(f"  storage: {self.storage}")
        return lines


def ablation_plan(
    spec: SweepSpec, units: Sequence[AblationUnit] | None = None, *, storage: str | None = None
) -> AblationPlan:
    """Summarise an ablation; ``units`` (from :func:`validate_ablation`) saves building them again."""
    ablation, r = spec.ablation, spec.resources
    assert ablation is not None
    units = list(units) if units is not None else expand_units(spec)
    deep = [u for u in units if not u.is_baseline]
    n_trainings = sum(u.budget for u in deep)
    ae_searched = any(k in AE_KEYS for u in deep if u.policy == "tuned" for k in u.space)
    if spec.pretrain is None:
        n_ae, exact = 0, True
    elif ae_searched:
        n_ae, exact = n_trainings, False
    else:
        n_ae, exact = len({u.ae_key for u in deep if u.ae_key is not None}), True
    n_cells = len(cells(spec))
    total = 1
    for _, values in ablation.axes.items():
        total *= len(values)
    storage = storage or (spec.storage if spec.storage is not None else DEFAULT_STORAGE)
    return AblationPlan(
        name=spec.name, source=spec.source, axes=tuple((k, len(v)) for k, v in ablation.axes.items()),
        n_cells=n_cells, n_left_out=total - n_cells, seeds=tuple(spec.seeds), methods=tuple(ablation.methods),
        policy=ablation.policy, budget=ablation.budget, searched=tuple(k for k, _ in spec.search.space.items()),
        objective=spec.search.objective.metric, n_trials=len(units), n_trainings=n_trainings, n_ae_trainings=n_ae,
        ae_exact=exact, cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial,
        max_concurrent_trials=r.max_concurrent_trials, max_failures=r.max_failures,
        storage=f"{storage.rstrip('/')}/{spec.name}",
    )  # fmt: skip
