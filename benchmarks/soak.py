"""Soak test: mixed workloads with injected faults, for minutes, then a report of what leaked.

Not run in CI. Usage, from the repository root::

    python -m benchmarks.soak --minutes 10
    python -m benchmarks.soak --seconds 30 --json soak.json

Each round picks a workload at random (seeded): plain calls on every backend with a
large broadcast array, a worker that dies (``os._exit``, SIGKILL), a timeout, a user
exception, an argument that cannot be pickled, a ``.stream`` left early, and Ctrl-C
(SIGINT sent to this process) in the middle of a call. Every round checks its outcome:
the right result, or the right error type, within a bound. At the end the process pool
is shut down and a census of file descriptors, threads, child processes, ``/dev/shm``
segments and temporary files is compared with the one taken at the start. The exit
status is 0 when nothing was lost and nothing leaked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from conc_ml import ChunkTimeoutError, SerializationError, WorkerCrashedError, parallel
from tests.reliability.census import settled_census, take_census

#: a broadcast array large enough for the process backend's shared memory
WEIGHTS = np.arange((2 << 20) // 8, dtype=np.float64)
ITEMS = list(range(16))
#: pickled into every task of the faulty rounds: more than a pipe holds, as a big list or frame would be
BALLAST = bytes(4 << 20)
BACKENDS = ("sequential", "thread", "process", "async")
#: a call that has not ended after this long counts as hung
HANG_AFTER = 30.0


class SoakFailure(AssertionError):
    """A round ended with the wrong result or the wrong error."""


# -- user functions ----------------------------------------------------------------------


def weighted_sum(items: list[int], weights: np.ndarray) -> float:
    return float(weights[items].sum())


def die_on_item(items: list[int], weights: np.ndarray, how: str, ballast: bytes = b"") -> float:
    if 7 in items:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return float(weights[items].sum())


def busy_for(items: list[int], weights: np.ndarray, seconds: float, ballast: bytes = b"") -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return float(weights[items].sum())


class UserError(Exception):
    pass


def raise_on_item(items: list[int], weights: np.ndarray) -> float:
    if 7 in items:
        raise UserError(f"bad item in {items}")
    return float(weights[items].sum())


# -- workloads -----------------------------------------------------------------------------


def _expected(chunks: int) -> list[float]:
    bounds = np.linspace(0, len(ITEMS), chunks + 1).astype(int)
    return [float(WEIGHTS[ITEMS[a:b]].sum()) for a, b in itertools.pairwise(bounds)]


def _expect_error(error_type: type[BaseException], call: Callable[[], Any]) -> None:
    try:
        call()
    except error_type:
        return
    except BaseException as other:
        raise SoakFailure(f"expected {error_type.__name__}, got {type(other).__name__}: {other}") from other
    raise SoakFailure(f"expected {error_type.__name__}, the call returned")


def plain_call(backend: str) -> Callable[[], None]:
    def run() -> None:
        result = parallel(backend=backend, workers=2, chunks=4)(weighted_sum)(ITEMS, WEIGHTS)
        if result != _expected(4):
            raise SoakFailure(f"wrong result on {backend}: {result}")

    return run


def worker_dies(how: str) -> Callable[[], None]:
    def run() -> None:
        func = parallel(backend="process", workers=2, chunks=4)(die_on_item)
        _expect_error(WorkerCrashedError, lambda: func(ITEMS, WEIGHTS, how, BALLAST))

    return run


def times_out(backend: str) -> Callable[[], None]:
    def run() -> None:
        func = parallel(backend=backend, workers=2, chunks=4, timeout=0.3)(busy_for)
        _expect_error(ChunkTimeoutError, lambda: func(ITEMS, WEIGHTS, 1.0, BALLAST))

    return run


def user_error(backend: str) -> Callable[[], None]:
    def run() -> None:
        func = parallel(backend=backend, workers=2, chunks=4)(raise_on_item)
        _expect_error(UserError, lambda: func(ITEMS, WEIGHTS))

    return run


def unpicklable_argument() -> None:
    func = parallel(backend="process", workers=2, chunks=2)(weighted_sum)
    _expect_error(SerializationError, lambda: func(ITEMS, threading.Lock()))  # type: ignore[arg-type]


def stream_left_early(backend: str) -> Callable[[], None]:
    def run() -> None:
        func = parallel(backend=backend, workers=2, chunks=8)(weighted_sum)
        for _ in func.stream(ITEMS, WEIGHTS):
            break

    return run


def interrupted(backend: str) -> Callable[[], None]:
    def run() -> None:
        func = parallel(backend=backend, workers=2, chunks=4)(busy_for)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            func(ITEMS, WEIGHTS, 3.0, BALLAST)
        except KeyboardInterrupt:
            return
        finally:
            timer.cancel()
            timer.join()
        raise SoakFailure(f"Ctrl-C during a call on {backend} did not raise KeyboardInterrupt")

    return run


def workloads() -> dict[str, tuple[int, Callable[[], None]]]:
    """Every workload by name, with its weight in the random draw."""
    table: dict[str, tuple[int, Callable[[], None]]] = {}
    for backend in BACKENDS:
        table[f"call/{backend}"] = (6, plain_call(backend))
        table[f"user-error/{backend}"] = (1, user_error(backend))
        table[f"stream-left-early/{backend}"] = (1, stream_left_early(backend))
    for backend in ("process", "thread", "sequential"):
        table[f"timeout/{backend}"] = (1, times_out(backend))
    for backend in ("process", "thread", "async", "sequential"):
        table[f"ctrl-c/{backend}"] = (1, interrupted(backend))
    table["crash/os._exit"] = (1, worker_dies("exit"))
    table["crash/SIGKILL"] = (1, worker_dies("sigkill"))
    table["unpicklable-argument"] = (1, unpicklable_argument)
    return table


# -- the loop --------------------------------------------------------------------------------


@dataclasses.dataclass
class WorkloadStats:
    rounds: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)


def _shut_down_process_pool() -> None:
    from conc_ml.backends._process._backend import shut_down_pool

    shut_down_pool()


def _census_counts() -> dict[str, int]:
    census = take_census()
    return {
        "fds": len(census.fds),
        "threads": len(census.threads),
        "children": len(census.children),
        "segments": len(census.segments),
    }


def soak(seconds: float, seed: int) -> dict[str, Any]:
    """Run random workloads for ``seconds`` and return the report."""
    table = workloads()
    names = sorted(table)
    weights = [table[name][0] for name in names]
    chooser = random.Random(seed)
    plain_call("process")()  # warm up: the pool, the resource tracker, imports
    _shut_down_process_pool()
    before = take_census()
    stats = {name: WorkloadStats() for name in names}
    samples = [{"at": 0.0, **_census_counts()}]
    start = time.monotonic()
    next_sample = start + 30
    while time.monotonic() - start < seconds:
        name = chooser.choices(names, weights)[0]
        began = time.monotonic()
        try:
            table[name][1]()
        except SoakFailure as failure:
            stats[name].failures.append(str(failure))
        except BaseException as error:  # the soak reports every surprise, including a stray Ctrl-C
            stats[name].failures.append(f"unexpected {type(error).__name__}: {error}")
        elapsed = time.monotonic() - began
        if elapsed > HANG_AFTER:
            stats[name].failures.append(f"took {elapsed:.1f} s")
        stats[name].rounds += 1
        stats[name].seconds.append(elapsed)
        if time.monotonic() >= next_sample:
            samples.append({"at": round(time.monotonic() - start, 1), **_census_counts()})
            next_sample += 30
    after = settled_census(before, settle=_shut_down_process_pool)
    leaked = after.leaked_since(before)
    return {
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
        "rounds": sum(s.rounds for s in stats.values()),
        "workloads": {
            name: {
                "rounds": s.rounds,
                "failures": s.failures,
                "median_s": round(statistics.median(s.seconds), 3) if s.seconds else None,
                "max_s": round(max(s.seconds), 3) if s.seconds else None,
            }
            for name, s in stats.items()
        },
        "census_samples": samples,
        "leaked": leaked,
        "ok": not leaked and not any(s.failures for s in stats.values()),
    }


def _print_report(report: dict[str, Any]) -> None:
    print(f"soak: {report['rounds']} rounds in {report['seconds']} s (seed {report['seed']})")
    print(f"{'workload':<32} {'rounds':>6} {'failed':>6} {'median s':>9} {'max s':>7}")
    for name, row in report["workloads"].items():
        print(f"{name:<32} {row['rounds']:>6} {len(row['failures']):>6} {row['median_s']!s:>9} {row['max_s']!s:>7}")
        for failure in row["failures"][:3]:
            print(f"    {failure}")
    first, last = report["census_samples"][0], report["census_samples"][-1]
    print(f"census at start: {first}; last sample: {last}")
    print("leaked: " + (json.dumps(report["leaked"]) if report["leaked"] else "nothing"))
    print("OK" if report["ok"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, soak, print the report; 0 when nothing was lost or leaked."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="how long to soak (default 5)")
    length.add_argument("--seconds", type=float, default=None, help="how long to soak, in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of workloads")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 5)
    if seconds <= 0:
        parser.error("the soak needs a positive duration")
    report = soak(seconds, args.seed)
    _print_report(report)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
