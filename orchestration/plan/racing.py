"""Seeds raced, not multiplied (``racing:`` in a sweep file).

A configuration's worth is its mean over seeds, but running every configuration on every seed spends
most of the budget on configurations that were never in contention. With ``racing: {start: 3,
confidence: 0.95}`` every configuration first runs on the first ``start`` of the sweep's ``seeds``;
then, round after round, the next seed goes only to the configurations that may still be as good as
the leader (and to the leader, while any is), up to all of ``seeds``.

The rules, for an objective to maximise (:func:`race`):

* a configuration's interval is Student's t interval of the mean of its finished seeds' values
  (:func:`interval`; at least two values);
* the **leader** has the highest mean among the configurations with an interval;
* a **contender** is any other configuration that the seeds do not yet show to be worse than the
  leader: the t interval of its *paired* differences to the leader, seed by seed over the seeds both
  have finished (:func:`paired`), still reaches 0. Paired, because a seed fixes the split, the
  initialisation and the pretrained autoencoder of every configuration alike: much of the
  seed-to-seed spread is common to all of them (a hard seed is hard for every configuration) and
  cancels in the difference, while two separate intervals each carry it (a simulated race with a
  shared seed effect: 49 trainings instead of 57, same winner, in ``tests/orchestration/plan/
  test_racing.py``; replay a race on your own sweep with ``benchmarks/bench_search.py --race``). With
  fewer than two seeds in common the
  separate intervals decide (an upper bound that reaches the leader's lower bound contends). A
  contender gets its next seed while it has one left; a configuration with fewer than two values gets seeds
  only until its first ``start`` are spent (one that keeps failing is out, it does not burn every
  seed); a configuration that the scheduler stopped early (ASHA) is out of the race;
* the leader is **settled** when no contender is left; if contenders are left but every seed is
  spent, the race ends unsettled and says so.

Which seed is next, and who races, is read from the result rows alone (:func:`race`): a resumed
sweep continues the race where it stopped, and a trial key is the same as in a sweep that ran every
seed, so the rows mean what they always mean.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Statuses of a row whose seed is spent (a running row's seed is not: it runs again).
SPENT = ("finished", "failed", "stopped")


def interval(values: Sequence[float], confidence: float) -> tuple[float, float | None, float | None]:
    """``(mean, lower, upper)``: Student's t interval of the mean of ``values`` at ``confidence``
    (``lower``/``upper`` None for fewer than two values)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired(values: Mapping[int, float], leader: Mapping[int, float], confidence: float
           ) -> tuple[float, float, float] | None:  # fmt: skip
    """``(mean, lower, upper)`` of the differences ``values[seed] - leader[seed]`` over the seeds both
    have (Student's t, as :func:`interval`); None with fewer than two seeds in common."""
    common = sorted(set(values) & set(leader))
    if len(common) < 2:
        return None
    mean, lo, hi = interval([values[s] - leader[s] for s in common], confidence)
    assert lo is not None and hi is not None
    return mean, lo, hi


@dataclass
class Standing:
    """One configuration in the race: its searched values and its seeds' outcomes."""

    params: dict[str, Any]
    values: dict[int, float] = field(default_factory=dict)  # seed -> finished value
    spent: set[int] = field(default_factory=set)  # seeds with a final row (finished, failed, stopped)
    stopped: bool = False  # the scheduler stopped one of its trials early: out of the race

    def bounds(self, confidence: float) -> tuple[float | None, float | None, float | None]:
        if not self.values:
            return None, None, None
        return interval(list(self.values.values()), confidence)


@dataclass(frozen=True)
class Round:
    """What the race decides after the rows it saw.

    Attributes:
        runs: ``(params, seed)`` of the trials of the next round (empty: the race is over).
        leader: the leader's params (None before any configuration has two values).
        contenders: how many configurations other than the leader are still in contention.
        settled: no contender is left.
        trainings: trials run so far (seeds spent); every_seed: what running every seed costs.
    """

    runs: list[tuple[dict[str, Any], int]]
    leader: dict[str, Any] | None
    leader_bounds: tuple[float, float, float] | None
    contenders: int
    settled: bool
    trainings: int
    every_seed: int

    def line(self, metric: str) -> str:
        """One line for the terminal."""
        saved = self.every_seed - self.trainings
        cost = f"{self.trainings} trainings so far of {self.every_seed} for every seed"
        if self.leader is None or self.leader_bounds is None:
            return f"racing: no configuration has two finished seeds yet; {cost}"
        mean, lo, hi = self.leader_bounds
        leader = (f"leader {_show(self.leader)} ({metric} {mean:.4f}, interval [{lo:.4f}, {hi:.4f}])")
        if self.runs:
            return f"racing: {leader}; {self.contenders} in contention: {len(self.runs)} more trials; {cost}"
        if self.settled:
            return f"racing: {leader} is settled: every other configuration is worse on its seeds; {cost} ({saved} saved)"
        others = "1 other configuration is" if self.contenders == 1 else \
            f"{self.contenders} other configurations are"
        return (f"racing: {leader}: {others} not shown worse with every seed spent (not settled: add seeds to "
                f"separate them); {cost} ({saved} saved)")


def standings(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, Standing]:
    """The rows grouped by configuration (``params_json``)."""
    out: dict[str, Standing] = {}
    for r in rows:
        text = r.get("params_json") or "{}"
        params = json.loads(text)
        s = out.setdefault(json.dumps(params, sort_keys=True), Standing(params))
        status, seed = r.get("status"), int(r.get("seed") or 0)
        if status in SPENT:
            s.spent.add(seed)
        if status == "stopped":
            s.stopped = True
        value = r.get(metric)
        if status == "finished" and isinstance(value, int | float) and math.isfinite(value):
            s.values[seed] = float(value)
    return out


def race(configs: Mapping[str, Standing], seeds: Sequence[int], confidence: float, start: int) -> Round:
    """The next round of the race (see the module docstring); ``configs`` as :func:`standings` gives."""
    bounds: dict[str, tuple[float, float, float]] = {}  # configurations with an interval
    for k, s in configs.items():
        mean, lo, hi = s.bounds(confidence)
        if mean is not None and lo is not None and hi is not None and not s.stopped:
            bounds[k] = (mean, lo, hi)
    leader = max(bounds, key=lambda k: (bounds[k][0], k), default=None)

    def left(s: Standing) -> int | None:
        return next((seed for seed in seeds if seed not in s.spent), None)

    def contends(k: str, s: Standing) -> bool:
        if k == leader or s.stopped:
            return False
        if k not in bounds:  # fewer than two values: only while its first seeds are not all spent
            return len(s.spent) < start
        if leader is None:
            return False
        diff = paired(s.values, configs[leader].values, confidence)
        if diff is not None:
            return diff[2] >= 0  # its difference to the leader may still be 0 or better
        return bounds[k][2] >= bounds[leader][1]

    contenders = [k for k, s in configs.items() if contends(k, s)]
    runs = [(configs[k].params, seed) for k in contenders if (seed := left(configs[k])) is not None]
    if runs and leader is not None and (seed := left(configs[leader])) is not None:
        runs.insert(0, (configs[leader].params, seed))
    return Round(
        runs=runs,
        leader=configs[leader].params if leader is not None else None,
        leader_bounds=bounds[leader] if leader is not None else None,
        contenders=len(contenders),
        settled=not contenders,
        trainings=sum(len(s.spent) for s in configs.values()),
        every_seed=len(configs) * len(seeds),
    )


def _show(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())) or "{}"
