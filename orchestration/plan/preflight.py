"""The checks that run before any trial starts: every trial a sweep may run is built and its split
drawn (:func:`validate_spec`), and the machine or cluster must fit the requested trials
(:func:`check_resources`). Each failure is one line naming the sweep file and the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepsad.errors import ConfigError, DataError
from orchestration.plan.cells import amount, build_all, grid_params, probe_params, random_params, resolve_data
from orchestration.plan.trial import TrialConfig
from orchestration.spec.model import REGISTRY_SAMPLE_SHAPES, Problem, SweepSpec, is_data_file, problems_error

if TYPE_CHECKING:
    from deepsad.data.dataset import Dataset
    from deepsad.data.splits import Protocol


def validate_spec(spec: SweepSpec) -> list[TrialConfig]:
    """Check every trial a sweep may run, without training anything.

    Loads the data set once, builds every cell (grid, random) or the trials at the extremes of the
    space (tpe, see :func:`probe_params`) for every seed, and draws the split of every seed to
    prove the protocol feasible — including that the validation part has the anomalies the objective
    ranks on (labelled ones; any for an ``_oracle`` metric), without which it is undefined.

    Returns:
        The cells (grid, random) or the probe trials (tpe).

    Raises:
        ConfigError: one line per problem, ``<spec file>: <field>: <message>``.
    """
    from deepsad.data.sources import load_dataset
    from deepsad.data.splits import Protocol, make_split

    dataset, data_dir = resolve_data(spec)
    try:
        data = load_dataset(dataset, data_dir)
    except (ConfigError, DataError) as e:
        field = "data.data_dir" if "data directory" in str(e) else "data.dataset"
        raise problems_error(spec.source, [Problem(field, str(e))]) from e
    problems: list[Problem] = []
    expected = None if is_data_file(dataset) else REGISTRY_SAMPLE_SHAPES[dataset]
    if expected is not None and expected != data.sample_shape:
        problems.append(
            Problem("data.dataset", f"loaded samples have shape {data.sample_shape}, not {expected}")
        )
    configs = probe_params(spec) if spec.search.algorithm == "tpe" else None
    if configs is None:
        configs = grid_params(spec) if spec.search.algorithm == "grid" else random_params(spec)
    trials, lines = build_all(spec, configs, data.sample_shape)
    try:
        protocols = [Protocol(**spec.protocol.model_dump(), seed=s) for s in spec.seeds]
    except ConfigError:
        protocols = []  # already reported by the trials
    for protocol in protocols:
        problems += split_problems(spec, data, protocol, make_split)
    lines += [p.format(spec.source) for p in problems]
    if lines:
        raise ConfigError("\n".join(dict.fromkeys(lines)))
    return trials


def split_problems(spec: SweepSpec, data: Dataset, protocol: Protocol, make_split: Any) -> list[Problem]:
    from deepsad.metrics import validation_labels

    seed = protocol.seed
    try:
        split = make_split(data, protocol)
    except (ConfigError, DataError) as e:
        message = str(e)
        field, _, rest = message.partition(": ")
        if field.startswith("protocol."):
            return [Problem(field, f"seed {seed}: {rest}")]
        return [Problem(protocol_field(message, protocol), f"seed {seed}: {message}")]
    metric = spec.search.objective.metric
    if not (validation_labels(metric, semi_targets=split.val.semi_targets, labels=split.val.labels) == 1).any():
        return [Problem("protocol", f"seed {seed}: {no_validation_anomalies(metric)}")]
    return []


def no_validation_anomalies(metric: str) -> str:
    """Why ``metric`` cannot be computed on a validation part, and what would fix it."""
    if metric.endswith("_oracle"):
        return (f"the validation part has no anomalies, so {metric} is undefined; raise ratio_pollution, "
                "n_labeled_anomalies/ratio_known_outlier or val_fraction")
    return (f"the validation part has no labelled anomalies, so {metric} (labelled anomalies against the rest) is "
            "undefined; raise n_labeled_anomalies/ratio_known_outlier or val_fraction (or, to compare with "
            f"published protocols only, choose {metric}_oracle: the true labels, which no user has)")


def protocol_field(message: str, protocol: Protocol) -> str:
    """The protocol field a core split error is about (its messages name the setting, not the field)."""
    if "normal class" in message and "not a class" in message:
        return "protocol.normal_classes"
    if "known anomaly class" in message and "not a class" in message:
        return "protocol.known_anomaly_classes"
    if "unlabeled anomalies" in message:
        return "protocol.ratio_pollution"
    if "labeled anomalies" in message:
        return "protocol.n_labeled_anomalies" if protocol.count_mode else "protocol.ratio_known_outlier"
    if "ratio_known_normal" in message:
        return "protocol.ratio_known_normal"
    if "test_fraction" in message:
        return "protocol.test_fraction"
    return "protocol"


def _available(n: float) -> str:
    shown = str(int(n)) if float(n).is_integer() else f"{n:g}"
    return f"{shown} {'is' if n == 1 else 'are'} available"


def check_resources(spec: SweepSpec, available_cpus: float, available_gpus: float) -> None:
    """Fail early when the cluster cannot run one trial, or ``max_concurrent_trials`` of them at once.

    A trial needs ``workers_per_trial`` × (``cpus_per_trial``, ``gpus_per_trial``): with Ray Train
    each worker gets that share and the trial's own driver asks for no CPU. ``auto`` fields are sized
    to the given numbers first (:func:`orchestration.plan.resources.resolve`), so only explicit ones can fail.

    Raises:
        ConfigError: one line per problem, e.g. ``<file>: resources.max_concurrent_trials: 4
            concurrent trials × 1 CPU need 4 CPUs but 2 are available; at most 2 fit``.
    """
    r = spec.resources
    if r.has_auto():  # auto never asks for more than there is: check what it sizes with the given numbers
        from orchestration.plan.resources import resolve

        r = resolve(spec, {"CPU": available_cpus, "GPU": available_gpus}, None).resources
    problems: list[Problem] = []
    for unit, per_worker, available in (
        ("CPU", r.cpus_per_trial, available_cpus),
        ("GPU", r.gpus_per_trial, available_gpus),
    ):
        need = r.workers_per_trial * per_worker
        if need == 0:
            continue
        if need > available + 1e-9:
            if r.workers_per_trial > 1:
                problems.append(Problem(
                    "resources.workers_per_trial",
                    f"{r.workers_per_trial} workers × {amount(per_worker, unit)} need {amount(need, unit)} per "
                    f"trial but {_available(available)}",
                ))  # fmt: skip
            else:
                problems.append(Problem(
                    f"resources.{unit.lower()}s_per_trial",
                    f"a trial needs {amount(need, unit)} but {_available(available)}",
                ))  # fmt: skip
            continue
        total = r.max_concurrent_trials * need
        if total > available + 1e-9:
            fit = int((available + 1e-9) // need)
            problems.append(Problem(
                "resources.max_concurrent_trials",
                f"{r.max_concurrent_trials} concurrent trials × {amount(need, unit)} need {amount(total, unit)} "
                f"but {_available(available)}; at most {fit} fit",
            ))  # fmt: skip
    if problems:
        raise problems_error(spec.source, problems)
