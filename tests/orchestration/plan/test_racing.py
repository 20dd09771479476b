"""Seeds raced (orchestration.plan.racing): the intervals by hand, who contends (paired differences to
the leader), and a race run to its end on a synthetic objective — clearly worse configurations stop
at their first seeds, close ones get more, fewer trainings than every seed, and fewer than separate
intervals when a seed's effect is common to every configuration."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from orchestration.plan.racing import Standing, interval, paired, race, standings

SEEDS = list(range(10))


def test_the_interval_is_students_t_of_the_mean() -> None:
    mean, lo, hi = interval([0.80, 0.82, 0.84], 0.95)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) from a table; sample sd 0.02
    assert mean == pytest.approx(0.82) and lo == pytest.approx(0.82 - half) and hi == pytest.approx(0.82 + half)
    assert interval([0.7], 0.95) == (0.7, None, None)


def _standing(eta: float, values: dict[int, float], spent: set[int] | None = None, stopped: bool = False) -> Standing:
    return Standing({"eta": eta}, dict(values), set(values) if spent is None else spent, stopped)


def test_a_clearly_worse_configuration_gets_no_more_seeds_and_the_leader_is_settled() -> None:
    configs = {"a": _standing(1.0, {0: 0.90, 1: 0.91}), "b": _standing(2.0, {0: 0.50, 1: 0.52})}
    rnd = race(configs, SEEDS, 0.95, start=2)
    assert rnd.runs == [] and rnd.settled and rnd.contenders == 0 and rnd.leader == {"eta": 1.0}
    assert (rnd.trainings, rnd.every_seed) == (4, 20)
    assert "is settled" in rnd.line("val_auroc") and "(16 saved)" in rnd.line("val_auroc")


def test_overlapping_intervals_give_the_contender_and_the_leader_their_next_seed() -> None:
    configs = {"a": _standing(1.0, {0: 0.90, 1: 0.80}), "c": _standing(3.0, {0: 0.86, 1: 0.82}),
               "b": _standing(2.0, {0: 0.10, 1: 0.11})}  # fmt: skip
    rnd = race(configs, SEEDS, 0.95, start=2)
    assert rnd.leader == {"eta": 1.0} and rnd.contenders == 1 and not rnd.settled
    assert rnd.runs == [({"eta": 1.0}, 2), ({"eta": 3.0}, 2)]  # the leader first; b is out


def test_failures_stopped_trials_and_spent_seeds() -> None:
    a = _standing(1.0, {0: 0.9, 1: 0.91})
    one_failed = _standing(2.0, {0: 0.95}, spent={0, 1})  # seed 1 failed: one value after its first seeds
    young = _standing(3.0, {0: 0.95}, spent={0})  # its second seed has not run yet
    stopped = _standing(4.0, {0: 0.99, 1: 0.98}, stopped=True)  # ASHA stopped a seed of it
    rnd = race({"a": a, "f": one_failed, "y": young, "s": stopped}, SEEDS, 0.95, start=2)
    assert rnd.leader == {"eta": 1.0}  # the stopped one is not ranked
    assert rnd.runs == [({"eta": 1.0}, 2), ({"eta": 3.0}, 1)]  # only the young one contends
    # every seed spent: the race ends unsettled and says so
    tied = {"a": _standing(1.0, {s: 0.9 + 0.01 * (s % 2) for s in range(3)}),
            "b": _standing(2.0, {s: 0.9 + 0.01 * ((s + 1) % 2) for s in range(3)})}  # fmt: skip
    end = race(tied, [0, 1, 2], 0.95, start=2)
    assert end.runs == [] and not end.settled and "not settled" in end.line("val_auroc")


def test_standings_from_rows() -> None:
    rows: list[dict[str, Any]] = [
        {"params_json": json.dumps({"eta": 1.0}), "seed": 0, "status": "finished", "val_auroc": 0.9},
        {"params_json": json.dumps({"eta": 1.0}), "seed": 1, "status": "failed", "val_auroc": None},
        {"params_json": json.dumps({"eta": 1.0}), "seed": 2, "status": "running", "val_auroc": None},
        {"params_json": json.dumps({"eta": 2.0}), "seed": 0, "status": "stopped", "val_auroc": 0.5},
        {"params_json": json.dumps({"eta": 2.0}), "seed": 1, "status": "finished", "val_auroc": float("nan")},
    ]
    got = standings(rows, "val_auroc")
    one, two = got[json.dumps({"eta": 1.0})], got[json.dumps({"eta": 2.0})]
    assert (one.values, one.spent, one.stopped) == ({0: 0.9}, {0, 1}, False)  # a running seed is not spent
    assert (two.values, two.spent, two.stopped) == ({}, {0, 1}, True)


def test_paired_differences_by_hand_and_a_consistently_worse_configuration_is_out() -> None:
    # differences -0.02, -0.02, -0.01 over seeds 0-2 (seed 3 of the leader has no partner)
    got = paired({0: 0.88, 1: 0.68, 2: 0.79}, {0: 0.90, 1: 0.70, 2: 0.80, 3: 0.85}, 0.95)
    assert got is not None
    mean, lo, hi = got
    half = 4.302652729911275 * (0.01 / math.sqrt(3)) / math.sqrt(3)  # sd of the differences 0.01/sqrt(3)
    assert mean == pytest.approx(-1 / 60) and lo == pytest.approx(mean - half) and hi == pytest.approx(mean + half)
    assert hi < 0 and paired({0: 0.9}, {0: 0.8, 1: 0.7}, 0.95) is None
    # a hard seed is hard for both: their separate intervals overlap almost entirely, yet b is worse on
    # every seed, so it gets no more seeds and the leader is settled
    a, b = _standing(1.0, {0: 0.90, 1: 0.70, 2: 0.80}), _standing(2.0, {0: 0.88, 1: 0.68, 2: 0.79})
    _, lo_a, _ = a.bounds(0.95)
    _, _, hi_b = b.bounds(0.95)
    assert lo_a is not None and hi_b is not None and hi_b > lo_a  # separate intervals would race on
    rnd = race({"a": a, "b": b}, SEEDS, 0.95, start=3)
    assert rnd.runs == [] and rnd.settled and rnd.leader == {"eta": 1.0}
    # with fewer than two seeds in common, the separate intervals decide
    c = _standing(3.0, {5: 0.79, 6: 0.81})
    assert race({"a": a, "c": c}, SEEDS, 0.95, start=2).contenders == 1


def _synthetic_race(monkeypatch: pytest.MonkeyPatch | None) -> tuple[dict[str, int], Any, int]:
    """Ten configurations of true means 0.60 … 0.90 and a near twin of the best (0.899), raced over 10
    seeds from the first 3; a seed's value = the mean + the seed's effect, common to every
    configuration (sd 0.05: a hard split is hard for all) + the configuration's own noise (sd 0.02).
    With ``monkeypatch``, the race uses separate intervals only (the rule before paired differences)."""
    import orchestration.plan.racing as racing

    if monkeypatch is not None:
        monkeypatch.setattr(racing, "paired", lambda *a: None)
    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.05, size=len(SEEDS))
    means = {f"c{i}": 0.60 + 0.1 * i / 3 for i in range(10)}
    means["c9b"] = 0.899
    noise = {k: rng.normal(0, 0.02, size=len(SEEDS)) for k in means}
    configs = {k: Standing({"name": k}) for k in means}

    def run(k: str, seed: int) -> None:
        configs[k].values[seed] = float(means[k] + common[seed] + noise[k][seed])
        configs[k].spent.add(seed)

    for k in configs:
        for seed in SEEDS[:3]:
            run(k, seed)
    rounds = 0
    while (rnd := race(configs, SEEDS, 0.95, start=3)).runs:
        for params, seed in rnd.runs:
            run(params["name"], seed)
        rounds += 1
    return {k: len(s.spent) for k, s in configs.items()}, rnd, rounds


def test_a_race_on_a_synthetic_objective_spends_seeds_on_contenders_only(monkeypatch: pytest.MonkeyPatch) -> None:
    used, rnd, rounds = _synthetic_race(None)
    assert rnd.leader is not None and rnd.leader["name"] in ("c9", "c9b")
    # clearly worse (0.1+ below the best): their first three seeds only; closer ones get more, not all;
    # the twins cannot be separated: every seed
    assert all(used[f"c{i}"] == 3 for i in range(6)), used
    assert all(3 <= used[f"c{i}"] < 10 for i in range(6, 9)) and used["c8"] > 3, used
    assert used["c9"] == used["c9b"] == 10
    assert not rnd.settled and rnd.trainings == sum(used.values()) == 49 and rnd.every_seed == 110
    assert rounds == 7
    # separate intervals carry the common seed effect twice: more trainings for the same winner
    used_sep, rnd_sep, _ = _synthetic_race(monkeypatch)
    assert rnd_sep.leader == rnd.leader and rnd_sep.trainings == 57 > rnd.trainings
    assert used_sep["c8"] == 10 > used["c8"]
