"""What a sweep will do, before it does it: the summary ``deepsad sweep submit --dry-run`` prints and
``plan.json`` records — a grid, random or tpe sweep's (:class:`orchestration.plan.cells.SweepPlan`) or
an ablation's (:class:`orchestration.plan.ablation.AblationPlan`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestration.plan.ablation import AblationPlan, ablation_plan
from orchestration.plan.cells import SweepPlan, sweep_plan
from orchestration.spec.model import SweepSpec


def make_plan(
    spec: SweepSpec, cells: Sequence[Any] | None = None, *, storage: str | None = None
) -> SweepPlan | AblationPlan:
    """Summarise ``spec``; ``cells`` (from :func:`orchestration.plan.preflight.validate_spec`, or the
    units of :func:`orchestration.plan.ablation.validate_ablation`) saves building them again.

    Raises:
        ConfigError: a trial configuration is invalid.
    """
    if spec.ablation is not None:
        return ablation_plan(spec, cells, storage=storage)
    return sweep_plan(spec, cells, storage=storage)
