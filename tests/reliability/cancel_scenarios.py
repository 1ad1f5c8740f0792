"""Ctrl-C and cancellation scenarios, each run in its own Python process by ``test_fault_cancel.py``.

Usage: ``python cancel_scenarios.py NAME MARKER [ARG ...]``. A scenario writes to the
``MARKER`` file once its calls are blocked (the test then sends SIGINT), and prints one
JSON line starting with ``RESULT`` when it has something to report. Calls block in C where
the promise is hardest to keep: ``socket.recv`` on a socket whose peer never writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from conc_ml import io_bound, parallel

#: kept open for the life of the process: a ``recv`` on their other ends never returns
_SILENT_PEERS: list[socket.socket] = []


def report(**fields: Any) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def mark(marker: str, text: str = "") -> None:
    with open(marker, "a") as file:
        file.write(f"{os.getpid()} {text}\n")


def _marked_lines(marker: str) -> int:
    if not os.path.exists(marker):
        return 0
    with open(marker) as file:
        return len(file.read().splitlines())


def receive_forever(marker: str) -> bytes:
    """Block in ``socket.recv`` for ever (in C: no Python instruction runs until it returns)."""
    ours, theirs = socket.socketpair()
    _SILENT_PEERS.append(theirs)
    mark(marker, "recv")
    return ours.recv(1)


def fetch_forever(item: int, marker: str) -> bytes:
    return receive_forever(marker)


def chunk_forever(items: list[int], marker: str) -> bytes:
    return receive_forever(marker)


def chunk_sleeping(items: list[int], marker: str, seconds: float) -> list[int]:
    mark(marker, f"chunk {items[0]}")
    time.sleep(seconds)
    return items


def _run_async(library: str, func: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return anyio.run(func, *args, backend=library)


# -- scenarios ---------------------------------------------------------------------------


def scenario_io_bound_recv(marker: str, how: str) -> None:
    """@io_bound calls blocked in recv until Ctrl-C: sync map, amap, and an async map on trio."""
    fetch = io_bound(concurrency=2)(fetch_forever)
    if how == "map":
        fetch.map(range(4), marker)
    elif how == "plain-timeout":
        io_bound(timeout=60)(fetch_forever)(0, marker)
    elif how.startswith("amap-"):
        _run_async(how.removeprefix("amap-"), fetch.amap, range(4), marker)
    elif how.startswith("async-map-"):
        import anyio

        @io_bound(concurrency=2)
        async def wait_forever(item: int) -> None:
            mark(marker, "async")
            await anyio.sleep_forever()

        _run_async(how.removeprefix("async-map-"), wait_forever.map, range(4))
    report(finished=True)  # never reached: the test fails if it is


def scenario_thread_backend_recv(marker: str) -> None:
    """A thread-backend chunk blocked in recv until Ctrl-C."""
    parallel(backend="thread", workers=2, chunks=2)(chunk_forever)([1, 2], marker)
    report(finished=True)


def scenario_stream_body(marker: str, backend: str) -> None:
    """The first chunk is quick; the others take a minute; the consumer sits in its loop body."""
    func = parallel(backend=backend, workers=2, chunks=3)(chunk_sleeping_first_quick)
    for _ in func.stream([0, 1, 2], marker):
        mark(marker, "consumer in loop body")
        time.sleep(60)
    report(finished=True)


def chunk_sleeping_first_quick(items: list[int], marker: str) -> list[int]:
    mark(marker, f"chunk {items[0]}")
    time.sleep(0 if items[0] == 0 else 60)
    return items


async def achunk_sleeping_first_quick(items: list[int], marker: str) -> list[int]:
    import anyio

    mark(marker, f"chunk {items[0]}")
    await anyio.sleep(0 if items[0] == 0 else 60)
    return items


def scenario_async_stream_body(marker: str, library: str) -> None:
    """``async for`` over an ``async def``'s stream on the process backend; Ctrl-C in the loop body."""
    import anyio

    func = parallel(backend="process", workers=2, chunks=3)(achunk_sleeping_first_quick)

    async def main() -> None:
        async for _ in func.stream([0, 1, 2], marker):
            mark(marker, "consumer in loop body")
            await anyio.sleep(60)

    anyio.run(main, backend=library)
    report(finished=True)


def scenario_io_bound_map_timeout(marker: str) -> None:
    """Calls stuck in recv for ever, ``timeout=0.3``: map must come back with TimeoutErrors."""
    fetch = io_bound(concurrency=2, timeout=0.3)(fetch_forever)
    begin = time.monotonic()
    results = fetch.map(range(5), marker, return_exceptions=True)
    report(
        elapsed=time.monotonic() - begin,
        results=[type(result).__name__ for result in results],
        messages=[str(result) for result in results],
    )


def scenario_break_from_stream(marker: str, backend: str) -> None:
    """``break`` after the first chunk: report which chunks ever started, a moment later."""
    func = parallel(backend=backend, workers=2, chunks=8)(chunk_sleeping)
    func([100, 101], marker, 0.0)  # warm up the pool, so that every chunk is queued at once
    os.remove(marker)
    for _ in func.stream(list(range(8)), marker, 1.0):
        break
    begin = time.monotonic()
    func([200, 201], marker, 0.0)  # the next call
    next_call = time.monotonic() - begin
    time.sleep(2.5)  # longer than any queued chunk would take to start and run
    with open(marker) as file:
        started = sorted(int(line.split()[2]) for line in file if "chunk" in line)
    report(started=started, next_call=next_call)


async def achunk_sleeping(items: list[int], marker: str, seconds: float) -> list[int]:
    import anyio

    mark(marker, f"chunk {items[0]}")
    await anyio.sleep(seconds)
    return items


def scenario_await_until_ctrl_c(marker: str, library: str) -> None:
    """``anyio.run(f, ...)`` of an ``async def`` on the process backend, chunks asleep until Ctrl-C.

    On trio, Ctrl-C reaches the awaiting task as ``KeyboardInterrupt``, not as a
    cancellation: the call must stop its chunks all the same.
    """
    import anyio

    func = parallel(backend="process", workers=2, chunks=2)(achunk_sleeping)
    anyio.run(func, [0, 1], marker, 60.0, backend=library)
    report(finished=True)  # never reached: the test fails if it is


def scenario_cancel_await(marker: str) -> None:
    """``await f()`` of an ``async def`` on the process backend, cancelled after its chunks started."""
    import anyio
    import psutil

    func = parallel(backend="process", workers=2, chunks=2)(achunk_sleeping)

    async def main() -> dict[str, Any]:
        with anyio.move_on_after(60) as never:
            await func([10, 11], marker, 0.0)  # warm pool
        os.remove(marker)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(func, [0, 1], marker, 60.0)
                while _marked_lines(marker) < 2:
                    await anyio.sleep(0.02)
                scope.cancel()
        with open(marker) as file:
            started = [int(line.split()[0]) for line in file]
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=5)
        next_call = await func([2, 3], marker, 0.0)
        return {
            "warm_up_timed_out": never.cancelled_caught,
            "still_running": [p.pid for p in alive],
            "next_call": next_call,
        }

    report(**anyio.run(main))


def chunk_failing_first(items: list[int], marker: str) -> list[int]:
    mark(marker, f"chunk {items[0]}")
    if items[0] == 0:
        raise ValueError("chunk 0 fails at once")
    time.sleep(1.0)
    return items


def scenario_failure_cancels_the_others(marker: str) -> None:
    """Chunk 0 fails at once: report which chunks ever started, a moment later."""
    func = parallel(backend="process", workers=2, chunks=8)(chunk_failing_first)
    func([100, 101], marker)  # warm up the pool, so that every chunk is queued at once
    os.remove(marker)
    with contextlib.suppress(ValueError):
        func(list(range(8)), marker)
    time.sleep(2.5)  # longer than any queued chunk would take to start and run
    with open(marker) as file:
        started = sorted(int(line.split()[2]) for line in file if "chunk" in line)
    report(started=started)


def scenario_timeout_more_chunks_than_workers(marker: str) -> None:
    """Timeouts with chunks still queued behind the running ones, then a call that works."""
    from conc_ml import ChunkTimeoutError

    func = parallel(backend="process", workers=2, chunks=8, timeout=0.5)(chunk_sleeping)
    errors = []
    for _ in range(3):
        try:
            func(list(range(8)), marker, 5.0)
        except ChunkTimeoutError as error:
            errors.append(type(error).__name__)
    report(errors=errors, next_call=func.options(timeout=None, chunks=2)([1, 2], marker, 0.0))


SCENARIOS: dict[str, Callable[..., None]] = {
    "io-bound-recv": scenario_io_bound_recv,
    "io-bound-map-timeout": scenario_io_bound_map_timeout,
    "thread-backend-recv": scenario_thread_backend_recv,
    "stream-body": scenario_stream_body,
    "async-stream-body": scenario_async_stream_body,
    "break-from-stream": scenario_break_from_stream,
    "cancel-await": scenario_cancel_await,
    "await-until-ctrl-c": scenario_await_until_ctrl_c,
    "failure-cancels-the-others": scenario_failure_cancels_the_others,
    "timeout-more-chunks-than-workers": scenario_timeout_more_chunks_than_workers,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
