"""Rank statistics of an ablation's methods across blocks (Demšar, JMLR 7, 2006): average ranks, the Friedman
test, the Nemenyi critical difference and pairwise Wilcoxon signed-rank tests with Holm's correction.

**The blocking unit.** A :class:`Block` is one data set × values of the ablation axes (the row axis and any
other axis that varies) × normal class(es) — one *problem* every method was asked to solve — and a method's
score in it is its test metric averaged over seeds. Seeds are replicates of one problem (new splits and
initialisations), not new problems, so they are averaged rather than counted as blocks; normal classes are
different one-vs-rest problems, as the data sets of Demšar's comparisons are. The blocks of one ablation are
not independent (one normal class appears at every γ_l), so p-values lean optimistic; they rank methods on
*these* problems, they do not generalise to others.

- Ranks, the Friedman test and the Nemenyi test use the *complete* blocks: those where every compared method
  has a score (a Friedman design has no holes). Rank 1 = best (highest metric); ties share the average rank.
- The Wilcoxon test of a pair uses every block where both methods have a score; the p-values of one
  comparison's pairs are adjusted together with Holm's step-down method.
- Tests need :data:`MIN_BLOCKS` blocks: with fewer than 6 pairs a two-sided signed-rank test cannot reach
  p < 0.05 whatever the data (its smallest p is 2/2ⁿ = 0.0625 at n = 5), and Friedman's χ² approximation is
  poor. The same threshold decides whether a per-axis-value comparison is shown.

The libraries (why these): scipy for the Friedman χ² test, the exact/permutation Wilcoxon test and the
studentized range distribution of the CD; statsmodels' ``multipletests`` for Holm; scikit-posthocs for the
Nemenyi p-values here and the CD diagram in :mod:`orchestration.report.stats_render`. All three are
maintained, widely cited implementations (scikit-posthocs is JOSS-reviewed and follows Demšar), so no test
statistic is hand-written here — only the bookkeeping of blocks.

Everything here is pure: blocks in, numbers out. :func:`orchestration.report.build.rank_blocks` makes the
blocks from result rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

#: Significance level of every test and of the critical difference.
ALPHA = 0.05
#: Fewest blocks a test (Friedman, Nemenyi, Wilcoxon) or a per-axis-value comparison needs (see above).
MIN_BLOCKS = 6
#: Fewest methods for the Friedman test and the CD diagram (scipy's test needs 3; with 2 methods it is a
#: sign test, and the pair's Wilcoxon test says more).
MIN_FRIEDMAN_METHODS = 3


@dataclass(frozen=True)
class Block:
    """One problem: ``key`` (data set, other axes' values, axis value, normal classes), the value of every
    ablation axis (``axes``: name → value) and the score of each method that has one (mean over seeds)."""

    key: tuple[Any, ...]
    axes: Mapping[str, Any] = field(hash=False)
    scores: Mapping[str, float] = field(hash=False)


@dataclass(frozen=True)
class Friedman:
    """The Friedman test over ``n_blocks`` complete blocks of ``k`` methods, and the Nemenyi post-hoc test."""

    statistic: float  # χ²_F with tie correction (scipy)
    p: float
    df: int  # k - 1
    n_blocks: int
    k: int
    cd: float  # Nemenyi critical difference of average ranks at ALPHA
    nemenyi: Mapping[tuple[str, str], float] = field(hash=False)  # (a, b) in method order → p

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


@dataclass(frozen=True)
class Pair:
    """The Wilcoxon signed-rank test of method ``a`` against ``b`` over the ``n`` blocks where both ran."""

    a: str
    b: str
    n: int
    r_plus: float  # sum of the ranks of |score(a) - score(b)| where a is ahead (zero differences split)
    r_minus: float  # ... where b is ahead; r_plus + r_minus = n(n+1)/2
    p: float  # two-sided
    p_holm: float  # Holm-adjusted over the pairs of one comparison
    mean_diff: float  # mean over the blocks of score(a) - score(b)
    wins: int  # blocks where a > b
    ties: int
    losses: int

    @property
    def statistic(self) -> float:
        """Wilcoxon's T = min(R+, R-), the statistic of the two-sided test."""
        return min(self.r_plus, self.r_minus)

    @property
    def better(self) -> str | None:
        """The method with the larger signed-rank sum (the side the test leans to; None when equal)."""
        return self.a if self.r_plus > self.r_minus else self.b if self.r_minus > self.r_plus else None

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


@dataclass(frozen=True)
class Comparison:
    """Ranks and tests of ``methods`` over the blocks of one scope: all blocks (``axis`` None) or those at
    ``axis`` = ``value``. ``friedman_note`` says why ``friedman`` is None; ``untested`` lists the pairs
    without a Wilcoxon test (too few blocks with both), with the blocks they have."""

    axis: str | None
    value: Any
    methods: tuple[str, ...]
    n_blocks: int  # complete blocks: ranks and Friedman
    incomplete: int  # blocks of the scope left out of the ranks (some method missing)
    ranks: Mapping[str, float] = field(hash=False)  # average rank, 1 = best
    means: Mapping[str, float] = field(hash=False)  # mean score over the complete blocks
    friedman: Friedman | None
    pairs: tuple[Pair, ...]
    friedman_note: str | None
    untested: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True)
class Omitted:
    """A per-axis-value comparison that is not shown, and why."""

    axis: str
    value: Any
    n_blocks: int
    k: int
    reason: str


@dataclass(frozen=True)
class Comparisons:
    """All rank comparisons of one metric: over all blocks, then per value of each ablation axis."""

    metric: str
    overall: Comparison | None  # None with fewer than 2 methods
    per_value: tuple[Comparison, ...]
    omitted: tuple[Omitted, ...]
    note: str | None = None  # why there is no comparison at all


# ------------------------------------------------------------------------------------------- tests


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Average rank of each column of ``scores`` (n_blocks, k): within a row rank 1 = highest score, ties
    get the mean of the ranks they span. Returns (k,). Raises ValueError on an empty matrix."""
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"average_ranks: need a (n_blocks >= 1, k) matrix (got shape {scores.shape})")
    return np.asarray(stats.rankdata(-scores, axis=1, method="average").mean(axis=0), dtype=np.float64)


def critical_difference(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks: q_α √(k(k+1) / (6N)), q_α the upper α quantile of the
    studentized range of k means (infinite dof) over √2 (Demšar 2006, eq. 5; q_0.05 = 2.569 for k = 4)."""
    q = float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def friedman(scores: np.ndarray, methods: Sequence[str]) -> Friedman:
    """Friedman χ² test (scipy) and Nemenyi p-values (scikit-posthocs) of ``scores`` (n_blocks, k >= 3).

    Raises ValueError when k < 3 or every block is one tie (the statistic is then 0/0)."""
    import scikit_posthocs

    n, k = scores.shape
    if k < MIN_FRIEDMAN_METHODS:
        raise ValueError(f"friedman: needs >= {MIN_FRIEDMAN_METHODS} methods (got {k})")
    if all(np.all(row == row[0]) for row in scores):
        raise ValueError("friedman: every block is a tie")
    res = stats.friedmanchisquare(*scores.T)
    # the Nemenyi statistic depends only on differences of average ranks, so scikit-posthocs' ascending ranks
    # give the same p-values as our descending ones
    p = scikit_posthocs.posthoc_nemenyi_friedman(scores).to_numpy()
    nemenyi = {(methods[i], methods[j]): float(p[i, j]) for i, j in combinations(range(k), 2)}
    return Friedman(float(res.statistic), float(res.pvalue), k - 1, n, k, critical_difference(k, n), nemenyi)


def wilcoxon_pairs(pairs: Sequence[tuple[str, str, np.ndarray, np.ndarray]]) -> tuple[Pair, ...]:
    """The two-sided Wilcoxon signed-rank test (scipy) of each (a, b, scores of a, scores of b), p-values
    Holm-adjusted together (statsmodels). Zero differences are split between the signs ("zsplit", as
    Demšar 2006 recommends); scipy's p is exact for n <= 50 without ties or zeros, else an exhaustive
    permutation test for n <= 13, else the normal approximation. Each pair needs >= 1 block."""
    from statsmodels.stats.multitest import multipletests

    if not pairs:
        return ()
    raw = []
    for _, _, x, y in pairs:
        half = x.size * (x.size + 1) / 4.0
        if np.all(x == y):
            raw.append((half, 1.0))  # no difference at all: scipy would warn about a 0/0 z-score
            continue
        p = stats.wilcoxon(x, y, zero_method="zsplit", alternative="two-sided").pvalue
        # one-sided, scipy's statistic is R+ (the two-sided one is only min(R+, R-), which hides the side)
        r_plus = stats.wilcoxon(x, y, zero_method="zsplit", alternative="greater").statistic
        raw.append((float(r_plus), float(p)))
    holm = multipletests([p for _, p in raw], alpha=ALPHA, method="holm")[1]
    return tuple(
        Pair(
            a=a,
            b=b,
            n=int(x.size),
            r_plus=rp,
            r_minus=x.size * (x.size + 1) / 2.0 - rp,
            p=p,
            p_holm=float(ph),
            mean_diff=float(np.mean(x - y)),
            wins=int(np.sum(x > y)),
            ties=int(np.sum(x == y)),
            losses=int(np.sum(x < y)),
        )
        for (a, b, x, y), (rp, p), ph in zip(pairs, raw, holm, strict=True)
    )


# ------------------------------------------------------------------------------------------- comparisons


def compare(
    blocks: Sequence[Block], methods: Sequence[str], *, axis: str | None = None, value: Any = None
) -> Comparison:
    """Ranks, Friedman + Nemenyi and pairwise Wilcoxon tests of ``methods`` (>= 2, in display order) over
    ``blocks`` (see the module docstring for which blocks each part uses). Raises ValueError on < 2 methods."""
    methods = tuple(methods)
    if len(methods) < 2:
        raise ValueError(f"compare: needs >= 2 methods (got {len(methods)})")
    complete = [b for b in blocks if all(m in b.scores for m in methods)]
    scores = np.array([[b.scores[m] for m in methods] for b in complete], dtype=np.float64)
    note = None
    ranks: dict[str, float] = {}
    means: dict[str, float] = {}
    result = None
    if complete:
        ranks = dict(zip(methods, map(float, average_ranks(scores)), strict=True))
        means = dict(zip(methods, map(float, scores.mean(axis=0)), strict=True))
    if len(methods) < MIN_FRIEDMAN_METHODS:
        note = f"{len(methods)} methods (needs ≥ {MIN_FRIEDMAN_METHODS})"
    elif len(complete) < MIN_BLOCKS:
        note = f"{len(complete)} complete blocks (needs ≥ {MIN_BLOCKS})"
    else:
        try:
            result = friedman(scores, methods)
        except ValueError as e:
            note = str(e).removeprefix("friedman: ")
    tested, untested = [], []
    for a, b in combinations(methods, 2):
        both = [blk for blk in blocks if a in blk.scores and b in blk.scores]
        if len(both) < MIN_BLOCKS:
            untested.append((a, b, len(both)))
            continue
        x = np.array([blk.scores[a] for blk in both], dtype=np.float64)
        y = np.array([blk.scores[b] for blk in both], dtype=np.float64)
        tested.append((a, b, x, y))
    return Comparison(
        axis=axis,
        value=value,
        methods=methods,
        n_blocks=len(complete),
        incomplete=len(blocks) - len(complete),
        ranks=ranks,
        means=means,
        friedman=result,
        pairs=wilcoxon_pairs(tested),
        friedman_note=note,
        untested=tuple(untested),
    )


def compare_all(
    blocks: Sequence[Block], methods: Sequence[str], *, metric: str, axes: Mapping[str, Sequence[Any]]
) -> Comparisons:
    """:func:`compare` over all blocks, then for each value of each axis of ``axes`` (name → its values, in
    display order) over the blocks at that value — shown when it has >= :data:`MIN_BLOCKS` complete blocks
    of >= 2 methods (the methods that have a score there), else listed in ``omitted`` with the reason."""
    if len(methods) < 2:
        return Comparisons(metric, None, (), (), note=f"{len(methods)} method(s): nothing to rank")
    overall = compare(blocks, methods)
    shown, omitted = [], []
    for axis, values in axes.items():
        for v in values:
            at = [b for b in blocks if b.axes.get(axis) == v]
            present = [m for m in methods if any(m in b.scores for b in at)]
            complete = sum(all(m in b.scores for m in present) for b in at)
            if len(present) < 2:
                omitted.append(
                    Omitted(axis, v, complete, len(present), f"{len(present)} method(s) (needs ≥ 2)")
                )
            elif complete < MIN_BLOCKS:
                omitted.append(
                    Omitted(
                        axis, v, complete, len(present), f"{complete} complete blocks (needs ≥ {MIN_BLOCKS})"
                    )
                )
            else:
                shown.append(compare(at, present, axis=axis, value=v))
    return Comparisons(metric, overall, tuple(shown), tuple(omitted))
