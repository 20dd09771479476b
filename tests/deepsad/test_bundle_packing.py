"""Packing by training-set size: bundles of neighbours in size, fewer padded steps, stable cuts."""

from __future__ import annotations

import random

import pytest

from deepsad.bundle_packing import lockstep_cost, pack_by_size
from deepsad.errors import ConfigError


def test_members_are_cut_into_bundles_of_neighbours_in_size() -> None:
    sizes = [700, 100, 500, 300, 200, 600, 400]
    bundles = pack_by_size(sizes, 3)
    assert bundles == [[1, 3, 4], [2, 6], [0, 5]]  # sizes {100, 200, 300}, {400, 500}, {600, 700}
    assert sorted(i for b in bundles for i in b) == list(range(len(sizes)))
    assert all(len(b) <= 3 for b in bundles)


def test_bundles_are_as_equal_in_count_as_the_cap_allows() -> None:
    sizes = list(range(450))
    counts = [len(b) for b in pack_by_size(sizes, 64)]
    assert len(counts) == 8 and max(counts) - min(counts) <= 1 and sum(counts) == 450
    assert [len(b) for b in pack_by_size(sizes, 512)] == [450]
    assert [len(b) for b in pack_by_size(sizes, 1)] == [1] * 450
    assert pack_by_size([], 8) == []


def test_equal_sizes_keep_their_order_so_a_replan_gives_the_same_bundles() -> None:
    sizes = [5, 3, 5, 3, 5, 3]
    assert pack_by_size(sizes, 3) == [[1, 3, 5], [0, 2, 4]]
    assert pack_by_size(sizes, 3) == pack_by_size(list(sizes), 3)


def test_sorting_pays_less_padding_than_the_given_order() -> None:
    """The paper's MNIST grid: sizes 4,608-7,163 in planner order (every size in every bundle)."""
    rng = random.Random(0)
    sizes = [rng.randint(4608, 7163) for _ in range(450)]
    given = [list(range(a, min(a + 64, 450))) for a in range(0, 450, 64)]
    packed = pack_by_size(sizes, 64)
    assert lockstep_cost(packed, sizes) < lockstep_cost(given, sizes)
    assert lockstep_cost(packed, sizes) < 1.05 * sum(sizes)  # within 5 % of the members' own work


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(ConfigError, match="bundle_size"):
        pack_by_size([1, 2], 0)
    with pytest.raises(ConfigError, match=">= 0"):
        pack_by_size([1, -2], 2)
