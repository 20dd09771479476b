"""The report's section on ranks and significance tests (:mod:`orchestration.report.stats`): Markdown, HTML,
CSV/JSON tables and the critical-difference (CD) diagrams, which scikit-posthocs draws
(``critical_difference_diagram``, Demšar 2006's layout) on the report's Agg canvas.

:mod:`orchestration.report.render` calls :func:`section_markdown`, :func:`section_html`, :func:`tables` and
:func:`plot_cd` for every :class:`~orchestration.report.stats.Comparisons` of a report, whose figures are
named by :func:`cd_figures`. Human-readable numbers: ranks with two decimals, metrics ×100 with one,
p-values with three (``< 0.001`` below); the CSV/JSON tables keep the raw values.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orchestration.report.build import METRIC_LABELS, METRICS, Ablation, axis_short, method_label, show
from orchestration.report.stats import (
    ALPHA,
    MIN_BLOCKS,
    MIN_FRIEDMAN_METHODS,
    Comparison,
    Comparisons,
    Pair,
)
from orchestration.report.style import method_color, new_figure, pct

TITLE = "Ranks and significance tests"
PAIR_HEADERS = (
    "Pair (A vs B)",
    "n",
    "R+ (A ahead)",
    "R− (B ahead)",
    "T",
    "p",
    "Holm p",
    "Nemenyi p",
    "A ahead / tie / B ahead",
    "Better",
    f"Significant (Holm p < {ALPHA:g})",
)


# ------------------------------------------------------------------------------------------- wording


def blocking(ab: Ablation) -> str:
    """What one block is, e.g. ``data set × γₗ × normal class(es)``."""
    return " × ".join(
        ["data set", *(axis_short(a) for a in ab.extra_axes), axis_short(ab.axis), "normal class(es)"]
    )


def legend(ab: Ablation) -> list[str]:
    """How to read the section: one paragraph per item (plain text, the same in Markdown and HTML)."""
    return [
        f"Blocks: one block = one {blocking(ab)} combination, a problem every method was run on; a method's "
        "score in a block is its test metric averaged over seeds (seeds replicate one problem; normal classes "
        "and axis values are different problems). Ranks, the Friedman test and the CD diagram use the complete "
        "blocks (every compared method has a score there); a pair's Wilcoxon test uses every block where both "
        "ran.",
        "Average rank: in each block the methods are ranked 1 = best (highest metric) to k = worst, tied "
        "methods sharing the mean of their ranks; the table shows the mean rank over the blocks. Lower is "
        "better; (k+1)/2 is what a method no better than the others would get.",
        f"Friedman test (H₀: all methods rank equally well): p < {ALPHA:g} means at least one method ranks "
        "differently. Only then read the CD diagram's differences as real: the Nemenyi test is its post-hoc "
        "test.",
        "CD diagram: each method sits at its average rank on the axis (left = better, rank 1). A thick "
        f"horizontal bar joins methods whose Nemenyi test is not significant at α = {ALPHA:g}, i.e. whose "
        "average ranks differ by less than the critical difference CD = q_α·√(k(k+1)/(6N)), drawn as the "
        "bar labelled CD; methods not joined by a bar differ significantly.",
        "Wilcoxon signed-rank test per pair (two-sided; zero differences split between the signs): R+ and "
        "R− are the rank sums of the blocks where A and where B is ahead, T = min(R+, R−); Better is the side "
        "with the larger rank sum. The p-values of one table are Holm-adjusted together (family = its pairs); "
        f"a pair differs significantly at α = {ALPHA:g} when its Holm p < {ALPHA:g} (Significant: yes), "
        "otherwise the difference may be chance. Nemenyi p: the same pair in the Nemenyi test.",
        f"Tests need ≥ {MIN_BLOCKS} blocks (with fewer, a two-sided Wilcoxon test cannot reach p < 0.05 "
        f"whatever the data) and the Friedman test ≥ {MIN_FRIEDMAN_METHODS} methods; a per-axis-value "
        f"comparison is shown where that value has ≥ {MIN_BLOCKS} complete blocks of ≥ 2 methods. The blocks "
        "of one ablation share normal classes and data, so they are not independent: read the p-values as "
        "optimistic, and as statements about these problems only.",
    ]


def scope(c: Comparison) -> str:
    """``all blocks`` or ``γₗ = 0.05``."""
    return "all blocks" if c.axis is None else f"{axis_short(c.axis)} = {show(c.value)}"


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _pair_label(p: Pair) -> str:
    return f"{method_label(p.a)} vs {method_label(p.b)}"


def _friedman_text(c: Comparison) -> str:
    f = c.friedman
    if f is None:
        return f"No Friedman test or CD diagram: {c.friedman_note}."
    verdict = (
        "significant: at least one method ranks differently"
        if f.significant
        else "not significant: no evidence that the methods rank differently"
    )
    return (
        f"Friedman test: χ²_F = {f.statistic:.2f}, df = {f.df}, p = {p_text(f.p)} (N = {f.n_blocks} blocks, "
        f"k = {f.k} methods) — {verdict} at α = {ALPHA:g}. Nemenyi critical difference CD = {f.cd:.2f}."
    )


def _counts(c: Comparison, ab: Ablation) -> str:
    text = f"N = {c.n_blocks} complete blocks ({blocking(ab)}; seeds averaged), k = {len(c.methods)} methods"
    if c.incomplete:
        text += f"; {c.incomplete} block(s) without every method left out of the ranks"
    return text + "."


def _untested(c: Comparison) -> list[str]:
    return [
        f"No Wilcoxon test of {method_label(a)} vs {method_label(b)}: {n} blocks with both (needs ≥ {MIN_BLOCKS})."
        for a, b, n in c.untested
    ]


def _omitted(cs: Comparisons) -> str | None:
    if not cs.omitted:
        return None
    return (
        "Per-value comparisons omitted: "
        + "; ".join(f"{axis_short(o.axis)} = {show(o.value)}: {o.reason}" for o in cs.omitted)
        + "."
    )


def _scopes(cs: Comparisons) -> list[Comparison]:
    """All blocks first (when there is a comparison at all), then each value shown."""
    return [*((cs.overall,) if cs.overall is not None else ()), *cs.per_value]


def _by_rank(c: Comparison) -> list[str]:
    return sorted(c.ranks, key=lambda m: (c.ranks[m], c.methods.index(m)))


def _pair_cells(c: Comparison, p: Pair) -> list[str]:
    nemenyi = c.friedman.nemenyi.get((p.a, p.b)) if c.friedman is not None else None
    return [
        _pair_label(p),
        str(p.n),
        f"{p.r_plus:g}",
        f"{p.r_minus:g}",
        f"{p.statistic:g}",
        p_text(p.p),
        p_text(p.p_holm),
        "–" if nemenyi is None else p_text(nemenyi),
        f"{p.wins} / {p.ties} / {p.losses}",
        "–" if p.better is None else method_label(p.better),
        "yes" if p.significant else "no",
    ]


# ------------------------------------------------------------------------------------------- figures


def cd_figures(cs: Comparisons) -> list[tuple[Comparison, str]]:
    """(comparison, relative path) of every CD diagram of ``cs``: one per comparison with a Friedman test,
    ``figures/cd_<metric>.png`` for all blocks, ``figures/cd_<metric>_<axis>_<value>.png`` per value."""
    out: list[tuple[Comparison, str]] = []
    seen: set[str] = set()
    for c in _scopes(cs):
        if c.friedman is None:
            continue
        stem = f"cd_{cs.metric}" if c.axis is None else f"cd_{cs.metric}_{c.axis}_{_slug(show(c.value))}"
        rel, i = f"figures/{stem}.png", 2
        while rel in seen:  # two values that read alike once slugged
            rel, i = f"figures/{stem}-{i}.png", i + 1
        seen.add(rel)
        out.append((c, rel))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.+-]+", "_", text).strip("_") or "none"


def plot_cd(c: Comparison, path: Path, *, title: str) -> None:
    """The CD diagram of ``c`` (which must have a Friedman test): scikit-posthocs'
    ``critical_difference_diagram`` of the average ranks, bars from the Nemenyi p-values, the CD drawn above.

    Raises ValueError when ``c`` has no Friedman test."""
    import pandas as pd
    import scikit_posthocs

    f = c.friedman
    if f is None:
        raise ValueError(f"plot_cd: no Friedman test for {scope(c)} ({c.friedman_note})")
    labels = [method_label(m) for m in c.methods]
    p = np.ones((len(labels), len(labels)))
    for (a, b), v in f.nemenyi.items():
        i, j = c.methods.index(a), c.methods.index(b)
        p[i, j] = p[j, i] = v
    k = len(c.methods)
    width, unit, title_h = 8.0, 0.3, 0.5  # inches; unit = one row of the diagram (a label, a crossbar)
    fig = new_figure(width, 3.0)
    # fixed margins instead of the constrained layout, which does not make room for the method labels
    # (text in data coordinates, left and right of the rank axis)
    fig.set_layout_engine("none")
    ax = fig.add_axes((0.2, 0.05, 0.6, 0.8))
    artists = scikit_posthocs.critical_difference_diagram(
        {label: c.ranks[m] for label, m in zip(labels, c.methods, strict=True)},
        pd.DataFrame(p, index=labels, columns=labels),
        alpha=ALPHA,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
        color_palette={label: method_color(m, c.methods) for label, m in zip(labels, c.methods, strict=True)},
        label_props={"fontsize": 10},
    )
    for artist in (
        *artists["markers"],
        *artists["elbows"],
        *(a for bar in artists["crossbars"] for a in bar),
    ):
        artist.set_clip_on(False)  # a method at rank 1 or k sits on the edge of the axes
    # the whole rank scale 1..k, so that diagrams of different scopes read alike
    ax.set_xlim(1, k)
    ax.set_xticks(range(1, k + 1))
    # the CD as a bar from rank 1 above the axis and its tick labels (Demšar's layout); scikit-posthocs' own
    # (cd=) sits at the height of the tick labels
    y = 1.5
    ax.plot([1, 1 + f.cd], [y, y], color="black", linewidth=2, clip_on=False)
    for x in (1, 1 + f.cd):
        ax.plot([x, x], [y - 0.2, y + 0.2], color="black", linewidth=1.5, clip_on=False)
    ax.text(1 + f.cd / 2, y + 0.3, f"CD = {f.cd:.2f}", ha="center", va="bottom", fontsize=10)
    bottom, top = ax.get_ylim()[0] - 0.4, y + 1.2
    ax.set_ylim(bottom, top)
    height = (top - bottom) * unit + title_h + 0.1
    fig.set_size_inches(width, height)
    ax.set_position((0.2, 0.1 / height, 0.6, (top - bottom) * unit / height))
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    fig.savefig(path)


def figure_caption(cs: Comparisons, c: Comparison) -> str:
    f = c.friedman
    assert f is not None  # cd_figures lists only comparisons with a Friedman test
    return (
        f"Critical-difference diagram, test {METRIC_LABELS[cs.metric]}, {scope(c)}: average ranks (1 = best, "
        f"left) over N = {f.n_blocks} blocks; bars join methods the Nemenyi test does not separate at "
        f"α = {ALPHA:g} (CD = {f.cd:.2f}; Friedman p = {p_text(f.p)})."
    )


def figure_title(sweep: str, cs: Comparisons, c: Comparison) -> str:
    return f"{sweep}: test {METRIC_LABELS[cs.metric]}, {scope(c)} — average rank (1 = best)"


# ------------------------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    return [
        "| " + " | ".join(_md(h) for h in head) + " |",
        "|" + "|".join([":--"] * left + ["--:"] * (len(head) - left)) + "|",
        *("| " + " | ".join(_md(x) for x in r) + " |" for r in rows),
    ]


def _rank_rows(c: Comparison) -> list[list[str]]:
    """Method, average rank, mean metric (×100) over the complete blocks; best rank first."""
    best = min(c.ranks.values(), default=None)
    return [
        [method_label(m), f"{c.ranks[m]:.2f}" + (" (best)" if c.ranks[m] == best else ""), pct(c.means[m])]
        for m in _by_rank(c)
    ]


def section_markdown(cs: Comparisons, ab: Ablation, *, with_legend: bool) -> list[str]:
    """The Markdown lines of ``cs`` (one metric): ``## Ranks and significance tests`` and the legend first
    when ``with_legend``, then a ``###`` part per scope (all blocks, then each value shown); one line for a
    sweep of one method."""
    name = METRIC_LABELS[cs.metric]
    stem = METRICS[cs.metric]
    out = [f"## {TITLE}", ""] if with_legend else []
    if cs.overall is None:  # a sweep of one method: no legend, one line
        return [*out, f"Test {name}: {cs.note}.", ""]
    if with_legend:
        out += [p + "\n" for p in legend(ab)]
    figures = {id(c): rel for c, rel in cd_figures(cs)}
    for c in (cs.overall, *cs.per_value):
        out += [f"### Test {name}: {scope(c)}", "", _counts(c, ab), ""]
        if c.ranks:
            out += [*_rank_table_md(c, cs.metric), ""]
        out += [_friedman_text(c), ""]
        if id(c) in figures:
            out += [
                f"![CD diagram, test {name}, {scope(c)}]({figures[id(c)]})",
                "",
                f"*{figure_caption(cs, c)}*",
                "",
            ]
        if c.pairs:
            out += [*_md_table(PAIR_HEADERS, [_pair_cells(c, p) for p in c.pairs]), ""]
        out += [f"- {line}" for line in _untested(c)] + ([""] if c.untested else [])
    if (line := _omitted(cs)) is not None:
        out += [line, ""]
    links = [f"tables/{kind}_{stem}.csv" for kind in ("ranks", "friedman", "wilcoxon")]
    links.append(f"tables/comparison_{stem}.json")
    out += ["Raw numbers: " + ", ".join(f"[`{x}`]({x})" for x in links) + ".", ""]
    return out


def _rank_table_md(c: Comparison, metric: str) -> list[str]:
    return _md_table(("Method", "Average rank", f"Mean test {METRIC_LABELS[metric]} (%)"), _rank_rows(c))


# ------------------------------------------------------------------------------------------- HTML


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, bold: int | None = None
) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_h(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        tds = [f'<td class="{"key" if i < left else "num"}">{_h(x)}</td>' for i, x in enumerate(r)]
        cls = ' class="best"' if bold is not None and r[bold] == "yes" else ""
        out.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def section_html(cs: Comparisons, ab: Ablation, *, with_legend: bool) -> list[str]:
    """The HTML of :func:`section_markdown`; significant pairs are bold."""
    name = METRIC_LABELS[cs.metric]
    stem = METRICS[cs.metric]
    out = [f"<h2>{TITLE}</h2>"] if with_legend else []
    if cs.overall is None:
        return [*out, f"<p>Test {_h(name)}: {_h(cs.note)}.</p>"]
    if with_legend:
        out += [f'<p class="note">{_h(p)}</p>' for p in legend(ab)]
    figures = {id(c): rel for c, rel in cd_figures(cs)}
    for c in (cs.overall, *cs.per_value):
        out += [f"<h3>Test {_h(name)}: {_h(scope(c))}</h3>", f"<p>{_h(_counts(c, ab))}</p>"]
        if c.ranks:
            head = ("Method", "Average rank", f"Mean test {name} (%)")
            out.append(_html_table(head, _rank_rows(c)))
        out.append(f"<p>{_h(_friedman_text(c))}</p>")
        if id(c) in figures:
            out.append(
                f'<figure><img src="{_h(figures[id(c)])}" alt="CD diagram, test {_h(name)}, {_h(scope(c))}">'
                f"<figcaption>{_h(figure_caption(cs, c))}</figcaption></figure>"
            )
        if c.pairs:
            out.append(
                _html_table(PAIR_HEADERS, [_pair_cells(c, p) for p in c.pairs], bold=len(PAIR_HEADERS) - 1)
            )
        if c.untested:
            out.append("<ul>" + "".join(f"<li>{_h(line)}</li>" for line in _untested(c)) + "</ul>")
    if (line := _omitted(cs)) is not None:
        out.append(f"<p>{_h(line)}</p>")
    links = [f"{kind}_{stem}.csv" for kind in ("ranks", "friedman", "wilcoxon")] + [f"comparison_{stem}.json"]
    out.append(
        '<p class="note">Raw numbers: ' + ", ".join(f'<a href="tables/{x}">{x}</a>' for x in links) + ".</p>"
    )
    return out


# ------------------------------------------------------------------------------------------- tables


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _scope_fields(c: Comparison) -> dict[str, Any]:
    return {"scope": "all" if c.axis is None else "value", "axis": c.axis, "value": _plain(c.value)}


def _friedman_record(c: Comparison) -> dict[str, Any]:
    f = c.friedman
    return {
        **_scope_fields(c),
        "n_blocks": c.n_blocks,
        "k": len(c.methods),
        "statistic": None if f is None else f.statistic,
        "df": None if f is None else f.df,
        "p": None if f is None else f.p,
        "significant": None if f is None else f.significant,
        "cd": None if f is None else f.cd,
        "alpha": ALPHA,
        "note": c.friedman_note,
    }


def _pair_record(c: Comparison, p: Pair) -> dict[str, Any]:
    return {
        **_scope_fields(c),
        "method_a": p.a,
        "method_b": p.b,
        "n": p.n,
        "r_plus": p.r_plus,
        "r_minus": p.r_minus,
        "statistic": p.statistic,
        "p": p.p,
        "p_holm": p.p_holm,
        "p_nemenyi": c.friedman.nemenyi.get((p.a, p.b)) if c.friedman is not None else None,
        "mean_diff": p.mean_diff,
        "wins": p.wins,
        "ties": p.ties,
        "losses": p.losses,
        "better": p.better,
        "significant": p.significant,
    }


def _rank_records(c: Comparison) -> list[dict[str, Any]]:
    return [
        {
            **_scope_fields(c),
            "method": m,
            "avg_rank": c.ranks[m],
            "mean": c.means[m],
            "n_blocks": c.n_blocks,
            "k": len(c.methods),
            "incomplete_blocks": c.incomplete,
        }
        for m in _by_rank(c)
    ]


def _csv(records: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (show(v) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def tables(cs: Comparisons, ab: Ablation) -> dict[str, str]:
    """Relative path → text of ``tables/ranks_<col>.csv`` (a line per scope × method), ``friedman_<col>.csv``
    (a line per scope, omitted values included with their reason as note), ``wilcoxon_<col>.csv`` (a line per
    scope × pair) and ``comparison_<col>.json`` (all of it), ``<col>`` the metric's column, raw values."""
    stem = METRICS[cs.metric]
    scopes = _scopes(cs)
    ranks = [r for c in scopes for r in _rank_records(c)]
    friedman = [_friedman_record(c) for c in scopes] + [
        {
            "scope": "value",
            "axis": o.axis,
            "value": _plain(o.value),
            "n_blocks": o.n_blocks,
            "k": o.k,
            "alpha": ALPHA,
            "note": f"omitted: {o.reason}",
        }
        for o in cs.omitted
    ]
    pairs = [_pair_record(c, p) for c in scopes for p in c.pairs]
    scope_cols = ("scope", "axis", "value")
    doc = {
        "metric": stem,
        "alpha": ALPHA,
        "min_blocks": MIN_BLOCKS,
        "blocking": ["dataset", *ab.extra_axes, ab.axis, "normal_classes"],
        "note": cs.note,
        "comparisons": [
            {
                **_scope_fields(c),
                "methods": list(c.methods),
                "n_blocks": c.n_blocks,
                "incomplete_blocks": c.incomplete,
                "ranks": {m: c.ranks[m] for m in _by_rank(c)},
                "means": dict(c.means),
                "friedman": _friedman_record(c),
                "nemenyi": (
                    [{"method_a": a, "method_b": b, "p": v} for (a, b), v in c.friedman.nemenyi.items()]
                    if c.friedman is not None
                    else []
                ),
                "wilcoxon": [_pair_record(c, p) for p in c.pairs],
                "untested_pairs": [{"method_a": a, "method_b": b, "n": n} for a, b, n in c.untested],
            }
            for c in scopes
        ],
        "omitted": [
            {"axis": o.axis, "value": _plain(o.value), "n_blocks": o.n_blocks, "k": o.k, "reason": o.reason}
            for o in cs.omitted
        ],
    }
    return {
        f"tables/ranks_{stem}.csv": _csv(
            ranks, (*scope_cols, "method", "avg_rank", "mean", "n_blocks", "k", "incomplete_blocks")
        ),
        f"tables/friedman_{stem}.csv": _csv(
            friedman,
            (*scope_cols, "n_blocks", "k", "statistic", "df", "p", "significant", "cd", "alpha", "note"),
        ),
        f"tables/wilcoxon_{stem}.csv": _csv(
            pairs,
            (
                *scope_cols,
                "method_a",
                "method_b",
                "n",
                "r_plus",
                "r_minus",
                "statistic",
                "p",
                "p_holm",
                "p_nemenyi",
                "mean_diff",
                "wins",
                "ties",
                "losses",
                "better",
                "significant",
            ),
        ),
        f"tables/comparison_{stem}.json": json.dumps(doc, indent=1, default=str) + "\n",
    }
