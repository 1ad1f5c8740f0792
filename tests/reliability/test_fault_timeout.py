"""A call that runs past its ``timeout`` raises ``ChunkTimeoutError`` and leaves nothing stuck."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from conc_ml import ChunkTimeoutError, parallel


def test_process_timeout_kills_the_workers_of_the_stuck_chunks(run_scenario: Any) -> None:
    result = run_scenario("timeout-kills-workers")
    assert result["type"] == "ChunkTimeoutError"
    assert result["is_timeout_error"]
    assert result["alive"] == [], "workers of the timed-out call were left running"
    assert result["still_running"] == []
    assert result["next_call"] == [1.0, 1.0]


def test_async_timeout_cancels_the_running_coroutines() -> None:
    cancelled = threading.Event()
    never = anyio.Event()

    async def wait_forever(items: list[int]) -> list[int]:
        try:
            await never.wait()
        finally:
            cancelled.set()
        return items

    func = parallel(backend="async", chunks=2, timeout=0.2)(wait_forever)
    with pytest.raises(ChunkTimeoutError) as info:
        anyio.run(func, [1, 2])
    assert isinstance(info.value, TimeoutError)
    assert cancelled.is_set()


def test_sequential_timeout_stops_between_chunks() -> None:
    # Chunks run inline and cannot be interrupted: the call stops before the next one.
    started: list[int] = []
    release = threading.Event()

    def first_chunk_outlasts_the_timeout(items: list[int]) -> list[int]:
        started.append(items[0])
        release.wait(timeout=0.5)  # longer than the call's timeout, bounded
        return items

    func = parallel(backend="sequential", chunks=3, timeout=0.1)(first_chunk_outlasts_the_timeout)
    with pytest.raises(ChunkTimeoutError, match="of 3 chunks done"):
        func([1, 2, 3])
    assert started == [1]
    release.set()
    assert func.options(timeout=None)([1, 2, 3]) == [[1], [2], [3]]
