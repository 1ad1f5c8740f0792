"""``--conc-bench-plot``: speedup against workers per function, next to the ideal line."""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from .stats import Measurement

__all__ = ["PLOT_SUFFIXES", "matplotlib_missing", "plot_speedups"]

PLOT_SUFFIXES = (".png", ".svg")


def matplotlib_missing() -> bool:
    """Whether matplotlib (the ``plot`` extra) is not installed."""
    return importlib.util.find_spec("matplotlib") is None


def plot_speedups(rows: Sequence[Measurement], path: Path) -> int:
    """Draw one line per function and backend, speedup against workers, and save it to ``path``.

    Uses matplotlib's object API (no ``pyplot``), so the user's backend and figures are untouched.

    :returns: how many lines were drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    series: dict[str, dict[int, float]] = collections.defaultdict(dict)
    ideal: dict[int, int] = {}
    for row in rows:
        speedup = row.speedup
        if speedup is None:
            continue
        label = f"{row.test}::{row.name} ({row.backend})"
        series[label][row.workers] = speedup
        ideal[row.workers] = row.ideal if row.backend != "sequential" else min(row.workers, row.cpus)

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for label, points in sorted(series.items()):
        workers = sorted(points)
        axes.plot(workers, [points[w] for w in workers], marker="o", label=label)
    if ideal:
        workers = sorted(ideal)
        axes.plot(workers, [ideal[w] for w in workers], linestyle="--", color="grey", label="ideal")
    axes.set_xlabel("workers")
    axes.set_ylabel("speedup over .sequential()")
    axes.set_title("conc-bench: speedup against workers")
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasSVG(figure) if path.suffix.lower() == ".svg" else FigureCanvasAgg(figure)
    canvas.print_figure(str(path))
    return len(series)
