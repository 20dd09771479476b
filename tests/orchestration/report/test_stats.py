"""Rank statistics of a report (orchestration/report/stats.py) against values worked out by hand on small
tables, the blocks made from result rows, and the CD diagrams and tables of a synthetic ablation."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestration.cli.app import main
from orchestration.report.build import SweepRecord, aggregate, build_report, compare_methods, rank_blocks
from orchestration.report.render import render_markdown
from orchestration.report.stats import (
    ALPHA,
    MIN_BLOCKS,
    Block,
    average_ranks,
    compare,
    compare_all,
    critical_difference,
    wilcoxon_pairs,
)
from orchestration.report.stats_render import plot_cd
from tests.orchestration.report.conftest import AB_CLASSES, AB_GAMMAS, AB_METHODS, ABLATION
from tests.orchestration.report.test_report import CLASSES, GAMMAS, SEEDS, auroc, grid_rows

METHODS3 = ("deepsad", "deepsvdd", "ocsvm")
# Scores in sixteenths (exact in binary), one row per block; worked out by hand below.
#            deepsad deepsvdd ocsvm    ranks (1 = best)
HAND = [
    (14, 13, 12),  # 1    2    3
    (14, 12, 13),  # 1    3    2
    (13, 13, 10),  # 1.5  1.5  3     (a tie)
    (13, 14, 12),  # 2    1    3
    (15, 10, 10),  # 1    2.5  2.5   (a tie)
    (14, 13, 12),  # 1    2    3
]
HAND_RANKS = (7.5 / 6, 12 / 6, 16.5 / 6)  # column sums 7.5, 12, 16.5 (= N k(k+1)/2 = 36 in all)


def hand_blocks(extra: Sequence[tuple[int, ...]] = ()) -> list[Block]:
    """HAND as blocks, plus ``extra`` rows (a shorter row leaves the last methods out)."""
    return [
        Block(("mnist", (), 0.0, (i,)), {"ratio_known_outlier": 0.0}, dict(zip(METHODS3, (v / 16 for v in row), strict=False)))
        for i, row in enumerate([*HAND, *extra])
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------- by hand


def test_average_ranks_by_hand() -> None:
    scores = np.array(HAND, dtype=float) / 16
    assert average_ranks(scores) == pytest.approx(HAND_RANKS, abs=1e-12)
    assert average_ranks(np.array([[0.5, 0.5, 0.5]])) == pytest.approx([2, 2, 2])  # a full tie: the mean rank
    with pytest.raises(ValueError, match="average_ranks"):
        average_ranks(np.zeros((0, 3)))


def test_friedman_statistic_from_the_formula() -> None:
    """χ²_F = 12N/(k(k+1)) Σ R̄_j² − 3N(k+1) = 6 · 13.125 − 72 = 6.75, divided by the tie correction
    1 − Σ(t³ − t)/(N k (k² − 1)) = 1 − (6 + 6)/144 = 11/12 (two ties of two); with df = 2 the χ² tail is
    exp(−x/2)."""
    c = compare(hand_blocks(), METHODS3)
    f = c.friedman
    assert f is not None and (f.n_blocks, f.k, f.df) == (6, 3, 2)
    assert [c.ranks[m] for m in METHODS3] == pytest.approx(HAND_RANKS)
    n, k = 6, 3
    chi2 = 12 * n / (k * (k + 1)) * sum(r * r for r in HAND_RANKS) - 3 * n * (k + 1)
    assert chi2 == pytest.approx(6.75)
    assert f.statistic == pytest.approx(chi2 / (11 / 12), rel=1e-12)
    assert f.p == pytest.approx(math.exp(-f.statistic / 2), rel=1e-9) and f.p == pytest.approx(
        0.02518, abs=1e-5
    )
    assert f.significant
    # CD = q_0.05 √(k(k+1)/(6N)) with q_0.05 = 2.343 for k = 3 (Demšar 2006, table 5a)
    assert f.cd == pytest.approx(2.343 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    # Nemenyi: a pair differs at α exactly when its average ranks are further apart than the CD
    for (a, b), p in f.nemenyi.items():
        assert (p < ALPHA) == (abs(c.ranks[a] - c.ranks[b]) > f.cd), (a, b, p)
    assert f.nemenyi["deepsad", "ocsvm"] < ALPHA < f.nemenyi["deepsad", "deepsvdd"]


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (10, 3.164)])
def test_critical_difference_matches_demsars_table(k: int, q: float) -> None:
    assert critical_difference(k, 1) / math.sqrt(k * (k + 1) / 6) == pytest.approx(q, abs=1e-3)
    assert critical_difference(k, 24) == pytest.approx(critical_difference(k, 6) / 2)  # ∝ 1/√N


def wilcoxon_pair(name: str, d: list[int]) -> tuple[str, str, np.ndarray, np.ndarray]:
    """A pair whose differences are ``d``/64 (exact in binary)."""
    y = np.full(len(d), 0.5)
    return (name, "base", y + np.array(d) / 64, y)


def test_wilcoxon_exact_p_values_and_holm_by_hand() -> None:
    """Exact two-sided p-values, counted by hand over the 2ⁿ sign patterns:
    - n = 9, all positive: T = 0, p = 2/512;  n = 6, all positive: p = 2/64;
    - d = 1 2 3 −4 5 6: R+ = 17, R− = 4; the subsets of {1..6} with sum ≤ 4 are {}, 1, 2, 3, 4, 1+2, 1+3
      (7 of 64), so p = 14/64;
    - d = 0 1 2 3 4 5 (zero split): the zero adds ½ to both sums, R+ = 20.5 and R− = 0.5; only the all-plus and
      all-minus patterns of the other five are as extreme, p = 2/32.
    Holm (m = 4): sorted p × (4, 3, 2, 1) = 8/512, 6/64, 4/32, 14/64 → already increasing, so those."""
    pairs = wilcoxon_pairs([
        wilcoxon_pair("nine", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        wilcoxon_pair("six", [1, 2, 3, 4, 5, 6]),
        wilcoxon_pair("mixed", [1, 2, 3, -4, 5, 6]),
        wilcoxon_pair("zero", [0, 1, 2, 3, 4, 5]),
    ])  # fmt: skip
    got = {p.a: p for p in pairs}
    assert [got[a].p for a in ("nine", "six", "mixed", "zero")] == pytest.approx(
        [2 / 512, 2 / 64, 14 / 64, 2 / 32]
    )
    assert [got[a].p_holm for a in ("nine", "six", "mixed", "zero")] == pytest.approx(
        [8 / 512, 6 / 64, 14 / 64, 4 / 32]
    )
    assert (got["mixed"].r_plus, got["mixed"].r_minus, got["mixed"].statistic) == (17, 4, 4)
    assert (got["zero"].r_plus, got["zero"].r_minus, got["zero"].ties) == (20.5, 0.5, 1)
    assert (got["nine"].n, got["nine"].statistic, got["nine"].better) == (9, 0, "nine")
    assert [p.significant for p in pairs] == [True, False, False, False]  # 2/64 < 0.05, but not after Holm


def test_holm_raises_later_p_values_to_keep_the_order() -> None:
    """p = 2/64 (n = 6) and 2/32 (n = 5, all negative): × 2 and × 1 give 4/64 and 2/32 = 4/64, and the second
    may not fall below the first; a lone pair is its own family (no adjustment)."""
    pairs = wilcoxon_pairs(
        [wilcoxon_pair("six", [1, 2, 3, 4, 5, 6]), wilcoxon_pair("five", [-1, -2, -3, -4, -5])]
    )
    assert [p.p for p in pairs] == pytest.approx([2 / 64, 2 / 32])
    assert [p.p_holm for p in pairs] == pytest.approx([4 / 64, 4 / 64])
    assert pairs[1].better == "base" and (pairs[1].wins, pairs[1].losses) == (0, 5)
    [lone] = wilcoxon_pairs([wilcoxon_pair("six", [1, 2, 3, 4, 5, 6])])
    assert lone.p_holm == lone.p


def test_pairs_on_the_hand_table() -> None:
    """deepsad − deepsvdd in sixteenths: 1 2 0 −1 5 1. |d| ranked with the zero: 0 → 1, the three 1s → 3, 2 → 5,
    5 → 6; R+ = 3 + 5 + 6 + 3 + ½ = 17.5, R− = 3 + ½ = 3.5."""
    c = compare(hand_blocks(), METHODS3)
    pair = next(p for p in c.pairs if (p.a, p.b) == ("deepsad", "deepsvdd"))
    assert (pair.n, pair.r_plus, pair.r_minus, pair.statistic) == (6, 17.5, 3.5, 3.5)
    assert (pair.wins, pair.ties, pair.losses, pair.better) == (4, 1, 1, "deepsad")
    assert pair.mean_diff == pytest.approx(8 / 6 / 16)
    assert [(p.a, p.b) for p in c.pairs] == [
        ("deepsad", "deepsvdd"),
        ("deepsad", "ocsvm"),
        ("deepsvdd", "ocsvm"),
    ]


# ----------------------------------------------------------------------------------------- blocks


def test_ranks_use_complete_blocks_and_pairs_every_block_with_both() -> None:
    c = compare(hand_blocks([(15, 14)]), METHODS3)  # a 7th block without ocsvm
    assert (c.n_blocks, c.incomplete) == (6, 1)
    assert [c.ranks[m] for m in METHODS3] == pytest.approx(HAND_RANKS)
    assert c.friedman is not None and c.friedman.n_blocks == 6
    n = {(p.a, p.b): p.n for p in c.pairs}
    assert n == {("deepsad", "deepsvdd"): 7, ("deepsad", "ocsvm"): 6, ("deepsvdd", "ocsvm"): 6}


def test_too_few_blocks_methods_or_differences() -> None:
    few = compare(hand_blocks()[: MIN_BLOCKS - 1], METHODS3)
    assert few.friedman is None and few.friedman_note == "5 complete blocks (needs ≥ 6)"
    assert few.pairs == () and few.untested[0] == ("deepsad", "deepsvdd", 5)
    assert few.ranks  # ranks are descriptive: shown whatever the number of blocks
    two = compare(hand_blocks(), METHODS3[:2])
    assert two.friedman is None and two.friedman_note == "2 methods (needs ≥ 3)" and len(two.pairs) == 1
    flat = [Block(("d", (), 0, (i,)), {}, dict.fromkeys(METHODS3, 0.9)) for i in range(6)]
    tie = compare(flat, METHODS3)
    assert tie.friedman is None and tie.friedman_note == "every block is a tie"
    assert all(p.p == 1.0 and p.better is None for p in tie.pairs)
    assert compare_all(flat, ("deepsad",), metric="auroc", axes={}).note == "1 method(s): nothing to rank"
    with pytest.raises(ValueError, match="needs >= 2 methods"):
        compare(flat, ("deepsad",))


def test_per_value_comparisons_need_enough_blocks() -> None:
    def block(i: int, gamma: float, scores: dict[str, float]) -> Block:
        return Block(("d", (), gamma, (i,)), {"ratio_known_outlier": gamma}, scores)

    blocks = [block(i, 0.0, {"deepsad": 0.9 + i / 100, "ocsvm": 0.8}) for i in range(6)]
    blocks += [block(i, 0.05, {"deepsad": 0.9, "ocsvm": 0.8}) for i in range(5)]
    blocks += [block(i, 0.1, {"deepsad": 0.9}) for i in range(8)]
    cs = compare_all(
        blocks, ("ocsvm", "deepsad"), metric="auroc", axes={"ratio_known_outlier": [0.0, 0.05, 0.1]}
    )
    assert cs.overall is not None and (cs.overall.n_blocks, cs.overall.incomplete) == (11, 8)
    [shown] = cs.per_value
    assert (shown.axis, shown.value, shown.n_blocks, shown.ranks["deepsad"]) == (
        "ratio_known_outlier",
        0.0,
        6,
        1.0,
    )
    assert [(o.value, o.reason) for o in cs.omitted] == [
        (0.05, "5 complete blocks (needs ≥ 6)"),
        (0.1, "1 method(s) (needs ≥ 2)"),
    ]


def test_blocks_from_rows_average_seeds_per_normal_class() -> None:
    rows = grid_rows()  # 3 seeds × 2 normal classes × 2 γ_l × 2 methods
    ab = aggregate(rows)
    blocks = rank_blocks(rows, ab)
    assert [b.key for b in blocks] == [("mnist", (), g, (c,)) for g in GAMMAS for c in CLASSES]
    for b in blocks:
        _, _, gamma, (cls,) = b.key
        assert b.axes == {"ratio_known_outlier": gamma}
        for m in ("deepsad", "ocsvm"):
            assert b.scores[m] == pytest.approx(np.mean([auroc(s, cls, gamma, m) for s in SEEDS]))
    cs = compare_methods(rows, ab)
    assert (
        cs.overall is not None
        and cs.overall.n_blocks == 4
        and cs.overall.ranks == {"ocsvm": 2.0, "deepsad": 1.0}
    )
    assert [o.reason for o in cs.omitted] == ["2 complete blocks (needs ≥ 6)"] * 2


# ----------------------------------------------------------------------------------------- the report


def test_cd_diagrams_and_tables_of_a_synthetic_ablation(
    ablation_storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main(["report", ABLATION, "--storage", str(ablation_storage), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    # CD diagrams: all blocks (12) and each γ_l (6 blocks each), for both metrics
    cds = sorted(p.name for p in (out / "figures").glob("cd_*.png"))
    assert cds == sorted(
        f"cd_{m}{s}.png"
        for m in ("ap", "auroc")
        for s in ("", "_ratio_known_outlier_0", "_ratio_known_outlier_0.05")
    )
    assert "8 figures" in stdout
    for name in cds:
        path = out / "figures" / name
        assert path.stat().st_size > 5000
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 900 and im.size[1] >= 250

    doc = json.loads((out / "tables/comparison_test_auroc.json").read_text())
    assert (
        doc["blocking"] == ["dataset", "ratio_known_outlier", "normal_classes"]
        and doc["min_blocks"] == MIN_BLOCKS
    )
    overall = doc["comparisons"][0]
    assert overall["scope"] == "all" and overall["n_blocks"] == len(AB_CLASSES) * len(AB_GAMMAS)
    assert list(overall["ranks"]) == ["deepsad", "deepsvdd", "isoforest"]  # best first
    assert sum(overall["ranks"].values()) == pytest.approx(6.0)  # 1 + 2 + 3
    f = overall["friedman"]
    assert f["significant"] and f["p"] < ALPHA and f["cd"] == pytest.approx(critical_difference(3, 12))
    assert [c["value"] for c in doc["comparisons"][1:]] == list(AB_GAMMAS) and doc["omitted"] == []

    with open(out / "tables/wilcoxon_test_auroc.csv", newline="") as fh:
        pairs = list(csv.DictReader(fh))
    assert len(pairs) == 3 * (1 + len(AB_GAMMAS))
    first = pairs[0]
    assert (first["scope"], first["method_a"], first["method_b"], first["n"]) == (
        "all",
        "isoforest",  # the table's method order: baselines first
        "deepsvdd",
        "12",
    )
    assert float(first["p_holm"]) >= float(first["p"]) and first["better"] == "deepsvdd"
    with open(out / "tables/ranks_test_ap.csv", newline="") as fh:
        assert {r["method"] for r in csv.DictReader(fh)} == set(AB_METHODS)

    md = (out / "report.md").read_text()
    assert md.count("## Ranks and significance tests") == 1  # one legend for both metrics
    for text in ("### Test AUROC: all blocks", "### Test AUROC: γₗ = 0.05", "### Test AP: all blocks",
                 "![CD diagram, test AUROC, all blocks](figures/cd_auroc.png)", "Friedman test: χ²_F = ",
                 "significant: at least one method ranks differently", "Holm p", "rank 1"):  # fmt: skip
        assert text in md, text
    html = (out / "report.html").read_text()
    assert (
        'src="figures/cd_auroc_ratio_known_outlier_0.05.png"' in html
        and "<h3>Test AP: all blocks</h3>" in html
    )


def test_plot_cd_needs_a_friedman_test(tmp_path: Path) -> None:
    c = compare(hand_blocks()[:3], METHODS3)
    with pytest.raises(ValueError, match="no Friedman test for all blocks"):
        plot_cd(c, tmp_path / "cd.png", title="x")
    full = compare(hand_blocks(), METHODS3)
    plot_cd(full, tmp_path / "cd.png", title="hand table")
    with Image.open(tmp_path / "cd.png") as im:
        im.verify()
    assert (tmp_path / "cd.png").stat().st_size > 5000


def test_a_sweep_of_one_method_gets_one_line() -> None:
    rows = [r for r in grid_rows() if (r["method"] or "deepsad") == "deepsad"]
    report = build_report(SweepRecord("one", "/x/one", None, rows))
    assert report.comparisons[0].overall is None
    md = render_markdown(report, "now")
    assert "## Ranks and significance tests\n\nTest AUROC: 1 method(s): nothing to rank.\n" in md
    assert "Blocks: one block" not in md and "Test AP: 1 method(s)" in md
