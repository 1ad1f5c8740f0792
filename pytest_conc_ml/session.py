"""One pytest run of conc-bench: the rows, and at the end the JSON, save, compare, plot and gates.

In the style of pytest-benchmark's ``BenchmarkSession``: the hooks in :mod:`.plugin` feed
rows in and call :meth:`BenchSession.finish` and :meth:`BenchSession.display`; the policy
(what counts as a regression, what a save keeps, when a gate cannot check) lives here.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .options import Settings
from .report import Comparison, Line, comparison_lines, report_lines, wrap
from .stats import Measurement

__all__ = ["BenchSession", "Regression", "find_regressions", "merge_saved"]


@dataclasses.dataclass(frozen=True, slots=True)
class Regression:
    """A row whose speedup fell by more than the bar and more than its measured noise."""

    comparison: Comparison
    bar: float
    noise: float

    def describe(self) -> str:
        """One line naming the row, the speedups and the bars it crossed."""
        row, before = self.comparison.row, self.comparison.before
        change = self.comparison.change or 0.0
        return (
            f"{row.fullname} [{row.backend}, {row.workers} workers]: speedup "
            f"{before.speedup or 0:.2f}x -> {row.speedup or 0:.2f}x ({change:+.1f}%, bar -{self.bar:g}%, "
            f"noise ±{self.noise:.0f}%)"
        )


def find_regressions(comparisons: Sequence[Comparison], bar: float) -> list[Regression]:
    """The comparisons whose speedup fell by more than ``bar`` percent and more than the noise.

    The noise of a comparison is the larger of the two runs' speedup noise (the relative
    spreads of the sequential and the parallel times, added; see
    :attr:`Measurement.noise`), in percent: a drop that the rounds' own scatter explains
    is not a regression, however large the bar is set.

    :param bar: the ``--conc-bench-compare-fail`` percentage.
    """
    found = []
    for item in comparisons:
        change = item.change
        if change is None:
            continue
        noises = [n for n in (item.row.noise, item.before.noise) if n is not None]
        noise = 100 * max(noises, default=0.0)
        if -change > max(bar, noise):
            found.append(Regression(item, bar, noise))
    return found


def merge_saved(before: Sequence[Measurement], now: Sequence[Measurement]) -> tuple[list[Measurement], int, int]:
    """The rows a save writes: this run's timed rows, and the saved rows it did not measure.

    A ``-k`` subset, ``--collect-only`` or a run whose calls were not timed never removes a
    measured row from a saved run.

    :returns: the rows, how many come from this run, and how many were kept from before.
    """
    timed = [row for row in now if row.speedup is not None]
    measured = {row.key() for row in timed}
    kept = [row for row in before if row.key() not in measured]
    return [*kept, *timed], len(timed), len(kept)


@dataclasses.dataclass
class BenchSession:
    """What the plugin keeps for one pytest run, and what it does at the end of it.

    :ivar settings: the run's options.
    :ivar xdist_worker: this process is a pytest-xdist worker: it checks parity, does not time.
    :ivar xdist_controller: this process hands the tests to pytest-xdist workers.
    """

    settings: Settings
    xdist_worker: bool = False
    xdist_controller: bool = False
    rows: list[Measurement] = dataclasses.field(default_factory=list)
    baseline: list[Measurement] | None = None
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    regressions: list[Regression] = dataclasses.field(default_factory=list)
    #: a gate that could not check anything: the run fails, saying why
    unchecked_gates: list[str] = dataclasses.field(default_factory=list)
    notes: list[Line] = dataclasses.field(default_factory=list)
    #: calls run once, as written, unchecked: (reason, function) -> count
    left_alone: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)

    @property
    def timing(self) -> bool:
        """Whether calls in this process are timed."""
        return self.settings.enabled and not self.xdist_worker and not self.xdist_controller

    def add(self, row: Measurement) -> None:
        """Record a row (the fixture's sink)."""
        self.rows.append(row)

    def leave_alone(self, reason: str, function: str) -> None:
        """Count a call run once as written (excluded, or made through pytest-benchmark)."""
        self.left_alone[reason, function] += 1

    @property
    def failed(self) -> bool:
        """Whether a gate failed the run: a regression, or a gate that could not check."""
        return bool(self.regressions or self.unchecked_gates)

    def finish(self, root: Path) -> None:
        """Write the JSON, compare, apply the compare gate, save and plot (the controller's end of run).

        :param root: the pytest root directory (where ``.conc_bench/`` lives).
        """
        from . import storage

        settings = self.settings
        timed = any(row.speedup is not None for row in self.rows)
        if settings.json is not None:
            storage.write_json(settings.json, self._document(self.rows, root))
            self.notes.append((f"conc-bench: JSON written to {settings.json}", {}))
        if self.baseline is not None:
            self.comparisons = storage.compare_rows(self.rows, self.baseline)
            if settings.compare_fail is not None:
                self.regressions = find_regressions(self.comparisons, settings.compare_fail)
                if not self.comparisons:
                    self.unchecked_gates.append(
                        f"--conc-bench-compare-fail={settings.compare_fail:g} checked nothing: no timed row of this "
                        f"run matches a row of the saved run {settings.compare!r}"
                    )
        if settings.min_speedup is not None and not timed:
            self.unchecked_gates.append(
                f"--conc-bench-min-speedup={settings.min_speedup:g} checked nothing: no call was timed in this run"
            )
        if settings.save is not None:
            self._save(root, timed)
        if settings.plot is not None:
            from .plot import plot_speedups

            if timed:
                drawn = plot_speedups(self.rows, settings.plot)
                self.notes.append((f"conc-bench: plot of {drawn} series written to {settings.plot}", {}))
            else:
                self.notes.append((f"conc-bench: nothing timed, no plot written to {settings.plot}", {"yellow": True}))

    def _save(self, root: Path, timed: bool) -> None:
        from . import storage

        name = self.settings.save
        assert name is not None
        try:
            before = storage.load_saved(root, name)
        except FileNotFoundError:
            before = []
        except ValueError as error:
            self.notes.append((f"conc-bench: not saved: {error}; move it away to save as {name!r}", {"red": True}))
            return
        if not timed:
            self.notes.append(
                (f"conc-bench: nothing timed, so the saved run {name!r} was left as it was", {"yellow": True})
            )
            return
        rows, new, kept = merge_saved(before, self.rows)
        path = storage.save_run(root, name, self._document(rows, root))
        detail = f"{new} row(s) from this run" + (f", {kept} kept from before" if kept else "")
        self.notes.append((f"conc-bench: saved as {name!r} ({path}): {detail}", {}))

    def _document(self, rows: Sequence[Measurement], root: Path) -> Mapping[str, Any]:
        from . import storage

        return storage.document(rows, settings=self.settings.as_dict(), root=root)

    def display(self, write: Callable[..., None], width: int) -> None:
        """Write the conc-bench section of the terminal summary.

        :param write: the terminal reporter's ``write_line``.
        :param width: the terminal's width; the table and legend fit it.
        """
        lines: list[Line] = []
        if self.xdist_controller:
            warning = (
                "conc-bench: WARNING: timing is off under pytest-xdist (workers share the CPUs); parity was still "
                "checked. Run without -n to measure speedups."
            )
            lines.extend((text, {"yellow": True}) for text in wrap(warning, width))
        if not self.rows:
            nothing = (
                "no @parallel call was checked or timed"
                if self.left_alone
                else "the tests that ran made no @parallel call"
            )
            lines.append((f"conc-bench: {nothing}", {}))
        else:
            lines.extend(report_lines(self.rows, header=self._header(), timing=self.timing, width=width))
        for (reason, function), count in sorted(self.left_alone.items()):
            lines.extend(
                (text, {}) for text in wrap(f"conc-bench: left alone {count} call(s) of {function} ({reason})", width)
            )
        if self.baseline is not None and self.settings.compare is not None:
            lines.append(("", {}))
            lines.extend(
                comparison_lines(
                    self.comparisons,
                    baseline=self.settings.compare,
                    fail_percent=self.settings.compare_fail,
                    width=width,
                )
            )
        failures = [f"REGRESSION {regression.describe()}" for regression in self.regressions]
        failures += [f"GATE NOT CHECKED: {reason}" for reason in self.unchecked_gates]
        for failure in failures:
            lines.extend((text, {"red": True, "bold": True}) for text in wrap(f"conc-bench: {failure}", width))
        lines.extend(self.notes)  # paths, kept whole on their line
        for text, markup in lines:
            write(text, **markup)

    def _header(self) -> str:
        settings = self.settings
        cpus = self.rows[0].cpus if self.rows else "?"
        parts = [
            f"conc-bench: {cpus} usable CPUs",
            f"rounds={settings.rounds}",
            f"warmup={settings.warmup}",
            f"rtol={settings.rtol:g}",
            f"atol={settings.atol:g}",
        ]
        if settings.backends:
            parts.append("backends=" + ",".join(settings.backends))
        if settings.workers:
            parts.append("workers=" + ",".join(map(str, settings.workers)))
        if settings.min_speedup is not None:
            parts.append(f"min_speedup={settings.min_speedup:g}")
        parts.append("timer=perf_counter")
        return ", ".join(parts)
