"""How a report looks, shared by :mod:`orchestration.report.render` and
:mod:`orchestration.report.stats_render`: one colour per method, the figure canvas, the ×100 number format.

Figures are drawn on matplotlib's Agg canvas (no display, no global pyplot state), :data:`DPI` dots per inch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DPI = 120
#: Fixed colours per method, so a method looks the same in every figure.
METHOD_COLORS = {"deepsad": "#1f77b4", "deepsvdd": "#ff7f0e", "isoforest": "#2ca02c", "ocsvm": "#7f7f7f"}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")


def pct(x: float) -> str:
    """A metric in [0, 1] as the paper prints it: ×100, one decimal (``0.9512`` → ``95.1``)."""
    return f"{100 * x:.1f}"


def method_color(method: str, methods: Sequence[str]) -> str:
    """``method``'s colour: its fixed one, else one of :data:`OTHER_COLORS` by its place among ``methods``."""
    others = [m for m in methods if m not in METHOD_COLORS]
    return METHOD_COLORS.get(method) or OTHER_COLORS[others.index(method) % len(OTHER_COLORS)]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (inches) on its own Agg canvas, constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
