"""The trials of a sweep: the cells of grid and random search (:class:`~orchestration.plan.trial.TrialConfig`
each), the probe trials of tpe, and the summary ``--dry-run`` prints. The checks that run before any
trial starts are in :mod:`orchestration.plan.preflight`.

Core modules (torch, scikit-learn) are imported inside the functions, so that importing this module
stays cheap for the command line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsad.errors import ConfigError, DataError
from orchestration.plan.trial import Params, TrialConfig, plain
from orchestration.spec.checks import net_fields, net_problem, protocol_problems
from orchestration.spec.model import (
    AE_KEYS,
    REGISTRY_SAMPLE_SHAPES,
    SPACE_KEYS,
    Choice,
    IntUniform,
    LogUniform,
    PretrainSpec,
    Problem,
    SweepSpec,
    TrainSpec,
    Uniform,
    is_data_file,
    problems_error,
)
from orchestration.store.layout import DEFAULT_STORAGE

if TYPE_CHECKING:
    from deepsad.training import OptimConfig

# --------------------------------------------------------------------------- spec → trials


def resolve_data(spec: SweepSpec) -> tuple[str, str | None]:
    """``(dataset, data_dir)`` as a trial stores them: the registry name or an absolute file path,
    and an absolute directory. Relative paths start at ``spec.base_dir`` (the directory the file was
    read in); a data file that is not there is looked for under ``data_dir``, as
    :func:`deepsad.data.sources.load_dataset` does.
    """
    base = Path(spec.base_dir)
    data_dir = None
    if spec.data.data_dir is not None:
        data_dir = os.path.abspath(base / Path(spec.data.data_dir).expanduser())
    dataset = spec.data.dataset
    if is_data_file(dataset):
        path = base / Path(dataset).expanduser()
        if not path.exists() and data_dir is not None and not Path(dataset).expanduser().is_absolute():
            path = Path(data_dir) / Path(dataset).expanduser()
        dataset = os.path.abspath(path)
    return dataset, data_dir


# Per process: the runner builds every tpe suggestion's trial, and a data file's shape is all it needs.
@lru_cache(maxsize=8)
def _file_shape(dataset: str, data_dir: str | None) -> tuple[int, ...]:
    from deepsad.data.sources import load_dataset

    return load_dataset(dataset, data_dir).sample_shape


def sample_shape_of(spec: SweepSpec) -> tuple[int, ...]:
    """One sample's shape, ``(C, H, W)`` or ``(D,)``: from the registry, or by loading the file.

    Raises:
        ConfigError: the data file cannot be loaded (naming the spec file and ``data.dataset``).
    """
    dataset, data_dir = resolve_data(spec)
    if not is_data_file(dataset):
        return REGISTRY_SAMPLE_SHAPES[dataset]
    try:
        return _file_shape(dataset, data_dir)
    except (ConfigError, DataError) as e:
        raise problems_error(spec.source, [Problem("data.dataset", str(e))]) from e


def _core_field(message: str, searched: bool, key: str, section: str) -> Problem:
    """A core config error (``"lr: must be > 0 (got 0)"``) as a problem of the spec field it came from."""
    _, _, rest = message.partition(": ")
    return Problem(
        f"search.space.{key}" if searched else f"{section}.{key.removeprefix('ae_')}", rest or message
    )


def build_trial(
    spec: SweepSpec,
    params: Mapping[str, float | int],
    seed: int,
    *,
    sample_shape: tuple[int, ...] | None = None,
) -> TrialConfig:
    """The trial of one configuration and seed: the spec's values with ``params`` (a subset of
    :data:`~orchestration.spec.model.SPACE_KEYS`) put in; a ``rep_dim`` builds a new network.

    ``sample_shape`` saves loading a data file to learn it (see :func:`sample_shape_of`).

    Raises:
        ConfigError: one line per problem, ``<spec file>: <field>: <message>``.
    """
    from deepsad.data.splits import Protocol
    from deepsad.netconfig import NetConfig
    from deepsad.training import TrainConfig

    unknown = [k for k in params if k not in SPACE_KEYS]
    if unknown:
        raise problems_error(
            spec.source, [Problem(f"search.space.{unknown[0]}", "not a searchable parameter")]
        )
    dataset, data_dir = resolve_data(spec)
    shape = sample_shape if sample_shape is not None else sample_shape_of(spec)
    value = typed_params(params)
    problems: list[Problem] = []
    protocol = net = sad = ae = None
    try:
        protocol = Protocol(**spec.protocol.model_dump(), seed=seed)
    except ConfigError as e:
        problems += protocol_problems(e)
    try:
        name, rep_dim, h_dims = net_fields(dataset, shape, spec.net)
        rep_dim = int(value.get("rep_dim", rep_dim))
        net = NetConfig(name=name, rep_dim=rep_dim, input_shape=tuple(shape), h_dims=h_dims)
    except ConfigError as e:
        problems.append(net_problem(str(e), "search.space.rep_dim" if "rep_dim" in value else "net.rep_dim"))
    t = spec.train
    sad = _optimiser(t, "train", value, problems)
    if spec.pretrain is not None:
        ae = _optimiser(spec.pretrain, "pretrain", value, problems)
    eta = float(value.get("eta", t.eta))
    if problems or protocol is None or net is None or sad is None:
        raise problems_error(spec.source, problems)
    try:
        train = TrainConfig(
            net=net, eta=eta, sad=sad, ae=ae, seed=seed, device="cpu", bf16=t.bf16,
            reference_compat=t.reference_compat,
        )  # fmt: skip
    except ConfigError as e:
        raise problems_error(spec.source, [_core_field(str(e), "eta" in value, "eta", "train")]) from e
    return TrialConfig(dataset, data_dir, protocol, train, value, seed, t.device)


def _optimiser(
    section: TrainSpec | PretrainSpec, name: str, value: Params, problems: list[Problem]
) -> OptimConfig | None:
    """The optimiser of the spec section ``name`` (``train``: Deep SAD's, ``pretrain``: the autoencoder's)
    with the searched values put in (``lr``/``ae_lr``, ``weight_decay``/``ae_weight_decay``); None when
    invalid, its problem added to ``problems``."""
    from deepsad.training import OptimConfig

    prefix = "ae_" if name == "pretrain" else ""
    try:
        return OptimConfig(
            lr=float(value.get(f"{prefix}lr", section.lr)), epochs=section.epochs,
            milestones=tuple(section.milestones), batch_size=section.batch_size,
            weight_decay=float(value.get(f"{prefix}weight_decay", section.weight_decay)),
        )  # fmt: skip
    except ConfigError as e:
        key = prefix + str(e).partition(":")[0]
        problems.append(_core_field(str(e), key in value, key, name))
        return None


def typed_params(params: Mapping[str, float | int]) -> Params:
    """Searched values with their canonical types (so that ``eta: 1`` and ``eta: 1.0`` share a key)."""
    return {k: int(v) if k == "rep_dim" else float(v) for k, v in params.items()}


def grid_params(spec: SweepSpec) -> list[Params]:
    """Every combination of the choice values, in :data:`SPACE_KEYS` order, last key fastest."""
    entries = spec.search.space.items()
    if not all(isinstance(d, Choice) for _, d in entries):
        raise ValueError("grid_params needs a space of choice entries")
    keys = [k for k, _ in entries]
    axes = [list(d.values) for _, d in entries if isinstance(d, Choice)]
    return [typed_params(dict(zip(keys, combo, strict=True))) for combo in itertools.product(*axes)]


def random_params(spec: SweepSpec) -> list[Params]:
    """``num_trials`` draws from ``np.random.default_rng(search.seed)``, one value per entry in
    :data:`SPACE_KEYS` order per draw; repeated draws (possible in small choice spaces) are dropped."""
    rng = np.random.default_rng(spec.search.seed)
    draws: list[Params] = []
    for _ in range(spec.search.num_trials or 0):
        draws.append(typed_params({k: _draw(d, rng) for k, d in spec.search.space.items()}))
    return _unique(draws)


def _draw(dist: LogUniform | Uniform | IntUniform | Choice, rng: np.random.Generator) -> float | int:
    if isinstance(dist, LogUniform):
        return float(np.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
    if isinstance(dist, Uniform):
        return float(rng.uniform(dist.low, dist.high))
    if isinstance(dist, IntUniform):
        return int(rng.integers(dist.low, dist.high, endpoint=True))
    return dist.values[int(rng.integers(len(dist.values)))]


def probe_params(spec: SweepSpec) -> list[Params]:
    """Configurations that together use both bounds of every numeric entry and every choice value
    (entry ``i`` of configuration ``j`` is its ``j mod n_i``-th extreme): what tpe may suggest at
    the edges of the space, to validate before the search starts."""
    entries = spec.search.space.items()
    axes = [list(d.values) if isinstance(d, Choice) else [d.low, d.high] for _, d in entries]
    n = max(len(a) for a in axes)
    return _unique(
        [typed_params({k: a[j % len(a)] for (k, _), a in zip(entries, axes, strict=True)}) for j in range(n)]
    )


def _unique(configs: list[Params]) -> list[Params]:
    seen: set[str] = set()
    out = []
    for c in configs:
        marker = json.dumps(c, sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            out.append(c)
    return out


def build_all(
    spec: SweepSpec, configs: Sequence[Params], shape: tuple[int, ...] | None
) -> tuple[list[TrialConfig], list[str]]:
    """Every configuration × seed as a trial (configuration-major), and the problem lines of those
    that failed; trials with equal keys are kept once."""
    trials: list[TrialConfig] = []
    lines: list[str] = []
    keys: set[str] = set()
    for params in configs:
        for seed in spec.seeds:
            try:
                trial = build_trial(spec, params, seed, sample_shape=shape)
            except ConfigError as e:
                lines += str(e).splitlines()
                continue
            if trial.key not in keys:
                keys.add(trial.key)
                trials.append(trial)
    return trials, list(dict.fromkeys(lines))


def enumerate_cells(spec: SweepSpec, *, sample_shape: tuple[int, ...] | None = None) -> list[TrialConfig]:
    """All trials of a grid or random sweep, configuration-major (each configuration's seeds in
    ``seeds`` order); a fixed order, so resubmits can diff by key.

    Raises:
        ValueError: for tpe, whose configurations are suggested while it runs.
        ConfigError: one line per problem of any trial.
    """
    algorithm = spec.search.algorithm
    if algorithm == "tpe":
        raise ValueError("tpe suggests configurations while it runs; there are no cells to enumerate")
    configs = grid_params(spec) if algorithm == "grid" else random_params(spec)
    trials, lines = build_all(spec, configs, sample_shape)
    if lines:
        raise ConfigError("\n".join(lines))
    return trials


# --------------------------------------------------------------------------- the dry-run summary


def amount(n: float, unit: str, plural: str | None = None) -> str:
    """``1 CPU``, ``0.5 CPU``, ``4 CPUs``: a count and its unit (``plural`` when not unit + "s")."""
    shown = str(int(n)) if float(n).is_integer() else f"{n:g}"
    return f"{shown} {unit if 0 < n <= 1 else (plural or unit + 's')}"


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will do, before it does it (``deepsad sweep submit --dry-run``, ``plan.json``).

    ``n_ae_trainings`` counts distinct AE keys: exact for grid and random; for tpe exact only when
    no searched key changes the autoencoder (one per seed), else an upper bound.
    """

    name: str
    source: str
    algorithm: str
    searched: tuple[str, ...]
    n_configurations: int
    seeds: tuple[int, ...]
    n_trials: int
    n_ae_trainings: int
    ae_exact: bool
    objective: str
    scheduler: str | None
    cpus_per_trial: float
    gpus_per_trial: float
    workers_per_trial: int
    max_concurrent_trials: int
    max_failures: int
    storage: str

    @property
    def ae_reuse(self) -> int:
        """Trials expected to take their autoencoder from the cache (at least this many for tpe)."""
        return self.n_trials - self.n_ae_trainings

    def to_dict(self) -> dict[str, Any]:
        return {**plain(asdict(self)), "ae_reuse": self.ae_reuse}

    def describe(self) -> list[str]:
        """Lines for the terminal."""
        seeds = ", ".join(str(s) for s in self.seeds)
        lines = [
            f"sweep {self.name} ({self.source}): {self.algorithm} search over {', '.join(self.searched)}",
            f"  trials: {amount(self.n_configurations, 'configuration')} × {amount(len(self.seeds), 'seed')} "
            f"[{seeds}] = {amount(self.n_trials, 'trial')}",
        ]
        if self.n_ae_trainings == 0:
            lines.append("  autoencoders: none (no pretraining)")
        elif self.ae_exact:
            lines.append(
                f"  autoencoders: {self.n_ae_trainings} to train; the cache serves the other "
                f"{amount(self.ae_reuse, 'trial')}"
            )
        else:
            lines.append(f"  autoencoders: up to {self.n_ae_trainings} to train (the searched values decide)")
        lines.append(
            f"  objective: maximise {self.objective}"
            + (f" · scheduler {self.scheduler}" if self.scheduler else "")
        )
        per_trial = f"{amount(self.cpus_per_trial, 'CPU')}, {amount(self.gpus_per_trial, 'GPU')}"
        if self.workers_per_trial > 1:
            per_trial += f" ({self.workers_per_trial} data-parallel workers)"
        lines.append(
            f"  per trial: {per_trial} · at most {self.max_concurrent_trials} at once · "
            f"up to {amount(self.max_failures, 'retry', 'retries')} of a failed trial"
        )
        lines.append(f"  storage: {self.storage}")
        return lines


def sweep_plan(spec: SweepSpec, cells: Sequence[Any] | None = None, *, storage: str | None = None) -> SweepPlan:
    """Summarise a grid, random or tpe sweep (an ablation: :func:`orchestration.plan.summary.make_plan`);
    ``cells`` (from :func:`enumerate_cells`/:func:`validate_spec`) saves building them again.

    Raises:
        ConfigError: as :func:`enumerate_cells`.
    """
    search, r = spec.search, spec.resources
    seeds = tuple(spec.seeds)
    if search.algorithm == "tpe":
        n_configs = search.num_trials or 0
        n_trials = n_configs * len(seeds)
        ae_entries = [d for k, d in search.space.items() if k in AE_KEYS]
        if spec.pretrain is None:
            n_ae, exact = 0, True
        elif not ae_entries:
            n_ae, exact = len(seeds), True
        else:
            combos = math.prod(len(d.values) if isinstance(d, Choice) else n_configs for d in ae_entries)
            n_ae, exact = min(n_configs, combos) * len(seeds), False
    else:
        trials = list(cells) if cells is not None else enumerate_cells(spec)
        n_trials = len(trials)
        n_configs = len({json.dumps(t.params, sort_keys=True) for t in trials})
        n_ae, exact = len({t.ae_key for t in trials if t.ae_key is not None}), True
    scheduler = None
    if search.scheduler is not None:
        s = search.scheduler
        scheduler = f"ASHA (grace period {s.grace_period} epochs, reduction factor {s.reduction_factor:g})"
    storage = storage or (spec.storage if spec.storage is not None else DEFAULT_STORAGE)
    return SweepPlan(
        name=spec.name,
        source=spec.source,
        algorithm=search.algorithm,
        searched=tuple(k for k, _ in search.space.items()),
        n_configurations=n_configs,
        seeds=seeds,
        n_trials=n_trials,
        n_ae_trainings=n_ae,
        ae_exact=exact,
        objective=search.objective.metric,
        scheduler=scheduler,
        cpus_per_trial=r.workers_per_trial * r.cpus_per_trial,
        gpus_per_trial=r.workers_per_trial * r.gpus_per_trial,
        workers_per_trial=r.workers_per_trial,
        max_concurrent_trials=r.max_concurrent_trials,
        max_failures=r.max_failures,
        storage=f"{storage.rstrip('/')}/{spec.name}",
    )
