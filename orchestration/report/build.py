"""Paper-style ablation tables and figures from a sweep's result store (``deepsad report``).

The numbers come from the trial rows only (:mod:`orchestration.store.results`): the rows a report uses are the
*finished* ones that were *selected* (``selected`` true, or null on rows without nested tuning), a null
``method`` reading as ``deepsad``. They are grouped by data set × row-axis value (γ_l by default) × method
— plus any other ablation axis that varies, so that different cells are never pooled — and each group's
values over seeds **and** normal classes give mean, sample std (ddof=1), n and a 95% confidence interval
that stays inside [0, 1] (:func:`summarize`: Student t with n-1 degrees of freedom on the logit scale,
back-transformed; undefined for n = 1).

Everything here is pure (rows in, numbers out): :func:`used_rows`, :func:`choose_axis`, :func:`aggregate`,
:func:`per_class`, :func:`provenance`, :func:`rank_blocks` and :func:`compare_methods` (the rank statistics of
:mod:`orchestration.report.stats`); :func:`load_sweep` reads the rows and :func:`build_report` gathers a
:class:`Report`. :mod:`orchestration.report.render` (which imports this module, never the other way round)
writes it as Markdown, HTML, PNG figures and CSV/JSON tables: :func:`orchestration.report.render.write_report`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import special, stats

from deepsad.errors import ConfigError, DeepSADError, StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.report.stats import Block, Comparisons, compare_all
from orchestration.store.results import TRIAL_SCHEMA, ResultStore

#: ``--metric`` name → the result column (the paper reports test-set numbers).
METRICS = {"auroc": "test_auroc", "ap": "test_ap"}
METRIC_LABELS = {"auroc": "AUROC", "ap": "AP"}
#: Row axes tried in order when none is requested: γ_l, or the number of labeled anomalies.
AXIS_CANDIDATES = ("ratio_known_outlier", "n_labeled_anomalies")
# Paper symbols with Unicode subscripts (γₗ, γₚ): they render in Markdown, HTML and matplotlib's default font.
AXIS_SHORT = {
    "ratio_known_outlier": "γₗ",
    "n_labeled_anomalies": "labeled anomalies",
    "ratio_pollution": "γₚ",
    "n_known_outlier_classes": "kₗ",
    "known_anomaly_classes": "known anomaly classes",
    "normal_classes": "normal classes",
    "params": "hyperparameters",
}
AXIS_LABELS = {
    "ratio_known_outlier": "γₗ (ratio of labeled anomalies)",
    "n_labeled_anomalies": "number of labeled anomalies",
    "ratio_pollution": "γₚ (pollution ratio)",
    "n_known_outlier_classes": "kₗ (known anomaly classes)",
    "known_anomaly_classes": "known anomaly class(es)",
    "normal_classes": "normal class(es)",
    "params": "hyperparameters",
}
#: Columns in the paper's order: the baselines first, Deep SAD last; unknown methods after, by name.
METHOD_ORDER = ("ocsvm", "isoforest", "deepsvdd", "deepsad")
METHOD_LABELS = {"ocsvm": "OC-SVM", "isoforest": "IF", "deepsvdd": "Deep SVDD", "deepsad": "Deep SAD"}
DEFAULT_METHOD = "deepsad"
# Axes that are averaged over (seed, normal class) or are table dimensions of their own.
_NOT_EXTRA = frozenset({"seed", "normal_classes", "dataset", "method"})
# Protocol columns that may vary in a store without ablation rows (no axes_json).
_PROTOCOL_AXES = (
    "ratio_known_outlier",
    "n_labeled_anomalies",
    "ratio_pollution",
    "n_known_outlier_classes",
    "known_anomaly_classes",
)

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------- rows


def as_rows(trials: pa.Table | Iterable[Mapping[str, Any]]) -> list[Row]:
    """The trial rows as dicts (a pyarrow Table as read by ``ResultStore.trials()``, or row mappings)."""
    if isinstance(trials, pa.Table):
        return list(trials.to_pylist())
    return [dict(r) for r in trials]


def used_rows(rows: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The rows a report aggregates: finished, selected (true or null), ``method`` filled (null → deepsad)."""
    out = []
    for r in rows:
        if r.get("status") == "finished" and r.get("selected") in (True, None):
            out.append({**r, "method": r.get("method") or DEFAULT_METHOD})
    return out


def axis_value(row: Mapping[str, Any], name: str) -> Any:
    """``row``'s value of axis ``name``: its column, else its ``axes_json`` entry; lists become tuples."""
    if name == "params":
        return row.get("params_json")
    v = row.get(name)
    if v is None and row.get("axes_json"):
        v = _axes(row).get(name)
    return tuple(v) if isinstance(v, list | tuple) else v


def _axes(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        axes = load_json_bounded(row.get("axes_json") or "{}", "axes_json")
    except DeepSADError:
        return {}  # a malformed cell description must not hide the cell's numbers
    return axes if isinstance(axes, dict) else {}


def _metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get(METRICS[metric])
    return None if v is None or not math.isfinite(v) else float(v)


def order_key(v: Any) -> tuple[int, Any]:
    """Sort key for axis values of mixed kinds: numbers ascending, then text, then missing."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, v)
    return (2, "") if v is None else (1, show(v))


def show(v: Any) -> str:
    """An axis value as printed: ``0.05``, ``10``, ``0,1`` for a list of classes, ``–`` when missing."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ",".join(show(x) for x in v)
    return str(v)


def method_order(methods: Iterable[str]) -> tuple[str, ...]:
    known = set(methods)
    return tuple(m for m in METHOD_ORDER if m in known) + tuple(sorted(known - set(METHOD_ORDER)))


def method_label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def axis_label(a: str) -> str:
    return AXIS_LABELS.get(a, a)


def axis_short(a: str) -> str:
    return AXIS_SHORT.get(a, a)


# ------------------------------------------------------------------------------------------- statistics


#: Values are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before the logit (an AUROC of exactly 1 has none).
LOGIT_EPS = 1e-6

@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1; 0 for n = 1), n and the 95% interval of :func:`summarize` (None for
    n = 1)."""

    n: int
    mean: float
    std: float
    ci_low: float | None
    ci_high: float | None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Summary: n must be >= 1 (got {self.n})")
        if (self.ci_low is None) != (self.n == 1) or (self.ci_high is None) != (self.n == 1):
            raise ValueError("Summary: the interval is undefined exactly when n == 1")


def summarize(values: Sequence[float]) -> Summary:
    """Summary of ``values`` (n >= 1 finite numbers). Raises ValueError when empty."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize: no values")
    mean = float(x.mean())
    if x.size == 1:
        return Summary(1, mean, 0.0, None, None)
    std = float(x.std(ddof=1))
    low, high = bounded_interval(x)
    return Summary(int(x.size), mean, std, low, high)


def bounded_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """A ``level`` interval of the mean of ``x`` (values in [0, 1], n >= 2) that stays inside [0, 1]:
    the Student t interval (n-1 dof) of the logits, back-transformed.

    AUROC and AP are bounded, and their runs pile up near 1: a t interval of the raw values then runs
    past 1 (the smoke report once said [81.0, 105.6]). On the logit scale the values are unbounded and
    closer to symmetric; back-transformed, the interval is bounded and wider towards the middle. Away
    from 0 and 1 it is close to the raw t interval. A bootstrap needs more runs than a cell usually has
    (3-10): its percentile interval never reaches past the sample's extremes and is too narrow there."""
    z = special.logit(np.clip(x, LOGIT_EPS, 1.0 - LOGIT_EPS))
    half = float(stats.t.ppf(0.5 + level / 2, z.size - 1)) * float(z.std(ddof=1)) / math.sqrt(z.size)
    center = float(z.mean())
    return float(special.expit(center - half)), float(special.expit(center + half))


# ------------------------------------------------------------------------------------------- aggregation


def choose_axis(rows: Sequence[Mapping[str, Any]], requested: str | None = None) -> str:
    """The row axis: ``requested`` if given, else the first of :data:`AXIS_CANDIDATES` that is an ablation
    axis of the rows (``axes_json``), else that varies, else that has any value (else γ_l).

    Raises ConfigError when ``requested`` names no trial column or ablation axis, or has no value.
    """
    if requested is not None:
        known = set(TRIAL_SCHEMA.names) | {k for r in rows for k in _axes(r)} | {"params"}
        if requested not in known:
            raise ConfigError(
                f"--axis: unknown column {requested!r} (e.g. {', '.join((*AXIS_CANDIDATES, *_PROTOCOL_AXES[2:]))})"
            )
        if all(axis_value(r, requested) is None for r in rows):
            raise ConfigError(f"--axis: {requested!r} has no value in any finished trial")
        return requested
    declared = {k for r in rows for k in _axes(r)}
    for test in (
        lambda a: a in declared,
        lambda a: len({axis_value(r, a) for r in rows} - {None}) > 1,
        lambda a: any(axis_value(r, a) is not None for r in rows),
    ):
        for a in AXIS_CANDIDATES:
            if test(a):
                return a
    return AXIS_CANDIDATES[0]


def extra_axes(rows: Sequence[Mapping[str, Any]], axis: str) -> tuple[str, ...]:
    """The other axes that vary among ``rows`` and so must split the groups (never seed or normal class).

    They are the ``axes_json`` keys of ablation rows; rows without any (plain sweeps) use the protocol
    columns, plus ``params`` when hyperparameters of a search (not of a tuned cell) vary.
    """
    declared = sorted({k for r in rows for k in _axes(r)})
    names = declared if declared else [a for a in _PROTOCOL_AXES if a != axis]
    if any(r.get("policy") in (None, "search") for r in rows):
        names.append("params")
    return tuple(
        a for a in names if a != axis and a not in _NOT_EXTRA and len({axis_value(r, a) for r in rows}) > 1
    )


@dataclass(frozen=True)
class Cell:
    """One table cell: the metric of ``method`` on ``dataset`` at ``group`` × ``value``."""

    dataset: str
    group: tuple[Any, ...]  # values of Ablation.extra_axes
    value: Any  # the row axis value
    method: str
    summary: Summary


@dataclass(frozen=True)
class Ablation:
    """The aggregated table of one metric: rows data set × extra axes × axis value, columns methods."""

    metric: str
    axis: str
    extra_axes: tuple[str, ...]
    methods: tuple[str, ...]
    cells: tuple[Cell, ...]

    def row_keys(self) -> list[tuple[str, tuple[Any, ...], Any]]:
        """(dataset, group, value) of every table row, in display order."""
        keys = {(c.dataset, c.group, c.value) for c in self.cells}
        return sorted(keys, key=lambda k: (k[0], [order_key(g) for g in k[1]], order_key(k[2])))

    def panels(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(dataset, group) of every figure panel, in display order."""
        return list(dict.fromkeys((d, g) for d, g, _ in self.row_keys()))

    def cell(self, dataset: str, group: tuple[Any, ...], value: Any, method: str) -> Cell | None:
        """The cell of ``method`` in a table row, or None when it has no finished run there."""
        return self._index.get((dataset, group, value, method))

    @functools.cached_property
    def _index(self) -> dict[tuple[str, tuple[Any, ...], Any, str], Cell]:
        return {(c.dataset, c.group, c.value, c.method): c for c in self.cells}


def aggregate(
    rows: Iterable[Mapping[str, Any]], *, metric: str = "auroc", axis: str | None = None
) -> Ablation:
    """Group the used rows (:func:`used_rows`) by data set × extra axes × ``axis`` × method and summarize
    ``metric`` over seeds and normal classes. Rows without a value of the metric are left out.

    Raises ConfigError on an unknown metric or axis (see :func:`choose_axis`).
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric: must be one of {', '.join(METRICS)} (got {metric!r})")
    used = used_rows(rows)
    axis = choose_axis(used, axis)
    extras = extra_axes(used, axis)
    groups: dict[tuple[str, tuple[Any, ...], Any, str], list[float]] = defaultdict(list)
    for r in used:
        v = _metric_value(r, metric)
        if v is not None:
            key = (
                show(r.get("dataset")),
                tuple(axis_value(r, a) for a in extras),
                axis_value(r, axis),
                r["method"],
            )
            groups[key].append(v)
    cells = tuple(Cell(d, g, x, m, summarize(vs)) for (d, g, x, m), vs in groups.items())
    return Ablation(metric, axis, extras, method_order(c.method for c in cells), cells)


@dataclass(frozen=True)
class HeatMap:
    """Mean metric of one method per normal class (rows) × axis value (columns), over seeds; None = no run."""

    dataset: str
    group: tuple[Any, ...]
    method: str
    classes: tuple[Any, ...]
    values: tuple[Any, ...]
    mean: tuple[tuple[float | None, ...], ...]  # (len(classes), len(values))
    n: tuple[tuple[int, ...], ...]


def per_class(rows: Iterable[Mapping[str, Any]], ablation: Ablation, method: str) -> list[HeatMap]:
    """One :class:`HeatMap` per (data set, extra-axes group) of ``ablation`` for ``method``."""
    acc: dict[tuple[str, tuple[Any, ...]], dict[tuple[Any, Any], list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in used_rows(rows):
        v = _metric_value(r, ablation.metric)
        if r["method"] == method and v is not None:
            panel = (show(r.get("dataset")), tuple(axis_value(r, a) for a in ablation.extra_axes))
            acc[panel][(axis_value(r, "normal_classes"), axis_value(r, ablation.axis))].append(v)
    maps = []
    for (dataset, group), cells in sorted(
        acc.items(), key=lambda p: (p[0][0], [order_key(g) for g in p[0][1]])
    ):
        classes = tuple(sorted({c for c, _ in cells}, key=order_key))
        values = tuple(sorted({x for _, x in cells}, key=order_key))
        mean = tuple(
            tuple(float(np.mean(cells[c, x])) if (c, x) in cells else None for x in values) for c in classes
        )
        n = tuple(tuple(len(cells.get((c, x), ())) for x in values) for c in classes)
        maps.append(HeatMap(dataset, group, method, classes, values, mean, n))
    return maps


def rank_blocks(rows: Iterable[Mapping[str, Any]], ablation: Ablation) -> list[Block]:
    """The blocks of the rank comparison of ``ablation`` (:mod:`orchestration.report.stats`): one per data
    set × extra axes × row-axis value × normal class(es), each method's score its metric averaged over seeds
    (over the used rows there, :func:`used_rows`). In display order."""
    acc: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in used_rows(rows):
        v = _metric_value(r, ablation.metric)
        if v is not None:
            group = tuple(axis_value(r, a) for a in ablation.extra_axes)
            key = (show(r.get("dataset")), group, axis_value(r, ablation.axis), axis_value(r, "normal_classes"))
            acc[key][r["method"]].append(v)
    names = (*ablation.extra_axes, ablation.axis)

    def display(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dataset, group, value, classes = key
        return dataset, [order_key(g) for g in group], order_key(value), order_key(classes)

    return [
        Block(
            key,
            dict(zip(names, (*key[1], key[2]), strict=True)),
            {m: float(np.mean(vs)) for m, vs in acc[key].items()},
        )
        for key in sorted(acc, key=display)
    ]


def compare_methods(rows: Iterable[Mapping[str, Any]], ablation: Ablation) -> Comparisons:
    """Average ranks, Friedman/Nemenyi and Holm-corrected Wilcoxon tests of ``ablation``'s methods over its
    blocks (:func:`rank_blocks`), overall and per value of the row axis and of each extra axis."""
    blocks = rank_blocks(rows, ablation)
    axes = {
        a: sorted({b.axes[a] for b in blocks}, key=order_key) for a in (ablation.axis, *ablation.extra_axes)
    }
    return compare_all(blocks, ablation.methods, metric=ablation.metric, axes=axes)


# ------------------------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from: code, data, policy, what ran and what failed."""

    sweep: str
    location: str
    spec_text: str | None
    code_versions: dict[str, int]  # version → rows used
    fingerprints: dict[str, list[str]]  # data set → distinct split fingerprints of the rows used
    policies: dict[str, int]  # policy → rows used ("not recorded" for rows of plain sweeps)
    counts: dict[str, int]  # status → rows, over every row of the store
    used: int  # finished, selected rows with a metric value
    not_selected: int  # finished inner trials of tuned cells that were not chosen
    missing_metric: int  # used rows without the metric
    # failed rows as trial_key, dataset, method, axes, normal_classes, seed, inner_trial, error
    failed: list[Row]


def provenance(
    rows: Sequence[Mapping[str, Any]], *, sweep: str, location: str, spec_text: str | None, metric: str
) -> Provenance:
    used = used_rows(rows)
    fingerprints: dict[str, set[str]] = defaultdict(set)
    for r in used:
        if r.get("fingerprint"):
            fingerprints[show(r.get("dataset"))].add(r["fingerprint"])
    failed = [
        {
            "trial_key": r["trial_key"],
            "dataset": r.get("dataset"),
            "method": r.get("method") or DEFAULT_METHOD,
            "axes": _describe_axes(r),
            "normal_classes": show(axis_value(r, "normal_classes")),
            "seed": r.get("seed"),
            "inner_trial": r.get("inner_trial"),
            "error": r.get("error") or "(no error recorded)",
        }
        for r in rows
        if r.get("status") == "failed"
    ]
    return Provenance(
        sweep=sweep,
        location=location,
        spec_text=spec_text,
        code_versions=dict(Counter(r.get("code_version") or "not recorded" for r in used).most_common()),
        fingerprints={d: sorted(f) for d, f in sorted(fingerprints.items())},
        policies=dict(Counter(r.get("policy") or "not recorded" for r in used).most_common()),
        counts=dict(sorted(Counter(str(r.get("status")) for r in rows).items())),
        used=sum(_metric_value(r, metric) is not None for r in used),
        not_selected=sum(r.get("status") == "finished" and r.get("selected") is False for r in rows),
        missing_metric=sum(_metric_value(r, metric) is None for r in used),
        failed=sorted(failed, key=lambda f: (show(f["dataset"]), f["axes"], f["method"], f["trial_key"])),
    )


def _describe_axes(row: Mapping[str, Any]) -> str:
    axes = _axes(row)
    if not axes:
        axes = {a: row.get(a) for a in AXIS_CANDIDATES if row.get(a) is not None}
    # data set, normal class and seed have columns of their own in the failed-cells table
    text = ", ".join(f"{k}={show(v)}" for k, v in sorted(axes.items()) if k not in _NOT_EXTRA)
    if row.get("inner_trial") is not None:
        text += f"{', ' if text else ''}inner trial {row['inner_trial']}"
    return text


# ------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    """Everything a report shows; :func:`orchestration.report.render.write_report` writes it."""

    sweep: str
    metric: str  # the metric of the figures and of the first table
    tables: tuple[Ablation, ...]  # one per metric, ``metric`` first
    heatmaps: tuple[HeatMap, ...]
    provenance: Provenance
    comparisons: tuple[Comparisons, ...] = ()  # one per table: ranks and significance tests of the methods


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as stored: its location, its sweep file (verbatim, if present) and its trial rows."""

    name: str
    location: str
    spec_text: str | None
    rows: list[Row]


def load_sweep(name: str, storage: str | None) -> SweepRecord:
    """Read sweep ``name`` under ``storage`` (default ``runs/sweeps``) without validating its sweep file,
    so that any stored sweep can be reported, whatever the sweep-file version.

    Raises StorageError: no sweep of that name (neither ``spec.yaml`` nor results), or an unreadable store.
    """
    from orchestration.store.layout import SPEC_FILE, sweep_location

    sweep_dir = sweep_location(name, storage)
    has_spec = sweep_dir.exists(SPEC_FILE)
    if not has_spec and not ResultStore(sweep_dir).exists():
        raise StorageError(f"no sweep {name!r} under {sweep_dir.uri.rsplit('/', 1)[0]} (no {SPEC_FILE})")
    spec_text = sweep_dir.read_bytes(SPEC_FILE).decode("utf-8", errors="replace") if has_spec else None
    return SweepRecord(name, sweep_dir.uri, spec_text, as_rows(ResultStore(sweep_dir).trials()))


def build_report(record: SweepRecord, *, metric: str = "auroc", axis: str | None = None) -> Report:
    """Aggregate ``record`` for a report: a table per metric (``metric`` first), the rank comparison of the
    methods per metric (:func:`compare_methods`), the per-class heat maps of Deep SAD (else of the first method
    present) and the provenance.

    Raises ConfigError on a bad ``metric``/``axis``; StorageError when no finished trial has the metric.
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric: must be one of {', '.join(METRICS)} (got {metric!r})")
    tables = tuple(
        aggregate(record.rows, metric=m, axis=axis) for m in (metric, *(m for m in METRICS if m != metric))
    )
    if not tables[0].cells:
        counts = ", ".join(
            f"{n} {s}" for s, n in sorted(Counter(str(r.get("status")) for r in record.rows).items())
        )
        raise StorageError(f"sweep {record.name!r}: no finished trials to report ({counts or 'no trials'})")
    method = DEFAULT_METHOD if DEFAULT_METHOD in tables[0].methods else tables[0].methods[0]
    prov = provenance(
        record.rows, sweep=record.name, location=record.location, spec_text=record.spec_text, metric=metric
    )
    comparisons = tuple(compare_methods(record.rows, ab) for ab in tables)
    return Report(
        record.name, metric, tables, tuple(per_class(record.rows, tables[0], method)), prov, comparisons
    )
