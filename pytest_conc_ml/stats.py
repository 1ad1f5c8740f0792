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
        )

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stats:
        """Rebuild from :meth:`as_dict` output."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


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
        if self.parallel is None or self.parallel.median <= 0:
            return None
        return self.parallel.iqr / self.parallel.median

    def key(self) -> tuple[str, str, int, int | None]:
        """What identifies the row across runs (for ``--conc-bench-compare``)."""
        return (self.fullname, self.backend, self.workers, self.chunks)

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict, field names in the style of pytest-benchmark."""
        return {
            "name": self.name,
            "fullname": self.fullname,
            "test": self.test,
            "backend": self.backend,
            "workers": self.workers,
            "chunks": self.chunks,
            "cpus": self.cpus,
            "sequential": None if self.sequential is None else self.sequential.as_dict(),
            "parallel": None if self.parallel is None else self.parallel.as_dict(),
            "speedup": _finite_or_none(self.speedup),
            "efficiency": _finite_or_none(self.efficiency),
            "serial_fraction": _finite_or_none(self.serial_fraction),
            "ideal": self.ideal,
            "sweep": self.sweep,
            "parity": self.parity.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Rebuild a row from :meth:`as_dict` output (a saved run, an xdist worker's rows)."""
        return cls(
            name=data["name"],
            fullname=data["fullname"],
            test=data.get("test", data["name"]),
            backend=data["backend"],
            workers=data["workers"],
            chunks=data["chunks"],
            cpus=data["cpus"],
            sequential=None if data["sequential"] is None else Stats.from_dict(data["sequential"]),
            parallel=None if data["parallel"] is None else Stats.from_dict(data["parallel"]),
            parity=Parity(**data["parity"]),
            sweep=bool(data.get("sweep", False)),
        )


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no infinity; a zero-time parallel run is reported as unknown.
    return value if value is not None and math.isfinite(value) else None
