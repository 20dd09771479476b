"""The search space as Optuna distributions, without Ray: the sweep's (``search.space``, used by the
Tune searcher in :mod:`orchestration.engine.search`) and a tuned ablation unit's (plain JSON, used by
its in-process study in :mod:`orchestration.jobs.ablation`). Optuna is imported when called."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestration.spec.model import SweepSpec


def optuna_distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``search.space`` entries as plain JSON (``{"distribution": "log_uniform", "low": ..., ...}``) as
    Optuna distributions."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key, d in space.items():
        kind = d["distribution"]
        if kind == "log_uniform":
            out[key] = od.FloatDistribution(d["low"], d["high"], log=True)
        elif kind == "uniform":
            out[key] = od.FloatDistribution(d["low"], d["high"])
        elif kind == "int_uniform":
            out[key] = od.IntDistribution(int(d["low"]), int(d["high"]))
        else:
            out[key] = od.CategoricalDistribution(list(d["values"]))
    return out


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's search space as Optuna distributions."""
    return optuna_distributions({k: d.model_dump() for k, d in spec.search.space.items()})
