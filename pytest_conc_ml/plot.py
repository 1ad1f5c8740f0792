"""``--conc-bench-plot``: speedup against workers per function, next to the ideal line."""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .report import natural_key, row_labels
from .stats import Measurement

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_SUFFIXES", "matplotlib_missing", "plot_speedups", "speedup_figure"]

PLOT_SUFFIXES = (".png", ".svg")


def matplotlib_missing() -> bool:
    """Whether matplotlib (the ``plot`` extra) is not installed."""
    return importlib.util.find_spec("matplotlib") is None


def speedup_figure(rows: Sequence[Measurement]) -> tuple[Figure, int]:
    """A figure with one line per row name and backend, speedup against workers, and the ideal line.

    Lines are named as the report names rows (shortest unique node id and function), the
    worker axis has whole-number ticks only, and the legend sits to the right of the axes,
    clear of the data. Uses matplotlib's object API (no ``pyplot``), so the user's backend
    and figures are untouched.

    :returns: the figure and how many series it draws.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = row_labels(rows)
    series: dict[str, dict[int, float]] = collections.defaultdict(dict)
    ideal: dict[int, int] = {}
    for row in rows:
        speedup = row.speedup
        if speedup is None:
            continue
        series[f"{labels[id(row)]} ({row.backend})"][row.workers] = speedup
        ideal[row.workers] = row.ideal if row.backend != "sequential" else min(row.workers, row.cpus)

    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for label, points in sorted(series.items(), key=lambda item: natural_key(item[0])):
        workers = sorted(points)
        axes.plot(workers, [points[w] for w in workers], marker="o", label=label)
    if ideal:
        workers = sorted(ideal)
        axes.plot(workers, [ideal[w] for w in workers], linestyle="--", color="grey", label="ideal")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("workers")
    axes.set_ylabel("speedup over .sequential()")
    axes.set_title("conc-bench: speedup against workers")
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return figure, len(series)


def plot_speedups(rows: Sequence[Measurement], path: Path) -> int:
    """Draw :func:`speedup_figure` of ``rows`` and save it to ``path`` (``.png`` or ``.svg``).

    :returns: how many lines were drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    figure, drawn = speedup_figure(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasSVG(figure) if path.suffix.lower() == ".svg" else FigureCanvasAgg(figure)
    canvas.print_figure(str(path))
    return drawn
