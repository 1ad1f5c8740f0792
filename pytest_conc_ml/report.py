"""The terminal report: one row per function and configuration, a header and a legend."""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from .stats import Measurement

__all__ = [
    "Comparison",
    "Line",
    "comparison_lines",
    "format_seconds",
    "natural_key",
    "report_lines",
    "row_labels",
    "short_names",
    "wrap",
]

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
    text = "ok"
    if row.parity.max_difference not in (None, 0.0):
        text = f"ok ({row.parity.max_difference:.1e})"
    return text


def short_names(nodeids: Sequence[str]) -> dict[str, str]:
    """The shortest form of each node id that no other node id of the set ends with.

    As pytest names tests: ``test_fit`` when one test has that name, else
    ``TestA::test_fit``, ``a/test_x.py::TestA::test_fit`` and so on, one part more each time.
    """

    def tokens(nodeid: str) -> list[tuple[str, str]]:
        path, *rest = nodeid.split("::")
        folders = path.split("/")
        return [("/" if i else "", part) for i, part in enumerate(folders)] + [("::", part) for part in rest]

    unique = list(dict.fromkeys(nodeids))
    split = {nodeid: tokens(nodeid) for nodeid in unique}
    names = {}
    for nodeid in unique:
        mine = split[nodeid]
        for count in range(1, len(mine) + 1):
            tail = [part for _, part in mine[-count:]]
            if not any(other != nodeid and [p for _, p in split[other][-count:]] == tail for other in unique):
                break
        names[nodeid] = "".join(sep + part for sep, part in mine[-count:]).lstrip(":/")
    return names


def row_labels(rows: Sequence[Measurement]) -> dict[int, str]:
    """The report's name of each row (by ``id``): short node id, function name, ``#n`` for repeated calls.

    ``(N calls)`` counts the calls of a hypothesis test's call site; ``args!`` marks a function
    that changes its arguments (in the name, which has its own line at 80 columns, not in the figures).
    """
    short = short_names([row.nodeid for row in rows])
    return {
        id(row): f"{short[row.nodeid]}::{row.name}"
        + (f"#{row.call}" if row.call > 1 else "")
        + (f" ({row.calls} calls)" if row.calls > 1 else "")
        + (" args!" if row.changed_arguments else "")
        for row in rows
    }


HEADINGS = ("name", "backend", "wrk", "chk", "seq", "par", "speedup", "eff", "±seq", "±par", "n", "parity")


def _spread(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _cells(row: Measurement, *, serial: bool) -> list[str]:
    efficiency = row.efficiency
    cells = [
        row.backend,
        str(row.workers),
        "?" if row.chunks is None else str(row.chunks),
        format_seconds(None if row.sequential is None else row.sequential.median),
        format_seconds(None if row.parallel is None else row.parallel.median),
        _ratio(row.speedup),
        _percent(efficiency) + ("!" if efficiency is not None and efficiency > 1 else ""),
        _spread(row.sequential_spread),
        _spread(row.spread),
        "-" if row.parallel is None else str(row.parallel.rounds),
        _parity(row),
    ]
    if serial:
        fraction = row.serial_fraction if row.sweep else None
        cells.append("-" if fraction is None else f"{fraction:.2f}")
    return cells


def _markup(row: Measurement) -> dict[str, bool]:
    if row.parity.ok is False:
        return {"red": True, "bold": True}
    speedup = row.speedup
    if speedup is not None and speedup < 1:
        return {"yellow": True}
    return {}


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that puts ``f#2`` before ``f#10`` and ``test[9]`` before ``test[10]``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text))


def _table(headings: Sequence[str], rows: Sequence[tuple[str, list[str], dict[str, bool]]], width: int) -> list[Line]:
    """A table whose first column is a name; the names get their own lines when a row would not fit.

    The figures are two spaces apart, one where that is what makes them fit ``width``.
    """
    columns = len(headings) - 1
    widths = [len(h) for h in headings[1:]]
    for _, cells, _ in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    name_width = max([len(headings[0])] + [len(name) for name, _, _ in rows])

    def figures(cells: Sequence[str], gap: int) -> str:
        # the first figure (the backend) reads best left-aligned, numbers right-aligned
        first = cells[0].ljust(widths[0])
        aligned = [first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
        return (" " * gap).join(aligned).rstrip()

    lines: list[Line] = []
    if name_width + 2 + sum(widths) + 2 * (columns - 1) <= width:
        heading = headings[0].ljust(name_width) + "  " + figures(headings[1:], 2)
        lines.append((heading, {"bold": True}))
        lines.append(("-" * len(heading), {}))
        lines.extend(
            ((name.ljust(name_width) + "  " + figures(cells, 2)).rstrip(), markup) for name, cells, markup in rows
        )
        return lines
    # Too wide for the terminal: each name on its own line, its figures indented below it.
    gap = 2 if 2 + sum(widths) + 2 * (columns - 1) <= width else 1
    heading = "  " + figures(headings[1:], gap)
    lines.append((headings[0], {"bold": True}))
    lines.append((heading, {"bold": True}))
    lines.append(("-" * min(width, max(len(heading), 4)), {}))
    previous = None
    for name, cells, markup in rows:
        if name != previous:
            lines.extend((text, markup) for text in wrap(name, width))
            previous = name
        lines.append(("  " + figures(cells, gap), markup))
    return lines


def wrap(text: str, width: int, indent: str = "    ") -> list[str]:
    """``text`` cut at spaces to ``width`` columns, later lines indented; never an empty list."""
    return textwrap.wrap(text, width=max(width, 40), subsequent_indent=indent, break_on_hyphens=False) or [""]


def report_lines(rows: Sequence[Measurement], *, header: str, timing: bool, width: int = 100) -> list[Line]:
    """The report section: header, table and legend, fitted to ``width`` columns.

    Rows are named by the shortest unique form of their test's node id and the function,
    grouped per test and function, repeated calls in natural order (``#2`` before ``#10``).

    :param rows: the measurements of the run.
    :param header: the line naming CPUs and settings.
    :param timing: whether runs were timed (else the legend says why not).
    :param width: the terminal's width.
    """
    serial = any(row.sweep for row in rows)
    headings = list(HEADINGS) + (["serial"] if serial else [])
    labels = row_labels(rows)
    order = {nodeid: index for index, nodeid in enumerate(dict.fromkeys(row.nodeid for row in rows))}
    ordered = sorted(
        rows,
        key=lambda r: (order[r.nodeid], natural_key(r.name), r.call, r.backend, r.workers, r.chunks or 0),
    )
    table = [(labels[id(row)], _cells(row, serial=serial), _markup(row)) for row in ordered]
    lines: list[Line] = [(text, {}) for text in wrap(header, width)]
    lines.extend(_table(headings, table, width))
    lines.append(("", {}))
    lines.extend((text, {}) for entry in _legend(serial=serial, timing=timing) for text in wrap(entry, width))
    superlinear = [labels[id(row)] for row in ordered if (row.efficiency or 0) > 1]
    if superlinear:
        warning = (
            f"conc-bench: WARNING: efficiency above 100% on {len(superlinear)} row(s) ({', '.join(superlinear)}): "
            "more than the ideal speedup means the sequential rounds were slowed (a busy machine, caches, "
            "memory) rather than the parallel ones sped up; re-run with more rounds before trusting them"
        )
        lines.extend((text, {"yellow": True}) for text in wrap(warning, width))
    for row in ordered:
        if row.note:
            lines.extend((text, {"yellow": True}) for text in wrap(f"conc-bench: {labels[id(row)]}: {row.note}", width))
    changed = sorted({f"{row.name} ({short_names([row.nodeid])[row.nodeid]})" for row in rows if row.changed_arguments})
    if changed:
        note = (
            "conc-bench: these functions change the arguments they are given (in place): "
            + ", ".join(changed)
            + ". The test saw the arguments as the call as written left them; the extra rounds ran on copies."
        )
        lines.extend((text, {"yellow": True}) for text in wrap(note, width))
    return lines


def _legend(*, serial: bool, timing: bool) -> list[str]:
    legend = [
        "Legend:",
        "  wrk, chk: workers and chunks of the parallel run",
        "  seq, par: median wall time of .sequential() and of the parallel run (same seed, same chunks); "
        "±seq, ±par: their interquartile range relative to the median",
        "  speedup: seq / par (yellow when below 1); eff: speedup / ideal, ideal = min(workers, chunks, CPUs) "
        "(1 for the sequential backend); '!' marks more than 100%",
        "  n: timed rounds. A hypothesis test has one row per call site: its first example is timed, "
        "the others are checked for parity and counted in '(N calls)'",
        "  parity: results and the arguments each run left equivalent to .sequential()'s in every round "
        "(largest numeric difference in brackets; FAIL in red; skip: an iterator passed whole, or arguments "
        "that cannot be copied, so the call ran once, unchecked); 'args!' after a name: the function changes "
        "its arguments",
    ]
    if serial:
        legend.append(
            "  serial: the Karp-Flatt serial fraction e = (1/speedup - 1/p) / (1 - 1/p), p = ideal: the share "
            "of the work that behaved as if it ran on one worker (start-up, sending data, the combine, "
            "imbalance). Near 0 the function scales with workers; near 1 more workers do not help"
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


def comparison_lines(
    comparisons: Sequence[Comparison], *, baseline: str, fail_percent: float | None, width: int = 100
) -> list[Line]:
    """The before/after table against the saved run ``baseline``.

    :param fail_percent: the regression bar; rows beyond it and beyond their noise are red.
    :param width: the terminal's width.
    """
    lines: list[Line] = [(f"conc-bench: compared with saved run {baseline!r}", {})]
    if not comparisons:
        lines.append(("  no timed row of this run matches a row of the saved run", {"yellow": True}))
        return lines
    headings = ["name", "backend", "wrk", "chk", "before", "now", "change", "noise"]
    labels = row_labels([item.row for item in comparisons])
    table_rows: list[tuple[str, list[str], dict[str, Any]]] = []
    for item in sorted(comparisons, key=lambda c: (natural_key(c.row.fullname), c.row.backend, c.row.workers)):
        row, change = item.row, item.change
        noises = [n for n in (row.noise, item.before.noise) if n is not None]
        noise = 100 * max(noises, default=0.0)
        cells = [
            row.backend,
            str(row.workers),
            "?" if row.chunks is None else str(row.chunks),
            _ratio(item.before.speedup),
            _ratio(row.speedup),
            "-" if change is None else f"{change:+.1f}%",
            f"±{noise:.0f}%",
        ]
        markup: dict[str, bool] = {}
        if change is not None and fail_percent is not None and -change > max(fail_percent, noise):
            markup = {"red": True, "bold": True}
        elif change is not None and change < 0:
            markup = {"yellow": True}
        table_rows.append((labels[id(row)], cells, markup))
    lines.extend(_table(headings, table_rows, width))
    lines.extend(
        (text, {})
        for text in wrap(
            "  before, now: speedups; noise: the larger run's ±seq + ±par, a change within it is not a regression",
            width,
        )
    )
    return lines
