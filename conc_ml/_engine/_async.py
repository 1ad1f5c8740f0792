"""The anyio driver: runs the chunks of an ``async def`` function as tasks of the caller's event loop.

It feeds the same :class:`~conc_ml._engine._state.CallState` as the futures driver, for
backends that declare ``runs_in_event_loop``: chunks are awaited in a task group, the
deadline bounds each wait for a chunk, and the first failure cancels the others. Calls on
other backends run the futures driver in a worker thread (:func:`outcomes_from_thread`),
so that a pool's waits never block the event loop.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar, cast

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._runner import ChunkOutcome, ChunkTask
from .._split import Chunk
from ..backends import EventLoopBackend, EventLoopRunner
from ._state import CallState, PreparedCall, reporting
from ._sync import iter_outcomes

__all__ = ["in_worker_thread", "iter_outcomes_async", "outcomes_from_thread"]

R = TypeVar("R")

AsyncOutcomes = AsyncGenerator[tuple[Chunk, ChunkOutcome], None]
#: what a chunk's task sends back: the chunk's index and its outcome
Finished = tuple[int, ChunkOutcome]

#: what a timeout does to the chunks of this driver: they are tasks, and tasks are cancelled
_CANCELLED_ON_TIMEOUT = "the running chunks were cancelled"


async def iter_outcomes_async(call: PreparedCall) -> AsyncOutcomes:
    """Run the chunks of ``call`` as tasks of the current event loop; yield each outcome as it finishes.

    At most the runner's capacity of chunks run at once. The first failure cancels the
    others and is re-raised as its own type (not wrapped in an exception group).
    """
    # The registry made sure that a backend declaring ``runs_in_event_loop`` is one.
    backend = cast(EventLoopBackend, call.backend)
    runner = backend.open_in_event_loop(call.workers, call.options.settings)
    send, receive = anyio.create_memory_object_stream[Finished](math.inf)
    with reporting(call) as progress:
        state = CallState(
            call, runner.capacity, progress, clock=anyio.current_time, stopped_on_timeout=_CANCELLED_ON_TIMEOUT
        )
        try:
            async with send, receive, anyio.create_task_group() as group:
                try:
                    while True:
                        async for item in _start_what_fits(state, runner, group, send):
                            yield item
                        if not state.in_flight:
                            break
                        index, outcome = await _next_finished(state, receive)
                        chunk = state.finished(index, outcome)
                        if call.ledger.checkpointing:
                            await anyio.to_thread.run_sync(call.ledger.keep, chunk, outcome)
                        state.delivered(chunk)
                        yield chunk, outcome
                except GeneratorExit:
                    # The consumer closed the stream early: cancel the chunks still running
                    # and end quietly (the task group would wrap GeneratorExit in a group).
                    group.cancel_scope.cancel()
                except BaseException:
                    group.cancel_scope.cancel()
                    raise
        except BaseExceptionGroup as group:
            # A failure raised inside the task group arrives wrapped: unwrap a single one.
            errors = group.exceptions
            if len(errors) == 1:
                raise errors[0] from None
            raise


async def _start_what_fits(
    state: CallState, runner: EventLoopRunner, group: anyio.abc.TaskGroup, send: MemoryObjectSendStream[Finished]
) -> AsyncOutcomes:
    """Start chunks until the runner is full; yield those that come from the checkpoint."""
    ledger = state.call.ledger
    while state.wants_more():
        chunk = state.next_chunk()
        if chunk is None:
            return
        if ledger.checkpointing:
            resumed = await anyio.to_thread.run_sync(ledger.resume, chunk)
            if resumed is not None:
                state.delivered(chunk, resumed=True)
                yield chunk, resumed
                continue
        task = state.task_for(chunk)
        state.submitted(chunk.index, chunk, task)
        group.start_soon(_run_one, runner, task, send)


async def _run_one(runner: EventLoopRunner, task: ChunkTask, send: MemoryObjectSendStream[Finished]) -> None:
    outcome = await runner.run(task)
    await send.send((task.index, outcome))


async def _next_finished(state: CallState, receive: MemoryObjectReceiveStream[Finished]) -> Finished:
    """The next chunk to finish, in time.

    The deadline guards each wait for a chunk, never a ``yield``: a cancel scope left open
    across a yield would fire in the consumer's code as a bare cancellation. A chunk that
    finished in time is delivered even if the consumer was slow.
    """
    try:
        return receive.receive_nowait()
    except anyio.WouldBlock:
        pass
    time_left = state.time_left()
    with anyio.move_on_after(math.inf if time_left is None else time_left):
        return await receive.receive()
    state.timed_out()


async def outcomes_from_thread(call: PreparedCall) -> AsyncOutcomes:
    """Yield a pool backend's outcomes to async code as each chunk finishes.

    Each outcome is fetched by a short worker-thread call, so no thread is ever left
    waiting on an event loop that has gone (as a long-lived pump thread would be when the
    consumer leaves early).
    """
    outcomes = iter_outcomes(call)
    fetching = False
    try:
        while True:
            fetching = True
            item = await anyio.to_thread.run_sync(next, outcomes, None, abandon_on_cancel=True)
            fetching = False
            if item is None:
                return
            yield item
    finally:
        if fetching:
            # Cancelled while a thread is inside next(): the driver wakes up, stops the
            # running chunks where the backend can, and gives the pool back.
            call.cancel()
        else:
            # Finished, failed or left early between chunks: drop the queued chunks now.
            await anyio.to_thread.run_sync(outcomes.close)


async def in_worker_thread(call: PreparedCall, work: Callable[[], R]) -> R:
    """Run blocking pool work in a worker thread, stopping it if the caller stops waiting for it.

    The caller stops waiting when it is cancelled, and on trio also at Ctrl-C, which trio
    raises in the awaiting task as ``KeyboardInterrupt`` rather than as a cancellation:
    either way the thread is abandoned, and a call left running would keep its chunks
    busy and the interpreter's exit waiting for them.
    """
    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except BaseException:
        # Also reached when ``work`` raised: cancelling a call that has ended does nothing.
        call.cancel()
        raise
