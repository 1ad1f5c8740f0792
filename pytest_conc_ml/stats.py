"""Timing statistics and the figures derived from them: speedup, efficiency, serial fraction."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Measurement", "Parity", "Stats", "karp_flatt"]


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Summary of the wall-clock times (seconds) of one side of a benchmark."""

    min: float
    max: float
    mean: float
    median: float
    stddev: float
    iqr: float
    rounds: int
    #: the raw times, in the order they were measured (kept for offline comparison)
    data: tuple[float, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @classmethod
    def from_times(cls, times: Sequence[float]) -> Stats:
        """Summarise ``times``.

        :param times: one duration in seconds per round.
        :raises ValueError: if ``times`` is empty.
        """
        if not times:
            raise ValueError("Stats need at least one round")
        ordered = sorted(times)
        if len(ordered) >= 2:
            # "inclusive" interpolates between observations, the usual choice for small samples.
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
            stddev = statistics.stdev(ordered)
        else:
            q1 = q3 = ordered[0]
            stddev = 0.0
        return cls(
            min=ordered[0],
            max=ordered[-1],
            mean=statistics.fmean(ordered),
            median=statistics.median(ordered),
            stddev=stddev,
            iqr=q3 - q1,
            rounds=len(ordered),
            data=tuple(times),
        )

    @property
    def relative_spread(self) -> float | None:
        """Interquartile range over median, ``None`` for a zero median."""
        return None if self.median <= 0 else self.iqr / self.median

    def as_dict(self) -> dict[str, float | int]:
        """The summary fields as a JSON-ready dict (the raw times are in :meth:`benchmark_stats`)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "data"}

    def benchmark_stats(self) -> dict[str, Any]:
        """The ``stats`` entry of a pytest-benchmark JSON file: its field names, and the raw times as ``data``."""
        ordered = sorted(self.data) if self.data else [self.median]
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        iqr_outliers = sum(1 for t in ordered if t < low or t > high)
        stddev_outliers = sum(1 for t in ordered if abs(t - self.mean) > self.stddev)
        return {
            **self.as_dict(),
            "q1": q1,
            "q3": q3,
            "iqr_outliers": iqr_outliers,
            "stddev_outliers": stddev_outliers,
            "outliers": f"{stddev_outliers};{iqr_outliers}",
            "ld15iqr": min((t for t in ordered if t >= low), default=ordered[0]),
            "hd15iqr": max((t for t in ordered if t <= high), default=ordered[-1]),
            "ops": 1 / self.mean if self.mean > 0 else 0.0,
            "total": math.fsum(ordered),
            "iterations": 1,
            "data": list(self.data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], times: Sequence[float] = ()) -> Stats:
        """Rebuild from :meth:`as_dict` output, with the raw ``times`` if they were kept."""
        names = [field.name for field in dataclasses.fields(cls) if field.name != "data"]
        return cls(**{name: data[name] for name in names}, data=tuple(times))


@dataclasses.dataclass(frozen=True, slots=True)
class Parity:
    """How the parallel results compared with the sequential ones.

    :ivar ok: ``True`` if every round matched, ``False`` if one did not, ``None`` if not checked.
    :ivar max_difference: the largest absolute difference seen between numeric leaves,
        or ``None`` when the results hold nothing numeric to subtract.
    """

    ok: bool | None
    rtol: float
    atol: float
    max_difference: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def karp_flatt(speedup: float, processors: int) -> float | None:
    """The Karp-Flatt experimentally determined serial fraction.

    ``e = (1/S - 1/p) / (1 - 1/p)``: near 0 when the code scales, near 1 when it does not.

    :param speedup: measured speedup ``S``.
    :param processors: the parallelism ``p`` the run could use.
    :returns: ``None`` when ``p < 2`` or ``S`` is not positive (the formula is undefined).
    """
    if processors < 2 or not speedup > 0 or not math.isfinite(speedup):
        return None
    return (1 / speedup - 1 / processors) / (1 - 1 / processors)


@dataclasses.dataclass(slots=True)
class Measurement:
    """One row of the report: a function called by a test, under one configuration.

    :ivar name: the function's qualified name, or the ``name=`` given to the fixture.
    :ivar fullname: test node id and name, unique within a run.
    :ivar test: the test's name (for the terminal table).
    :ivar backend: backend of the parallel run.
    :ivar workers: pool size of the parallel run.
    :ivar chunks: number of chunks, or ``None`` if the input was not sized.
    :ivar cpus: usable CPUs when measured.
    :ivar sequential: timings of ``.sequential``, ``None`` when timing was off.
    :ivar parallel: timings of the parallel run, ``None`` when timing was off.
    """

    name: str
    fullname: str
    test: str
    backend: str
    workers: int
    chunks: int | None
    cpus: int
    sequential: Stats | None
    parallel: Stats | None
    parity: Parity
    #: the configuration is part of a worker-count sweep (the report then shows the serial fraction)
    sweep: bool = False
    #: the test's node id (the name's prefix in ``fullname``)
    nodeid: str = ""
    #: which call of ``name`` in the test this row measures: 1, 2, ... (``#2`` in the report)
    call: int = 1
    #: where the test made the call, ``path:line``; one row per site for hypothesis tests
    site: str = ""
    #: calls measured into this row (hypothesis examples of one call site), at least 1
    calls: int = 1
    #: the call changed the arguments it was given (in place); they end as the call left them
    changed_arguments: bool = False
    #: why the call was run once, unchecked (parity ``None``), when it was not an iterator passed whole
    note: str = ""

    def __post_init__(self) -> None:
        if not self.nodeid:
            self.nodeid = self.fullname.rpartition("::")[0] or self.fullname

    @property
    def ideal(self) -> int:
        """The best speedup the configuration allows: ``min(workers, chunks, CPUs)``."""
        if self.backend == "sequential":
            return 1
        limits = [self.workers, self.cpus] + ([self.chunks] if self.chunks is not None else [])
        return max(1, min(limits))

    @property
    def speedup(self) -> float | None:
        """Median sequential time over median parallel time."""
        if self.sequential is None or self.parallel is None:
            return None
        if self.parallel.median <= 0:
            return math.inf
        return self.sequential.median / self.parallel.median

    @property
    def efficiency(self) -> float | None:
        """Speedup over the ideal speedup."""
        speedup = self.speedup
        return None if speedup is None else speedup / self.ideal

    @property
    def serial_fraction(self) -> float | None:
        """Karp-Flatt serial fraction of this configuration."""
        speedup = self.speedup
        return None if speedup is None else karp_flatt(speedup, self.ideal)

    @property
    def spread(self) -> float | None:
        """Interquartile range of the parallel times relative to their median."""
        return None if self.parallel is None else self.parallel.relative_spread

    @property
    def sequential_spread(self) -> float | None:
        """Interquartile range of the sequential times relative to their median."""
        return None if self.sequential is None else self.sequential.relative_spread

    @property
    def noise(self) -> float | None:
        """The relative uncertainty of the speedup: the two sides' relative spreads added.

        A ratio of two medians moves by up to the sum of their relative spreads when both
        move against each other, so a change of speedup smaller than this is noise.
        """
        sides = (self.sequential_spread, self.spread)
        if sides[0] is None or sides[1] is None:
            return None
        return sides[0] + sides[1]

    def key(self) -> tuple[str, str, int, int | None]:
        """What identifies the row across runs (for ``--conc-bench-compare``)."""
        return (self.fullname, self.backend, self.workers, self.chunks)

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict.

        For a timed row, also the fields pytest-benchmark's ``compare`` reads: ``group``,
        ``name``, ``fullname``, ``param(s)``, ``options`` and ``stats`` (of the parallel run,
        with its raw times as ``data``); ``extra_info`` holds the sequential side and the
        derived figures. The raw times of both sides are in ``times``.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "fullname": self.fullname,
            "nodeid": self.nodeid,
            "test": self.test,
            "call": self.call,
            "site": self.site,
            "calls": self.calls,
            "backend": self.backend,
            "workers": self.workers,
            "chunks": self.chunks,
            "cpus": self.cpus,
            "sequential": None if self.sequential is None else self.sequential.as_dict(),
            "parallel": None if self.parallel is None else self.parallel.as_dict(),
            "times": {
                "sequential": [] if self.sequential is None else list(self.sequential.data),
                "parallel": [] if self.parallel is None else list(self.parallel.data),
            },
            "speedup": _finite_or_none(self.speedup),
            "efficiency": _finite_or_none(self.efficiency),
            "serial_fraction": _finite_or_none(self.serial_fraction),
            "ideal": self.ideal,
            "sweep": self.sweep,
            "changed_arguments": self.changed_arguments,
            "note": self.note,
            "parity": self.parity.as_dict(),
        }
        if self.sequential is not None and self.parallel is not None:
            chunks = "?" if self.chunks is None else self.chunks
            data.update(
                group=self.fullname,
                param=f"{self.backend}-{self.workers}-{chunks}",
                params={"backend": self.backend, "workers": self.workers, "chunks": self.chunks},
                options={"timer": "perf_counter", "side": "parallel", "min_rounds": self.parallel.rounds},
                stats=self.parallel.benchmark_stats(),
                extra_info={
                    "sequential": self.sequential.benchmark_stats(),
                    "speedup": data["speedup"],
                    "efficiency": data["efficiency"],
                    "parity": data["parity"],
                },
            )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Rebuild a row from :meth:`as_dict` output (a saved run, an xdist worker's rows)."""
        times = data.get("times") or {}

        def side(key: str) -> Stats | None:
            return None if data[key] is None else Stats.from_dict(data[key], times.get(key, ()))

        return cls(
            name=data["name"],
            fullname=data["fullname"],
            test=data.get("test", data["name"]),
            backend=data["backend"],
            workers=data["workers"],
            chunks=data["chunks"],
            cpus=data["cpus"],
            sequential=side("sequential"),
            parallel=side("parallel"),
            parity=Parity(**data["parity"]),
            sweep=bool(data.get("sweep", False)),
            nodeid=data.get("nodeid", ""),
            call=int(data.get("call", 1)),
            site=data.get("site", ""),
            calls=int(data.get("calls", 1)),
            changed_arguments=bool(data.get("changed_arguments", False)),
            note=str(data.get("note", "")),
        )


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no infinity; a zero-time parallel run is reported as unknown.
    return value if value is not None and math.isfinite(value) else None
