"""The engine: runs the chunks of one call on its backend and hands back what they give.

- :mod:`._state`: the bookkeeping of one call, without I/O (:class:`CallState`);
- :mod:`._errors`: what a failure means to the caller (error translation);
- :mod:`._sync`: the futures driver (a backend's pool);
- :mod:`._async`: the anyio driver (tasks of the caller's event loop).

The functions below are what the ``@parallel`` wrappers call: a whole call (results
combined) or a stream, from sync or async code.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator
from typing import Any

from .._combine import combine_results
from .._left_calls import StreamConsumer, watch_stream
from .._runner import ChunkOutcome
from .._split import Chunk
from ._state import PreparedCall
from ._sync import iter_outcomes

__all__ = ["PreparedCall", "run_call", "run_call_async", "stream_call", "stream_call_async"]


def run_call(call: PreparedCall) -> Any:
    """Run every chunk of ``call`` and combine their results in chunk order."""
    return _combine(call, iter_outcomes(call))


def stream_call(call: PreparedCall) -> Iterator[tuple[int, Any]]:
    """Yield ``(chunk index, result)`` as chunks finish; leaving early drops the queued chunks.

    A stream the main thread leaves suspended is closed at exit (see :mod:`conc_ml._left_calls`).
    """
    consumer = StreamConsumer()
    stream = _stream(call, consumer)
    watch_stream(stream, consumer)
    return stream


def _stream(call: PreparedCall, consumer: StreamConsumer) -> Generator[tuple[int, Any], None, None]:
    consumer.thread = threading.current_thread()
    for chunk, outcome in iter_outcomes(call):
        yield chunk.index, outcome.value
        consumer.thread = threading.current_thread()


async def run_call_async(call: PreparedCall) -> Any:
    """Await every chunk of ``call`` and combine their results in chunk order."""
    # Imported here: anyio is for async callers only (see conc_ml's __init__).
    from ._async import in_worker_thread, iter_outcomes_async

    if _in_event_loop(call):
        return _combine(call, [item async for item in iter_outcomes_async(call)])
    return await in_worker_thread(call, lambda: run_call(call))


async def stream_call_async(call: PreparedCall) -> AsyncGenerator[tuple[int, Any], None]:
    """Yield ``(chunk index, result)`` as chunks finish, to async code."""
    from ._async import iter_outcomes_async, outcomes_from_thread

    outcomes = iter_outcomes_async(call) if _in_event_loop(call) else outcomes_from_thread(call)
    async with contextlib.aclosing(outcomes) as items:
        async for chunk, outcome in items:
            yield chunk.index, outcome.value


def _in_event_loop(call: PreparedCall) -> bool:
    return call.backend.runs_in_event_loop


def _combine(call: PreparedCall, outcomes: Iterable[tuple[Chunk, ChunkOutcome]]) -> Any:
    by_index: dict[int, tuple[Any, int]] = {}
    for chunk, outcome in outcomes:
        by_index[chunk.index] = (outcome.value, chunk.n_items)
    ordered = [by_index[i] for i in range(len(by_index))]
    return combine_results(call.options.combine, [v for v, _ in ordered], [n for _, n in ordered])
