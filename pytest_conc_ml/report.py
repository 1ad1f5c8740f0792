"""The terminal report: one row per function and configuration, a header and a legend."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .stats import Measurement

__all__ = ["Comparison", "Line", "comparison_lines", "format_seconds", "report_lines"]

#: a line of the report and its terminal markup (``{"red": True}``, ...)
Line = tuple[str, dict[str, bool]]


def format_seconds(seconds: float | None) -> str:
    """A duration with a unit that keeps three significant digits readable."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(value: float | None, suffix: str = "x") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}{suffix}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _parity(row: Measurement) -> str:
    if row.parity.ok is None:
        return "skip"
    if not row.parity.ok:
        return "FAIL"
    if row.parity.max_difference not in (None, 0.0):
        return f"ok ({row.parity.max_difference:.1e})"
    return "ok"


HEADINGS = (
    "name",
    "backend",
    "workers",
    "chunks",
    "sequential",
    "parallel",
    "speedup",
    "efficiency",
    "spread",
    "rounds",
    "parity",
)


def _cells(row: Measurement, *, serial: bool) -> list[str]:
    cells = [
        f"{row.test}::{row.name}" + _call_suffix(row),
        row.backend,
        str(row.workers),
        "?" if row.chunks is None else str(row.chunks),
        format_seconds(None if row.sequential is None else row.sequential.median),
        format_seconds(None if row.parallel is None else row.parallel.median),
        _ratio(row.speedup),
        _percent(row.efficiency),
        "-" if row.spread is None else f"±{row.spread * 100:.0f}%",
        "-" if row.parallel is None else str(row.parallel.rounds),
        _parity(row),
    ]
    if serial:
        fraction = row.serial_fraction if row.sweep else None
        cells.append("-" if fraction is None else f"{fraction:.3f}")
    return cells


def _call_suffix(row: Measurement) -> str:
    # fullname ends with "#n" from a function's second call in the same test on
    _, _, tail = row.fullname.rpartition("::")
    return tail[len(row.name) :] if tail.startswith(row.name) else ""


def _markup(row: Measurement) -> dict[str, bool]:
    if row.parity.ok is False:
        return {"red": True, "bold": True}
    speedup = row.speedup
    if speedup is not None and speedup < 1:
        return {"yellow": True}
    return {}


def _table(headings: Sequence[str], rows: Sequence[tuple[list[str], dict[str, bool]]]) -> list[Line]:
    widths = [len(h) for h in headings]
    for cells, _ in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]

    def render(cells: Sequence[str]) -> str:
        # the name column reads best left-aligned, figures right-aligned
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines: list[Line] = [(render(headings), {"bold": True})]
    lines.append(("-" * len(lines[0][0]), {}))
    lines.extend((render(cells), markup) for cells, markup in rows)
    return lines


def report_lines(rows: Sequence[Measurement], *, header: str, timing: bool) -> list[Line]:
    """The report section: header, table and legend.

    :param rows: the measurements of the run.
    :param header: the line naming CPUs and settings.
    :param timing: whether runs were timed (else the legend says why not).
    """
    serial = any(row.sweep for row in rows)
    headings = list(HEADINGS) + (["serial"] if serial else [])
    ordered = sorted(rows, key=lambda r: (r.fullname, r.backend, r.workers, r.chunks or 0))
    lines: list[Line] = [(header, {})]
    lines.extend(_table(headings, [(_cells(row, serial=serial), _markup(row)) for row in ordered]))
    lines.append(("", {}))
    lines.extend((text, {}) for text in _legend(serial=serial, timing=timing))
    return lines


def _legend(*, serial: bool, timing: bool) -> list[str]:
    legend = [
        "Legend:",
        "  sequential, parallel: median wall time of .sequential() and of the parallel run (same seed, same chunks)",
        "  speedup: sequential median / parallel median (yellow when below 1)",
        "  efficiency: speedup / ideal, ideal = min(workers, chunks, CPUs) (1 for the sequential backend)",
        "  spread: interquartile range of the parallel times, relative to their median",
        "  parity: parallel result equivalent to .sequential() in every round "
        "(largest numeric difference in brackets; FAIL in red; skip: an iterator passed whole cannot be rerun)",
    ]
    if serial:
        legend.append(
            "  serial: Karp-Flatt serial fraction (1/speedup - 1/p) / (1 - 1/p), p = ideal; "
            "near 0 scales, near 1 does not"
        )
    if not timing:
        legend.append("  timing was off: parity was checked once per call")
    return legend


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """A row of this run next to the same row of a saved run."""

    row: Measurement
    before: Measurement

    @property
    def change(self) -> float | None:
        """Relative change of the speedup, in percent (negative: slower than before)."""
        old, new = self.before.speedup, self.row.speedup
        if old is None or new is None or old <= 0 or math.isinf(old) or math.isinf(new):
            return None
        return (new - old) / old * 100


def comparison_lines(comparisons: Sequence[Comparison], *, baseline: str, fail_percent: float | None) -> list[Line]:
    """The before/after table against the saved run ``baseline``.

    :param fail_percent: the regression bar; rows beyond it are shown in red.
    """
    lines: list[Line] = [(f"conc-bench: compared with saved run {baseline!r}", {})]
    if not comparisons:
        lines.append(("  no row of this run matches a row of the saved run", {"yellow": True}))
        return lines
    headings = ["name", "backend", "workers", "chunks", "speedup before", "speedup now", "change"]
    table_rows: list[tuple[list[str], dict[str, Any]]] = []
    for item in sorted(comparisons, key=lambda c: c.row.key()[:3]):
        row, change = item.row, item.change
        cells = [
            f"{row.test}::{row.name}" + _call_suffix(row),
            row.backend,
            str(row.workers),
            "?" if row.chunks is None else str(row.chunks),
            _ratio(item.before.speedup),
            _ratio(row.speedup),
            "-" if change is None else f"{change:+.1f}%",
        ]
        markup: dict[str, bool] = {}
        if change is not None and fail_percent is not None and -change > fail_percent:
            markup = {"red": True, "bold": True}
        elif change is not None and change < 0:
            markup = {"yellow": True}
        table_rows.append((cells, markup))
    lines.extend(_table(headings, table_rows))
    return lines
