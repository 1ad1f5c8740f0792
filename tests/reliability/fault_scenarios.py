"""Fault scenarios, each run in its own Python process by the reliability tests.

A crash, a Ctrl-C or a thousand calls can take a process down or leave it dirty: run
here, they cannot harm pytest. Usage: ``python fault_scenarios.py NAME [ARG ...]``. A
scenario prints one JSON line starting with ``RESULT`` that the test reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from census import settled_census, take_census, workers_of

from conc_ml import ChunkTimeoutError, WorkerCrashedError, io_bound, parallel

#: a broadcast array large enough to go through shared memory on the process backend
LARGE_BYTES = 2 << 20


def report(**fields: Any) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def shut_down_loky() -> None:
    from conc_ml.backends._process._backend import shut_down_pool

    shut_down_pool()


# -- user functions ----------------------------------------------------------------------

CRASHING_ITEM = 5


def crash_on_item(items: list[int], how: str) -> int:
    if CRASHING_ITEM in items:
        if how == "exit":
            os._exit(7)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
    return sum(items)


def run_until_interrupted(items: list[int], weights: np.ndarray, marker: str) -> int:
    with open(marker, "a") as file:
        file.write(f"{os.getpid()}\n")
    # A loop of short waits, as a training loop of short steps: the Python code between
    # them is where a thread can be interrupted.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return sum(items) + int(weights[0])


async def await_until_cancelled(items: list[int], weights: np.ndarray, marker: str) -> int:
    import anyio

    with open(marker, "a") as file:
        file.write(f"{os.getpid()}\n")
    await anyio.sleep(60)
    return sum(items) + int(weights[0])


def weighted_sum(items: list[int], weights: np.ndarray) -> float:
    return float(sum(weights[i % len(weights)] for i in items))


# -- scenarios ---------------------------------------------------------------------------


def scenario_crash(*hows: str) -> None:
    """For each way to die, a worker dies on one chunk: report the error and whether the next call works."""
    func = parallel(backend="process", workers=2, chunks=4)(crash_on_item)
    items = list(range(8))
    outcomes = {}
    for how in hows:
        try:
            func(items, how)
        except WorkerCrashedError as error:
            outcome: dict[str, Any] = {
                "type": type(error).__name__,
                "is_runtime_error": isinstance(error, RuntimeError),
                "chunk": error.chunk,
                "exitcode": error.exitcode,
                "message": str(error),
                "notes": getattr(error, "__notes__", []),
            }
        else:
            outcome = {"type": None}
        outcome["next_call"] = func(items, "none")
        outcomes[how] = outcome
    report(**outcomes)


def fetch_until_interrupted(item: int, marker: str) -> int:
    return run_until_interrupted([item], np.zeros(1), marker)


async def afetch_until_cancelled(item: int, marker: str) -> int:
    return await await_until_cancelled([item], np.zeros(1), marker)


def scenario_interrupt(backend: str, marker: str) -> None:
    """A call that runs until Ctrl-C; the test sends it and watches the process end."""
    weights = np.ones(LARGE_BYTES // 8)
    if backend == "io-bound-threads":
        io_bound(concurrency=2)(fetch_until_interrupted).map(range(8), marker)
    elif backend == "io-bound-async":
        import anyio

        anyio.run(io_bound(concurrency=2)(afetch_until_cancelled).map, range(8), marker)
    elif backend == "async-coroutine":
        import anyio

        func: Callable[..., Any] = parallel(backend="async", workers=2, chunks=4)(await_until_cancelled)
        anyio.run(func, list(range(8)), weights, marker)
    else:
        parallel(backend=backend, workers=2, chunks=4)(run_until_interrupted)(list(range(8)), weights, marker)
    report(finished=True)  # never reached: the test fails if it is


def scenario_repeated_calls(calls: str, *backends: str) -> None:
    """Per backend, many calls with a large broadcast array; report what the process holds more after."""
    weights = np.arange(LARGE_BYTES // 8, dtype=np.float64)
    outcomes = {}
    for backend in backends:
        func = parallel(backend=backend, workers=2, chunks=2)(weighted_sum)
        func([1, 2], weights)  # warm up: pools, imports, the resource tracker
        before = take_census()
        results = {tuple(func([1, 2, 3, 4], weights)) for _ in range(int(calls))}
        after = settled_census(before)
        outcomes[backend] = {"results": sorted(results), "leaked": after.leaked_since(before)}
    report(**outcomes)


def scenario_timeout_kills_workers() -> None:
    """A stuck chunk times out; report whether the workers that ran it are gone."""
    import psutil

    func = parallel(backend="process", workers=2, chunks=2, timeout=1)(run_until_interrupted)
    weights = np.ones(4)
    parallel(backend="process", workers=2, chunks=2)(weighted_sum)([1, 2], weights)  # warm pool
    workers = workers_of(psutil.Process())
    folder = tempfile.mkdtemp()
    marker = os.path.join(folder, "started")
    try:
        func([1, 2], weights, marker)
    except ChunkTimeoutError as error:
        caught = {"type": type(error).__name__, "is_timeout_error": isinstance(error, TimeoutError)}
    else:
        caught = {"type": None}
    _, alive = psutil.wait_procs(workers, timeout=5)
    started = []
    if os.path.exists(marker):
        with open(marker) as file:
            started = [int(pid) for pid in file.read().split()]
    shutil.rmtree(folder)
    still_running = [pid for pid in started if psutil.pid_exists(pid)]
    next_call = parallel(backend="process", workers=2, chunks=2)(weighted_sum)([1, 2], weights)
    report(**caught, alive=[p.pid for p in alive], started=started, still_running=still_running, next_call=next_call)


def sleep_then_sum(items: list[int], ballast: bytes, seconds: float) -> int:
    time.sleep(seconds)
    return sum(items) + len(ballast)


def die_with_ballast(items: list[int], ballast: bytes) -> int:
    os._exit(3)


def scenario_faults_leave_nothing(rounds: str) -> None:
    """Timeouts, crashes and Ctrl-C with large tasks in flight; report what is held more after."""
    # bytes, not an array: it is pickled into every task, larger than a pipe's buffer.
    ballast = bytes(4 << 20)
    slow = parallel(backend="process", workers=2, chunks=4, timeout=0.5)(sleep_then_sum)
    dying = parallel(backend="process", workers=2, chunks=4)(die_with_ballast)
    parallel(backend="process", workers=2, chunks=2)(weighted_sum)([1, 2], np.ones(4))  # warm up
    shut_down_loky()
    before = take_census()
    errors = []
    for _ in range(int(rounds)):
        for call, expected in (
            (lambda: slow(list(range(8)), ballast, 5.0), ChunkTimeoutError),
            (lambda: dying(list(range(8)), ballast), WorkerCrashedError),
        ):
            try:
                call()
            except expected:
                pass
            except BaseException as error:
                errors.append(repr(error))
        for backend in ("process", "thread"):
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            func = parallel(backend=backend, workers=2, chunks=4)(sleep_then_sum)
            try:
                timer.start()
                func(list(range(8)), ballast, 2.0)
            except KeyboardInterrupt:
                pass
            finally:
                timer.cancel()
                timer.join()
    after = settled_census(before, settle=shut_down_loky)
    report(errors=errors, leaked=after.leaked_since(before))


def sum_rows_or_die(items: list[int], weights: np.ndarray, how: str) -> float:
    if how == "die" and 3 in items:
        os._exit(3)
    if how == "hang":
        time.sleep(5)
    return float(weights[items].sum())


def scenario_small_dev_shm() -> None:
    """/dev/shm too small: calls, a crash and a timeout go through the temporary folder."""
    import warnings

    from conc_ml.backends._process import _shared_memory

    # As if /dev/shm held 64 MiB and all of it were needed: every segment falls back.
    _shared_memory.SHM_HEADROOM = 1 << 62
    weights = np.arange(LARGE_BYTES // 8, dtype=np.float64)
    func = parallel(backend="process", workers=2, chunks=2)(sum_rows_or_die)
    outcomes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        func([1], weights, "ok")  # warm up
        before = take_census()
        for _ in range(20):
            outcomes.append(func([1, 2, 3, 4], weights, "ok"))
        for how, error_type in (("die", WorkerCrashedError), ("hang", ChunkTimeoutError)):
            try:
                func.options(timeout=0.5)([1, 2, 3, 4], weights, how)
            except error_type:
                outcomes.append(how)
        outcomes.append(func([1, 2, 3, 4], weights, "ok"))
    after = settled_census(before, settle=shut_down_loky)
    report(
        outcomes=outcomes,
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
        leaked=after.leaked_since(before),
    )


def arrays_then_fault(items: list[int], inputs: dict[str, Any], how: str) -> np.ndarray:
    table = inputs["tables"][0]
    if how == "die" and 3 in items:
        os._exit(3)
    if how == "hang" and 3 in items:
        time.sleep(30)
    if how == "raise" and 3 in items:
        raise ValueError("bad item")
    # a result large enough to come back through shared memory
    return np.full(LARGE_BYTES // 8, float(table[items].sum()))


def scenario_arrays_in_faults() -> None:
    """Arrays in containers and closures, large results, and every way a call can fail: nothing is left."""
    import gc

    tables = {"tables": [np.arange(LARGE_BYTES // 8, dtype=np.float64)]}
    captured = [np.ones(LARGE_BYTES // 8)]

    def with_closure(items: list[int], inputs: dict[str, Any], how: str) -> np.ndarray:
        return arrays_then_fault(items, inputs, how) + captured[0][0]

    func = parallel(backend="process", workers=2, chunks=4, timeout=5)(with_closure)
    func([1], tables, "ok")  # warm up: pool, resource tracker
    shut_down_loky()
    before = take_census()
    outcomes = []
    for how, expected in (
        ("ok", None),
        ("raise", ValueError),
        ("die", WorkerCrashedError),
        ("hang", ChunkTimeoutError),
        ("interrupt", KeyboardInterrupt),
        ("ok", None),
    ):
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)) if how == "interrupt" else None
        try:
            if timer is not None:
                timer.start()
            result = func(list(range(8)), tables, "hang" if how == "interrupt" else how)
            outcomes.append([float(part[0]) for part in result])
        except BaseException as error:
            expected_error = expected is not None and isinstance(error, expected)
            outcomes.append(type(error).__name__ if expected_error else repr(error))
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
    kept = [name for name in take_census().segments if name.startswith("conc-ml-")]
    captured.clear()
    del tables, func, result
    gc.collect()
    after = settled_census(before, settle=shut_down_loky)
    left = [name for name in after.segments if name.startswith("conc-ml-")]
    report(outcomes=outcomes, kept_while_alive=len(kept), left_after_gc=left, leaked=after.leaked_since(before))


SCENARIOS: dict[str, Callable[..., None]] = {
    "arrays-in-faults": scenario_arrays_in_faults,
    "small-dev-shm": scenario_small_dev_shm,
    "faults-leave-nothing": scenario_faults_leave_nothing,
    "crash": scenario_crash,
    "interrupt": scenario_interrupt,
    "repeated-calls": scenario_repeated_calls,
    "timeout-kills-workers": scenario_timeout_kills_workers,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
