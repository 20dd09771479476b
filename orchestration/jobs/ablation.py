"""The units of an ablation (:mod:`orchestration.plan.ablation`) as jobs, one Tune trial each:

* :class:`FixedUnitJob` — Deep SAD, or Deep SVDD (Deep SAD with the training part's semi-targets
  zeroed), at the file's hyperparameters: one :func:`~orchestration.jobs.trial.train_member`;
* :class:`TunedUnitJob` — policy ``tuned``: a seeded in-process Optuna TPE study of ``budget``
  trainings that sees only validation metrics; the best is marked ``selected``;
* :class:`BaselineJob` — Isolation Forest and OC-SVM through :func:`deepsad.baselines.fit_baseline` on
  the same split (they choose their own hyperparameters on validation).

Fixed units of like shape are also trained many at once (:class:`~orchestration.jobs.bundle.BundleJob`
over :func:`unit_member`). A unit is done when its selected row is finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from deepsad.data.splits import make_split
from deepsad.errors import DataError, StorageError
from deepsad.jsonio import load_json_bounded
from deepsad.training import TrainState
from orchestration.jobs import faults
from orchestration.jobs.base import (
    CacheLock,
    Member,
    Reporter,
    RunContext,
    final_metrics,
    load_data,
    resolve_device,
)
from orchestration.jobs.trial import train_member
from orchestration.plan.ablation import AblationUnit, with_params
from orchestration.plan.space import optuna_distributions
from orchestration.plan.trial import TrialConfig
from orchestration.store.results import RowWriter


def unit_member(unit: AblationUnit, *, inner: int | None = None, trial: TrialConfig | None = None) -> Member:
    """The Deep SAD / Deep SVDD training of a unit (``inner``: a tuned unit's inner training ``inner``,
    of ``trial``)."""
    columns = unit.ablation_columns() if inner is None else unit.ablation_columns(selected=False, inner=inner)
    return Member(trial or unit.trial, unit.row_key(inner), columns, labels=unit.method == "deepsad")


@dataclass(frozen=True)
class _UnitJob:
    """What every unit job shares: its id and key, its dict form, and the driver's record of its end."""

    unit: AblationUnit
    kind: ClassVar[str] = "unit"

    @property
    def id(self) -> str:
        return self.unit.key

    @property
    def keys(self) -> list[str]:
        return [self.unit.key]

    def record_end(self, rows: RowWriter, status: str, error: str | None, last: Mapping[str, Any]) -> None:
        """The unit's row, under its key, unless the unit is done."""
        if _selected_row(rows, self.unit) is None:
            rows.end(self.unit.key, status, error, columns=self.unit.columns(selected=self.unit.policy != "tuned"),
                     params=self.unit.params, last=last)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "unit": self.unit.to_dict()}


@dataclass(frozen=True)
class FixedUnitJob(_UnitJob):
    kind: ClassVar[str] = "fixed_unit"

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        return [train_member(unit_member(self.unit), reporter, ctx, lock)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixedUnitJob:
        return cls(AblationUnit.from_dict(d["unit"]))


@dataclass(frozen=True)
class BaselineJob(_UnitJob):
    kind: ClassVar[str] = "baseline_unit"

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        return [_run_baseline(self.unit, reporter, ctx)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaselineJob:
        return cls(AblationUnit.from_dict(d["unit"]))


@dataclass(frozen=True)
class TunedUnitJob(_UnitJob):
    kind: ClassVar[str] = "tuned_unit"

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        return _run_tuned(self.unit, reporter, ctx, lock)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TunedUnitJob:
        return cls(AblationUnit.from_dict(d["unit"]))


def unit_job(unit: AblationUnit) -> FixedUnitJob | TunedUnitJob | BaselineJob:
    """The job of one ablation unit."""
    if unit.is_baseline:
        return BaselineJob(unit)
    return FixedUnitJob(unit) if unit.policy == "fixed" else TunedUnitJob(unit)


def _selected_row(rows: RowWriter, unit: AblationUnit) -> dict[str, Any] | None:
    """The unit's finished, selected row (it is done), if any; reads only the unit's own rows."""
    for i in [None] if unit.policy != "tuned" else range(unit.budget):
        row = rows.row(unit.row_key(i))
        if row is not None and row.get("status") == "finished" and row.get("selected"):
            return row
    return None


def _run_baseline(unit: AblationUnit, reporter: Reporter, ctx: RunContext) -> dict[str, Any]:
    from deepsad.baselines import BaselineData, default_grid, fit_baseline
    from deepsad.metrics import auroc, average_precision, known_labels, rankable, validation_labels

    rows = ctx.rows()
    previous = rows.finished(unit.key)
    if previous is not None:
        reporter.report(final_metrics(previous, skipped=True), None)
        return previous
    attempt = rows.start(unit.key, unit.columns())
    faults.checkpoint("trial_start", rank=0, trial_key=unit.key)
    split = make_split(load_data(unit.trial.dataset, unit.trial.data_dir), unit.trial.protocol)
    name: Any = unit.method
    # candidates are chosen on the unit's objective: by default the labels a user has (labelled anomalies
    # against the rest), an _oracle objective the true ones; both kinds of validation metric are reported
    chosen_on = validation_labels(unit.objective, semi_targets=split.val.semi_targets, labels=split.val.labels)
    known = known_labels(split.val.semi_targets)
    if (chosen_on == 1).any():
        data = BaselineData(split.train.x, split.val.x, chosen_on, split.test.x, split.test.labels,
                            y_val_oracle=split.val.labels)
        result = fit_baseline(name, data, seed=unit.seed)
        params: dict[str, Any] = dict(result.hyperparameters)
    else:
        # nothing to rank the candidates on (no labelled anomaly in validation, or γ_l = γ_p = 0 for an
        # _oracle objective): all tie and the first is taken (the tie rule of fit_baseline). With one
        # candidate nothing is chosen, so the test part may stand in for the validation argument (which
        # must hold both classes); the validation metrics are then computed below, not taken from it.
        data = BaselineData(split.train.x, split.test.x, split.test.labels, split.test.x, split.test.labels)
        result = fit_baseline(name, data, seed=unit.seed, grid=[default_grid(name)[0]])
        params = {**result.hyperparameters, "selection": "first candidate (no anomalies to choose on in validation)"}
    scores = result.score(split.val.x)
    val: dict[str, float | None] = dict.fromkeys(("val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle"))
    for suffix, labels in (("", known), ("_oracle", split.val.labels)):
        if rankable(labels):
            val[f"val_auroc{suffix}"], val[f"val_ap{suffix}"] = auroc(labels, scores), average_precision(labels, scores)
    faults.checkpoint("trial_end", rank=0, trial_key=unit.key)
    row = rows.finish(attempt, {"fingerprint": split.fingerprint, **val,
                                "test_auroc": result.test_auroc, "test_ap": result.test_ap,
                                "params_json": json.dumps(params, sort_keys=True), "device": "cpu"})
    reporter.report(final_metrics(row, skipped=False), None)
    return row


class _Handed:
    """A reporter whose restored checkpoint is the one given (the unit's, for the training it belongs to)."""

    def __init__(self, inner: Reporter, state: TrainState | None) -> None:
        self.inner, self.state = inner, state
        self.rank, self.world_size = inner.rank, inner.world_size

    def restored(self) -> TrainState | None:
        return self.state

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        self.inner.report(metrics, state)


def _belongs_to(state: TrainState | None, trial: TrialConfig) -> bool:
    if state is None:
        return False
    return bool(state.meta.get("config") == replace(trial.train, device=resolve_device(trial.device_request)).to_dict())


def _run_tuned(unit: AblationUnit, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
    """The nested study of a tuned unit: ``budget`` trainings suggested by a seeded TPE sampler that
    is told only the objective (a validation metric); the best is marked selected (first on ties).

    A retried unit replays the inner trainings that have finished rows (same suggestions: the sampler
    is seeded and told the same values), and resumes the interrupted one from its checkpoint.

    Raises:
        DataError: every inner training failed or had no objective value.
    """
    import optuna

    rows = ctx.rows()
    done = _selected_row(rows, unit)
    if done is not None:
        reporter.report({**final_metrics(done, skipped=True), "trial_key": unit.key}, None)
        return [done]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # small budgets: Optuna's default of 10 random start-up trials would leave TPE nothing to do
    sampler = optuna.samplers.TPESampler(seed=unit.search_seed, n_startup_trials=min(10, max(2, unit.budget // 2)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = optuna_distributions(unit.space)
    restored = reporter.restored()
    out: list[dict[str, Any]] = []
    for i in range(unit.budget):
        asked = study.ask(space)
        row, restored = _inner(unit, i, with_params(unit.trial, asked.params), rows, restored, reporter, ctx, lock)
        value = row.get(unit.objective) if row.get("status") == "finished" else None
        if isinstance(value, float) and math.isfinite(value):
            study.tell(asked, value)
        else:
            study.tell(asked, state=optuna.trial.TrialState.FAIL)
        out.append(row)
    scored = [(i, r) for i, r in enumerate(out)
              if isinstance(r.get(unit.objective), float) and math.isfinite(r[unit.objective])]  # fmt: skip
    if not scored:
        raise DataError(f"ablation unit {unit.key}: all {unit.budget} inner trainings failed or had no "
                        f"{unit.objective}")  # fmt: skip
    best_i, best = max(scored, key=lambda ir: (ir[1][unit.objective], -ir[0]))
    out[best_i] = rows.select(best)
    rows.delete(unit.key)  # the unit-level row a failed attempt left: the inner rows replace it
    reporter.report({**final_metrics(out[best_i], skipped=False), "trial_key": unit.key, "inner_trial": best_i}, None)
    return out


def _inner(unit: AblationUnit, i: int, trial: TrialConfig, rows: RowWriter, restored: TrainState | None,
           reporter: Reporter, ctx: RunContext, lock: CacheLock) -> tuple[dict[str, Any], TrainState | None]:
    """Inner training ``i`` of a tuned unit: its finished row (same suggestion) or a new training, which
    resumes from the unit's checkpoint if that is this training's. A training that fails (e.g. a
    diverged one, NaN scores) fails alone. Returns its row and the checkpoint still unused."""
    key = unit.row_key(i)
    previous = rows.finished(key)
    if previous is not None and load_json_bounded(previous.get("params_json") or "{}", f"row {key}: params_json",
                                                  error=StorageError) == trial.params:
        return previous, restored
    handed, restored = (restored, None) if _belongs_to(restored, trial) else (None, restored)
    try:
        return train_member(unit_member(unit, inner=i, trial=trial), _Handed(reporter, handed), ctx, lock,
                            final=False), restored
    except DataError as e:
        return rows.end(key, "failed", str(e)), restored
