"""Pass 2 of reading a sweep file: consistency checks across sections (protocol, search space,
networks, resources, bundles, ablations), each a generator of :class:`~orchestration.spec.model.Problem` s
registered for the sections it needs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from deepsad.errors import ConfigError
from orchestration.spec.model import (
    MAX_BUNDLE_SIZE,
    MAX_ETA,
    MAX_LR,
    MAX_TRIALS,
    MAX_WEIGHT_DECAY,
    MAX_WIDTH,
    NO_VALUE,
    PROTOCOL_AXES,
    REGISTRY_SAMPLE_SHAPES,
    SPACE_KEYS,
    AblationSpec,
    AxesSpec,
    Choice,
    IntUniform,
    LogUniform,
    NetSpec,
    Problem,
    ProtocolSpec,
    SearchSpec,
    SpaceSpec,
    Uniform,
    first_repeat,
    is_data_file,
    show,
)

Check = Callable[[dict[str, Any]], Iterator[Problem]]
_CHECKS: list[tuple[tuple[str, ...], Check]] = []


def _check(*sections: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        _CHECKS.append((sections, fn))
        return fn

    return register


def consistency(sections: dict[str, Any]) -> list[Problem]:
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
    if math.prod(len(v) for k, v in ablation.axes.items() if k in PROTOCOL_AXES) > MAX_TRIALS:
        return  # too many cells: _size says so (checking each would take minutes)
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


# The range of each searched hyperparameter: (comparison with the smallest value, it, the largest) —
# the ranges of the fields they replace (train.eta, train.lr, net.rep_dim, ...).
_KEY_BOUNDS: dict[str, tuple[str, float, float]] = {
    "eta": (">", 0.0, MAX_ETA),
    "lr": (">", 0.0, MAX_LR),
    "ae_lr": (">", 0.0, MAX_LR),
    "weight_decay": (">=", 0.0, MAX_WEIGHT_DECAY),
    "ae_weight_decay": (">=", 0.0, MAX_WEIGHT_DECAY),
    "rep_dim": (">=", 1.0, MAX_WIDTH),
}


def _bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def value_problem(key: str, v: float) -> str | None:
    """What is wrong with ``v`` as a value of searched ``key`` (None: nothing)."""
    op, low, high = _KEY_BOUNDS[key]
    if not (v > low if op == ">" else v >= low):
        return f"must be {op} {_bound(low)}"
    if v > high:
        return f"must be <= {_bound(high)}"
    return None


def choice_value_problems(key: str, values: Any) -> Iterator[Problem]:
    """Every bad value of a choice for ``key``, each naming its index: integers for rep_dim, each in
    the key's range, no repeats. ``values`` may be raw YAML (when the section failed pass 1, the
    values that are numbers are still checked, so that every bad value is reported at once)."""
    at = f"search.space.{key}.values"
    if not isinstance(values, list | tuple):
        return
    numbers = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue  # not a number: pass 1 says so
        numbers.append(v)
        if key == "rep_dim" and not isinstance(v, int):
            yield Problem(f"{at}[{i}]", "must be an integer", v)
        elif (message := value_problem(key, v)) is not None:
            yield Problem(f"{at}[{i}]", message, v)
    repeated = first_repeat(numbers)
    if repeated is not NO_VALUE:
        yield Problem(at, f"value {show(repeated)} is repeated", list(values))


def raw_choice_problems(raw: Any) -> list[Problem]:
    """:func:`choice_value_problems` of the raw ``search.space`` of a file whose ``search`` failed
    pass 1 (so that ``values: [-1, 0, x]`` reports all three values, not only ``x``)."""
    search = raw.get("search") if isinstance(raw, dict) else None
    space = search.get("space") if isinstance(search, dict) else None
    if not isinstance(space, dict):
        return []
    problems: list[Problem] = []
    for key in SPACE_KEYS:
        dist = space.get(key)
        if isinstance(dist, dict) and dist.get("distribution") == "choice":
            problems += choice_value_problems(key, dist.get("values"))
    return problems


@_check("search")
def _space(s: dict[str, Any]) -> Iterator[Problem]:
    search: SearchSpec = s["search"]
    # "ablation" is missing from s when that section is broken: then neither kind of check is sure
    ablation = s.get("ablation", NO_VALUE)
    if not search.space.items() and ablation is None:
        yield Problem(
            "search.space", f"empty — nothing to search; give at least one of {', '.join(SPACE_KEYS)}", {}
        )
    for key, dist in search.space.items():
        at = f"search.space.{key}"
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
            yield from choice_value_problems(key, dist.values)
            continue
        if isinstance(dist, LogUniform) and dist.low <= 0 and _KEY_BOUNDS[key][0] == ">=":
            # the key itself allows 0 (a weight decay), a log scale does not
            yield Problem(f"{at}.low", "must be > 0 for log_uniform (use uniform to include 0)", dist.low)
        elif (message := value_problem(key, dist.low)) is not None:
            yield Problem(f"{at}.low", message, dist.low)
        elif dist.high <= dist.low:
            yield Problem(f"{at}.high", f"must be > low ({show(dist.low)})", dist.high)
        elif (message := value_problem(key, dist.high)) is not None:
            yield Problem(f"{at}.high", message, dist.high)

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


@_check("search", "seeds", "ablation")
def _size(s: dict[str, Any]) -> Iterator[Problem]:
    search: SearchSpec = s["search"]
    ablation: AblationSpec | None = s["ablation"]
    seeds = len(s["seeds"])
    if ablation is not None:
        axes = ablation.axes.items()
        n = math.prod(len(v) for _, v in axes) * seeds * len(ablation.methods)
        parts = [f"{len(v)} {k}" for k, v in axes] + [f"{seeds} seeds", f"{len(ablation.methods)} methods"]
        if ablation.policy == "tuned" and ablation.budget is not None:
            n *= ablation.budget
            parts.append(f"budget {ablation.budget}")
        field = "ablation.axes"
    elif search.algorithm == "grid":
        sizes = [len(d.values) for _, d in search.space.items() if isinstance(d, Choice)]
        n, field = math.prod(sizes) * seeds, "search.space"
        parts = [" × ".join(str(k) for k in sizes) + " combinations", f"{seeds} seeds"]
    else:
        n, field = (search.num_trials or 0) * seeds, "search.num_trials"
        parts = [f"{search.num_trials} configurations", f"{seeds} seeds"]
    if n > MAX_TRIALS:
        yield Problem(field, f"plans {n:,} trials ({' × '.join(parts)}); a sweep may plan at most {MAX_TRIALS:,}")


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
    if isinstance(size, int) and not 1 <= size <= MAX_BUNDLE_SIZE:
        yield Problem("resources.bundle_size", f"must be >= 1 and <= {MAX_BUNDLE_SIZE} or auto", size)
        return
    if size == "auto":
        return  # resolves to 1 where bundles cannot run (orchestration.plan.resources says why)
    if search.scheduler is not None:
        yield Problem("resources.bundle_size", "a bundle trains its members to the end together; remove "
                      "search.scheduler", size)  # fmt: skip
    if res.workers_per_trial > 1:
        yield Problem("resources.bundle_size", "bundles run in one process; workers_per_trial must be 1", size)


@_check("resources")
def _auto_resources(s: dict[str, Any]) -> Iterator[Problem]:
    res = s["resources"]
    if res.workers_per_trial > 1:
        for key in ("cpus_per_trial", "gpus_per_trial", "max_concurrent_trials"):
            if getattr(res, key) == "auto":
                yield Problem(f"resources.{key}", "auto sizes single-process trials; give a number with "
                              "workers_per_trial > 1", "auto")  # fmt: skip


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
        span = range(int(dist.low), min(int(dist.high), MAX_WIDTH) + 1)  # a higher bound: _space says so
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
    from deepsad.netconfig import NetConfig

    for dataset in datasets:
        if is_data_file(dataset):
            continue  # the sample shape is known once the file is loaded: preflight.validate_spec checks it
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


@_check("racing", "seeds")
def _racing(s: dict[str, Any]) -> Iterator[Problem]:
    racing, seeds = s["racing"], s["seeds"]
    if racing is None:
        return
    if s.get("ablation") is not None:
        yield Problem("racing", "an ablation runs every seed of every cell (the report's intervals rest on them); "
                      "remove racing")  # fmt: skip
    elif racing.start >= len(seeds):
        yield Problem("racing.start", f"must be below the number of seeds ({len(seeds)}): with every seed at the "
                      "start there is nothing to race; add seeds", racing.start)  # fmt: skip


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
        if has_search and given["search"] - {"objective"}:  # search.objective alone: what baselines choose on
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
    (:func:`deepsad.netconfig.default_net_config`) with the file's ``net`` overrides. A network other
    than the data set's default starts from its own reference sizes (its first data set in
    ``DEFAULT_NETS``). Nothing is validated here: building the ``NetConfig`` does that.

    Raises:
        ConfigError: an image shape that no network takes (from ``default_net_config``).
    """
    from deepsad.netconfig import DEFAULT_NETS, default_net_config

    base = default_net_config(dataset, tuple(sample_shape))
    name, rep, h_dims = base.name, base.rep_dim, tuple(base.h_dims)
    if net is not None and net.name is not None and net.name != base.name:
        name = net.name
        rep, h_dims = next(((r, h) for n, r, h in DEFAULT_NETS.values() if n == name), (32, ()))
    if net is not None:
        rep = net.rep_dim if net.rep_dim is not None else rep
        h_dims = tuple(net.h_dims) if net.h_dims is not None else h_dims
    return name, int(rep), h_dims
