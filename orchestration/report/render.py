"""Rendering of a :class:`orchestration.report.build.Report`: Markdown, HTML, PNG figures, CSV and JSON tables,
written into ``--out`` by :func:`write_report` (atomically, through :mod:`orchestration.store.outputs`).

Numbers in the human-readable tables and figures are ×100 (as in the paper) with one decimal; the CSV and
JSON tables keep the raw values. Figures are drawn on matplotlib's Agg canvas (no display, no global
pyplot state), 120 dpi (:mod:`orchestration.report.style`). The ranks and significance tests of the methods
are rendered by :mod:`orchestration.report.stats_render`.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepsad.errors import StorageError
from orchestration.report import stats_render
from orchestration.report.build import (
    METRIC_LABELS,
    METRICS,
    Ablation,
    Cell,
    HeatMap,
    Provenance,
    Report,
    axis_label,
    axis_short,
    method_label,
    order_key,
    show,
)
from orchestration.report.style import method_color, new_figure, pct
from orchestration.store.outputs import OutputDir

NOT_RUN = "—"  # no finished run in that cell
UNDEFINED = "–"  # a confidence interval with n = 1

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1180px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #d0d0d0; padding: .35em .6em; vertical-align: top; }
th { background: #f2f4f7; text-align: center; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.key { white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
.best { font-weight: 700; } .n { color: #666; font-size: .85em; margin-left: .4em; }
.ci { color: #666; font-size: .82em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .92em; margin-top: .3em; }
code, pre { background: #f5f5f5; border-radius: 3px; } code { padding: 0 .25em; }
pre { padding: .8em; overflow-x: auto; font-size: .85em; }
.note { color: #555; font-size: .92em; }
"""


# ------------------------------------------------------------------------------------------- cells


def _best(ab: Ablation, key: tuple[str, tuple[Any, ...], Any]) -> set[str]:
    """Methods with the row's highest mean as displayed (both metrics: higher is better)."""
    shown = {m: pct(c.summary.mean) for m in ab.methods if (c := ab.cell(*key, m)) is not None}
    top = max((float(v) for v in shown.values()), default=math.nan)
    return {m for m, v in shown.items() if float(v) == top}


def _ci(c: Cell) -> str:
    s = c.summary
    return UNDEFINED if s.ci_low is None or s.ci_high is None else f"[{pct(s.ci_low)}, {pct(s.ci_high)}]"


def _headers(ab: Ablation) -> list[str]:
    return [
        "Data set",
        *(axis_short(a) for a in ab.extra_axes),
        axis_short(ab.axis),
        *(method_label(m) for m in ab.methods),
    ]


# ------------------------------------------------------------------------------------------- tables


def table_markdown(ab: Ablation) -> str:
    """The paper's layout: rows data set × axis value, a column per method, ``mean ± std · n · [CI]``."""
    head = _headers(ab)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":--"] * (len(head) - len(ab.methods)) + ["--:"] * len(ab.methods)) + "|",
    ]
    previous = None
    for key in ab.row_keys():
        dataset, group, value = key
        best = _best(ab, key)
        cells = []
        for m in ab.methods:
            c = ab.cell(*key, m)
            if c is None:
                cells.append(NOT_RUN)
                continue
            v = f"{pct(c.summary.mean)} ± {pct(c.summary.std)}"
            cells.append(f"{f'**{v}**' if m in best else v} · n={c.summary.n} · {_ci(c)}")
        label = _md(dataset) if dataset != previous else ""
        previous = dataset
        lines.append(
            "| " + " | ".join([label, *(_md(show(g)) for g in group), _md(show(value)), *cells]) + " |"
        )
    return "\n".join(lines)


def table_html(ab: Ablation) -> str:
    """The table of :func:`table_markdown` in HTML; the data set spans its rows, the CI is under the mean."""
    keys = ab.row_keys()
    span: dict[str, int] = {}
    for d, _, _ in keys:
        span[d] = span.get(d, 0) + 1
    out = ["<table>", "<tr>" + "".join(f"<th>{_h(h)}</th>" for h in _headers(ab)) + "</tr>"]
    seen: set[str] = set()
    for key in keys:
        dataset, group, value = key
        best = _best(ab, key)
        tds = []
        if dataset not in seen:
            seen.add(dataset)
            tds.append(f'<td class="key" rowspan="{span[dataset]}">{_h(dataset)}</td>')
        tds += [f'<td class="key">{_h(show(x))}</td>' for x in (*group, value)]
        for m in ab.methods:
            c = ab.cell(*key, m)
            if c is None:
                tds.append(f'<td class="num" title="no finished run">{NOT_RUN}</td>')
                continue
            cls = ' class="best"' if m in best else ""
            tds.append(
                f'<td class="num"><span{cls}>{pct(c.summary.mean)} ± {pct(c.summary.std)}</span>'
                f'<span class="n">n={c.summary.n}</span><br><span class="ci">95% CI {_ci(c)}</span></td>'
            )
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _records(ab: Ablation) -> list[dict[str, Any]]:
    rows = []
    for key in ab.row_keys():
        dataset, group, value = key
        for m in ab.methods:
            if (c := ab.cell(*key, m)) is not None:
                s = c.summary
                rows.append(
                    {
                        "dataset": dataset,
                        **{a: _plain(g) for a, g in zip(ab.extra_axes, group, strict=True)},
                        ab.axis: _plain(value),
                        "method": m,
                        "metric": METRICS[ab.metric],
                        "n": s.n,
                        "mean": s.mean,
                        "std": s.std,
                        "ci_low": s.ci_low,
                        "ci_high": s.ci_high,
                    }
                )
    return rows


def table_csv(ab: Ablation) -> str:
    """One line per (data set, axis value, method): raw mean, std, ci_low, ci_high (empty for n = 1), n."""
    buf = io.StringIO()
    fields = ["dataset", *ab.extra_axes, ab.axis, "method", "metric", "n", "mean", "std", "ci_low", "ci_high"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in _records(ab):
        w.writerow({k: (show(v) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def table_json(ab: Ablation) -> str:
    """``{"metric", "axis", "extra_axes", "methods", "cells": [...]}`` with raw numbers (null CI for n = 1)."""
    doc = {
        "metric": METRICS[ab.metric],
        "axis": ab.axis,
        "extra_axes": list(ab.extra_axes),
        "methods": list(ab.methods),
        "cells": _records(ab),
    }
    return json.dumps(doc, indent=1) + "\n"


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ------------------------------------------------------------------------------------------- figures


def _panel_title(dataset: str, extra_axes: Sequence[str], group: Sequence[Any]) -> str:
    parts = [f"{axis_short(a)} = {show(g)}" for a, g in zip(extra_axes, group, strict=True)]
    return dataset + (f" ({', '.join(parts)})" if parts else "")


def plot_curves(ab: Ablation, path: Path, *, title: str) -> None:
    """The metric (×100) against the row axis, a line per method with its 95% CI band, a panel per data set.

    Axis values are equally spaced (γ_l = 0, .01, .05, .1, .2 would crowd on a linear scale).
    """
    panels = ab.panels()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(8.0 if ncols == 1 else 5.2 * ncols, 5.0 if nrows == 1 else 4.2 * nrows + 0.6)
    axs = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (dataset, group) in zip(axs.flat, panels, strict=False):
        values = sorted(
            {c.value for c in ab.cells if (c.dataset, c.group) == (dataset, group)}, key=order_key
        )
        for m in ab.methods:
            pts = [(i, c) for i, v in enumerate(values) if (c := ab.cell(dataset, group, v, m)) is not None]
            if not pts:
                continue
            x = np.array([i for i, _ in pts], dtype=float)
            y = np.array([100 * c.summary.mean for _, c in pts])
            lo = np.array([np.nan if c.summary.ci_low is None else 100 * c.summary.ci_low for _, c in pts])
            hi = np.array([np.nan if c.summary.ci_high is None else 100 * c.summary.ci_high for _, c in pts])
            color = method_color(m, ab.methods)
            ax.fill_between(
                x, lo, hi, where=~np.isnan(lo), color=color, alpha=0.15, linewidth=0, interpolate=False
            )
            ax.plot(x, y, marker="o", color=color, linewidth=1.8, markersize=5, label=method_label(m))
        ax.set_xticks(range(len(values)), [show(v) for v in values])
        ax.set_xlim(-0.3, len(values) - 0.7)
        ax.set_xlabel(axis_label(ab.axis))
        ax.set_ylabel(f"test {METRIC_LABELS[ab.metric]} (%)")
        ax.set_title(_panel_title(dataset, ab.extra_axes, group), fontsize=11)
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(panels) :]:
        ax.set_visible(False)
    axs.flat[0].legend(title="method", loc="best", fontsize=9)
    fig.suptitle(
        title + "\nlines: mean over seeds × normal classes; bands: 95% CI of the mean (t on the logit scale)",
        fontsize=11,
    )
    fig.savefig(path)


def plot_heatmaps(
    maps: Sequence[HeatMap], path: Path, *, axis: str, metric: str, title: str, extra_axes: Sequence[str]
) -> None:
    """Per normal class (rows) × axis value (columns): the mean metric (×100) over seeds, annotated."""
    import matplotlib as mpl

    ncols = min(2, len(maps))
    nrows = math.ceil(len(maps) / ncols)
    width = max(max(4.5, 0.8 * len(hm.values) + 2.2) for hm in maps)
    height = max(max(3.6, 0.42 * len(hm.classes) + 2.0) for hm in maps)
    fig = new_figure(min(14.0, max(8.0, width * ncols + 1.2)), height * nrows + 0.7)
    axs = fig.subplots(nrows, ncols, squeeze=False)
    finite = [100 * v for hm in maps for row in hm.mean for v in row if v is not None]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5  # a flat map still needs a colour scale
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#e6e6e6")  # grey: no finished run
    image = None
    for ax, hm in zip(axs.flat, maps, strict=False):
        data = np.array([[np.nan if v is None else 100 * v for v in row] for row in hm.mean])
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                light = not np.isnan(v) and (v - vmin) / (vmax - vmin) > 0.6
                ax.text(
                    j,
                    i,
                    UNDEFINED if np.isnan(v) else f"{v:.1f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="black" if light or np.isnan(v) else "white",
                )
        ax.set_xticks(range(len(hm.values)), [show(v) for v in hm.values])
        ax.set_yticks(range(len(hm.classes)), [show(c) for c in hm.classes])
        ax.set_xlabel(axis_label(axis))
        ax.set_ylabel("normal class")
        ax.set_title(_panel_title(hm.dataset, extra_axes, hm.group), fontsize=11)
    for ax in list(axs.flat)[len(maps) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axs, label=f"mean test {METRIC_LABELS[metric]} (%)", shrink=0.9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


# ------------------------------------------------------------------------------------------- documents


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _inline_html(text: str) -> str:
    """The little Markdown the report's prose uses (`code`, **bold**) as HTML."""
    out = _h(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _fence(text: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}yaml\n{text.rstrip()}\n{ticks}"


def _figures(report: Report) -> list[tuple[str, str]]:
    """(relative path, caption) of every figure, in document order."""
    ab = report.tables[0]
    name = METRIC_LABELS[report.metric]
    figs = [
        (
            f"figures/{report.metric}_vs_{ab.axis}.png",
            f"Test {name} (%) against {axis_label(ab.axis)}, one line per method, one panel per data set. "
            "Lines: mean over seeds × normal classes; bands: the 95% confidence interval of the mean, "
            "Student t (n−1 dof) on the logit scale, back-transformed so that it stays inside [0, 100] "
            "(no band where n = 1). Axis values are equally spaced.",
        )
    ]
    if report.heatmaps:
        m = method_label(report.heatmaps[0].method)
        figs.append(
            (
                f"figures/{report.metric}_per_class_{report.heatmaps[0].method}.png",
                f"{m}: mean test {name} (%) over seeds per normal class × {axis_label(ab.axis)} "
                f"(grey “{UNDEFINED}”: no finished run).",
            )
        )
    return figs


def _prose(report: Report) -> list[str]:
    p = report.provenance
    ab = report.tables[0]
    counts = ", ".join(f"{n} {s}" for s, n in p.counts.items())
    lines = [
        f"Sweep `{report.sweep}` ({p.location}): {p.used} finished trials used ({counts} in the store"
        + (f"; {p.not_selected} tuning trials not selected" if p.not_selected else "")
        + (
            f"; {p.missing_metric} finished without test {METRIC_LABELS[report.metric]}"
            if p.missing_metric
            else ""
        )
        + ").",
        "Rows: "
        + " × ".join(["data set", *(axis_label(a) for a in ab.extra_axes), axis_label(ab.axis)])
        + f"; columns: methods. Policy: {_counted(p.policies)}.",
        "Cells: test metric ×100, **mean ± sample std** (ddof = 1) over seeds × normal classes, n = the runs "
        "each interval rests on, and the 95% confidence interval of the mean: Student t (n−1 dof) on the logit "
        "scale, back-transformed, so that it stays inside [0, 100] (a t interval of the raw values runs past 100 "
        f"near the top; “{UNDEFINED}” when n = 1). The best mean of a row "
        f"is bold; “{NOT_RUN}” = no finished run.",
    ]
    return lines


def _counted(d: dict[str, int]) -> str:
    return ", ".join(f"`{k}` ({n} trial{'s' if n != 1 else ''})" for k, n in d.items()) or "none"


def render_markdown(report: Report, generated: str) -> str:
    out = [f"# Ablation report: {report.sweep}", "", f"_Generated {generated} by `deepsad report`._", ""]
    out += [line + "\n" for line in _prose(report)]
    for ab in report.tables:
        out += [
            f"## Test {METRIC_LABELS[ab.metric]}",
            "",
            table_markdown(ab),
            "",
            f"Raw numbers: [`tables/{METRICS[ab.metric]}.csv`](tables/{METRICS[ab.metric]}.csv), "
            f"[`tables/{METRICS[ab.metric]}.json`](tables/{METRICS[ab.metric]}.json).",
            "",
        ]
    for i, (cs, ab) in enumerate(zip(report.comparisons, report.tables, strict=True)):
        out += stats_render.section_markdown(cs, ab, with_legend=i == 0)
    out += ["## Figures", ""]
    for i, (rel, caption) in enumerate(_figures(report), 1):
        out += [f"![Figure {i}]({rel})", "", f"*Figure {i}. {caption}*", ""]
    return "\n".join(out + _provenance_markdown(report.provenance)) + "\n"


def _provenance_markdown(p: Provenance) -> list[str]:
    """The Markdown report's provenance: sweep directory, code versions, fingerprints, failed cells, sweep file."""
    out = [
        "## Provenance",
        "",
        f"- Sweep directory: `{p.location}`",
        f"- Code version(s): {_counted(p.code_versions)}",
        f"- Policy: {_counted(p.policies)}",
        "- Trials in the store: " + ", ".join(f"{n} {s}" for s, n in p.counts.items()),
        "- Data fingerprints (distinct semi-supervised splits per data set, full values in "
        "[`tables/provenance.json`](tables/provenance.json)):",
    ]
    for dataset, fps in p.fingerprints.items():
        out.append(
            f"  - {dataset}: {len(fps)} — "
            + ", ".join(f"`{f[:12]}`" for f in fps[:8])
            + (f", … ({len(fps) - 8} more)" if len(fps) > 8 else "")
        )
    out += ["", f"### Failed cells ({len(p.failed)})", ""]
    if p.failed:
        out += [
            "| trial | data set | method | axes | normal class | seed | error |",
            "|--|--|--|--|--|--|--|",
        ]
        out += [
            f"| `{f['trial_key']}` | {_md(show(f['dataset']))} | {method_label(f['method'])} | {_md(f['axes'])} "
            f"| {_md(f['normal_classes'])} | {show(f['seed'])} | {_md(_one_line(f['error']))} |"
            for f in p.failed
        ]
    else:
        out.append("None.")
    out += ["", "### Sweep file", ""]
    if p.spec_text is None:
        out.append("No `spec.yaml` in the sweep directory.")
    else:
        out += ["<details><summary>spec.yaml (verbatim)</summary>", "", _fence(p.spec_text), "", "</details>"]
    return out


def render_html(report: Report, generated: str) -> str:
    body = [
        f"<h1>Ablation report: {_h(report.sweep)}</h1>",
        f'<p class="note">Generated {_h(generated)} by <code>deepsad report</code>.</p>',
    ]
    body += [f"<p>{_inline_html(line)}</p>" for line in _prose(report)]
    for ab in report.tables:
        stem = METRICS[ab.metric]
        body += [
            f"<h2>Test {METRIC_LABELS[ab.metric]}</h2>",
            table_html(ab),
            f'<p class="note">Raw numbers: <a href="tables/{stem}.csv">{stem}.csv</a>, '
            f'<a href="tables/{stem}.json">{stem}.json</a>.</p>',
        ]
    for i, (cs, ab) in enumerate(zip(report.comparisons, report.tables, strict=True)):
        body += stats_render.section_html(cs, ab, with_legend=i == 0)
    body.append("<h2>Figures</h2>")
    for i, (rel, caption) in enumerate(_figures(report), 1):
        body.append(
            f'<figure><img src="{_h(rel)}" alt="Figure {i}"><figcaption><b>Figure {i}.</b> '
            f"{_h(caption)}</figcaption></figure>"
        )
    body += _provenance_html(report.provenance)
    return (
        # an empty icon: a browser would otherwise ask the server for /favicon.ico (a 404 in its console)
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>Ablation report: {_h(report.sweep)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _provenance_html(p: Provenance) -> list[str]:
    """The HTML report's provenance: sweep directory, code versions, fingerprints, failed cells, sweep file."""
    fps = "".join(
        f"<li>{_h(d)}: {len(f)} — "
        + ", ".join(f"<code>{_h(x[:12])}</code>" for x in f[:8])
        + (f", … ({len(f) - 8} more)" if len(f) > 8 else "")
        + "</li>"
        for d, f in p.fingerprints.items()
    )
    body = [
        "<h2>Provenance</h2>",
        "<ul>",
        f"<li>Sweep directory: <code>{_h(p.location)}</code></li>",
        f"<li>Code version(s): {_inline_html(_counted(p.code_versions))}</li>",
        f"<li>Policy: {_inline_html(_counted(p.policies))}</li>",
        "<li>Trials in the store: " + _h(", ".join(f"{n} {s}" for s, n in p.counts.items())) + "</li>",
        "<li>Data fingerprints (distinct semi-supervised splits per data set; full values in "
        f'<a href="tables/provenance.json">provenance.json</a>):<ul>{fps}</ul></li>',
        "</ul>",
        f"<h3>Failed cells ({len(p.failed)})</h3>",
    ]
    if p.failed:
        heads = ("trial", "data set", "method", "axes", "normal class", "seed", "error")
        body.append(
            "<table><tr>"
            + "".join(f"<th>{h}</th>" for h in heads)
            + "</tr>"
            + "".join(
                f"<tr><td><code>{_h(f['trial_key'])}</code></td><td>{_h(show(f['dataset']))}</td>"
                f"<td>{_h(method_label(f['method']))}</td><td>{_h(f['axes'])}</td><td>{_h(f['normal_classes'])}</td>"
                f"<td>{_h(show(f['seed']))}</td><td>{_h(_one_line(f['error']))}</td></tr>"
                for f in p.failed
            )
            + "</table>"
        )
    else:
        body.append("<p>None.</p>")
    body.append("<h3>Sweep file</h3>")
    if p.spec_text is None:
        body.append("<p>No <code>spec.yaml</code> in the sweep directory.</p>")
    else:
        body.append(
            f"<details open><summary>spec.yaml (verbatim)</summary><pre>{_h(p.spec_text)}</pre></details>"
        )
    return body


def _one_line(error: str, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _provenance_json(p: Provenance) -> str:
    doc = {
        "sweep": p.sweep,
        "location": p.location,
        "code_versions": p.code_versions,
        "policies": p.policies,
        "counts": p.counts,
        "used": p.used,
        "not_selected": p.not_selected,
        "missing_metric": p.missing_metric,
        "fingerprints": p.fingerprints,
        "failed": p.failed,
    }
    return json.dumps(doc, indent=1, default=str) + "\n"


# ------------------------------------------------------------------------------------------- files


def render(report: Report, out: Path, *, shown: Path | None = None) -> list[Path]:
    """Write every file of the report under ``out``; returns them. Raises StorageError on a failed write
    (naming ``shown``, the final place, when ``out`` is a staging directory)."""
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    files: dict[str, str] = {}  # relative path -> text
    for ab in report.tables:
        stem = METRICS[ab.metric]
        files[f"tables/{stem}.csv"] = table_csv(ab)
        files[f"tables/{stem}.json"] = table_json(ab)
    for cs, ab in zip(report.comparisons, report.tables, strict=True):
        files.update(stats_render.tables(cs, ab))
    files["tables/provenance.json"] = _provenance_json(report.provenance)
    files["report.md"] = render_markdown(report, generated)
    files["report.html"] = render_html(report, generated)
    figs = _figures(report)
    ab = report.tables[0]
    title = f"{report.sweep}: test {METRIC_LABELS[report.metric]} vs {axis_label(ab.axis)}"
    written = []
    try:
        for d in ("figures", "tables"):
            (out / d).mkdir(parents=True, exist_ok=True)
        for rel, text in files.items():
            (out / rel).write_text(text, encoding="utf-8")
            written.append(out / rel)
        plot_curves(ab, out / figs[0][0], title=title)
        written.append(out / figs[0][0])
        if report.heatmaps:
            hm_title = (
                f"{report.sweep}: {method_label(report.heatmaps[0].method)}, mean test "
                f"{METRIC_LABELS[report.metric]} (%) over seeds per normal class"
            )
            plot_heatmaps(
                report.heatmaps,
                out / figs[1][0],
                axis=ab.axis,
                metric=report.metric,
                title=hm_title,
                extra_axes=ab.extra_axes,
            )
            written.append(out / figs[1][0])
        for cs in report.comparisons:
            for comparison, rel in stats_render.cd_figures(cs):
                stats_render.plot_cd(comparison, out / rel, title=stats_render.figure_title(report.sweep, cs, comparison))
                written.append(out / rel)
    except OSError as e:
        raise StorageError(f"--out {shown or out}: cannot write the report ({e.strerror or e})") from e
    return written


#: What `report` writes into --out (and so all that its --force may replace).
REPORT_OWNS: tuple[str, ...] = ("report.md", "report.html", "figures/*.png", "tables/*.csv", "tables/*.json")


def write_report(report: Report, out: Path, *, force: bool = False) -> list[Path]:
    """Write ``out``/report.md, report.html, figures/*.png and tables/*.csv|json; returns the files written.

    ``out`` appears whole (built beside it, then swapped in); an existing, non-empty ``out`` is replaced
    only with ``force`` and only if it holds nothing but a report's own files (:mod:`orchestration.store.outputs`).

    Raises StorageError if ``out`` may not or cannot be written.
    """
    output = OutputDir(Path(out), command="report", flag="--out", owns=REPORT_OWNS, force=force, what="the report")
    with output.staging() as tmp:
        written = render(report, tmp, shown=output.path)
    return [output.path / p.relative_to(tmp) for p in written]
