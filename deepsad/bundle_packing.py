"""Which members share a bundle: cut compatible trials into bundles of similar training-set size.

Under the ``vmap`` strategy a bundle's members step in lockstep: an epoch has as many steps as its
largest member needs, and a smaller member sits out the rest (its batches are padding). A bundle
therefore costs its *largest* member's epoch, K times over. Packing members in the order a sweep
lists them mixes sizes (the paper's MNIST grid spans 4,608-7,163 training samples; its planner order
puts every size in every bundle of 64), so most bundles pay for ~7.2k samples per member. Sorted by
size first, each bundle holds neighbours in size and pays little beyond its members' own work.

Pure functions of sizes: the planner (``orchestration``) decides which trials are compatible and
how large a bundle may be, then asks :func:`pack_by_size` for the cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from deepsad.errors import ConfigError


def pack_by_size(sizes: Sequence[int], k: int) -> list[list[int]]:
    """Indices ``0 … len(sizes)-1`` cut into bundles of at most ``k``, neighbours in size together.

    Members are ordered by size (stable: equal sizes keep their given order, so the same inputs always
    give the same bundles) and cut into ``ceil(n / k)`` bundles as equal in count as possible (sizes
    differ by at most one member): 450 trials at ``k`` = 64 give 8 bundles of 56-57, not 7 of 64 and
    one of 2. Each bundle lists its members in their given order.

    Raises:
        ConfigError: ``k`` < 1 or a negative size.
    """
    if k < 1:
        raise ConfigError(f"bundle_size: must be >= 1 (got {k})")
    if any(s < 0 for s in sizes):
        raise ConfigError(f"training-set sizes must be >= 0 (got {min(sizes)})")
    n = len(sizes)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: sizes[i])
    bundles = math.ceil(n / k)
    base, extra = divmod(n, bundles)
    out, start = [], 0
    for b in range(bundles):
        width = base + (1 if b < extra else 0)
        out.append(sorted(order[start:start + width]))
        start += width
    return out


def lockstep_cost(bundles: Sequence[Sequence[int]], sizes: Sequence[int]) -> int:
    """Member-samples a ``vmap`` packing computes per epoch: each bundle's largest size × its count
    (what the members need themselves is ``sum(sizes)``; the rest is padding)."""
    return sum(max(sizes[i] for i in b) * len(b) for b in bundles if b)
