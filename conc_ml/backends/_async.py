"""The ``async`` backend: anyio tasks limited by a :class:`anyio.CapacityLimiter`.

``async def`` functions awaited from async code run as tasks of a task group in the
caller's own event loop (asyncio or trio): the backend declares ``runs_in_event_loop``
and the engine's anyio driver (``conc_ml._engine._async``) awaits them. Called from sync
code, chunks run in an event loop that a blocking portal starts in a helper thread for the
duration of the call; sync functions given this backend run in anyio worker threads under
the same limiter.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, ClassVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._runner import ChunkOutcome, ChunkTask, run_chunk, run_chunk_async
from ._base import AwaitedChunks, BackendSetting, CallInfo

__all__ = ["AsyncBackend", "PortalRunner"]

_ASYNC_LIBRARIES = ("asyncio", "trio")


class PortalRunner:
    """Chunks as tasks of an event loop held by a blocking portal, at most ``workers`` at a time."""

    def __init__(self, workers: int, async_library: str):
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(backend=async_library))
        self._limiter: anyio.CapacityLimiter = self._portal.call(anyio.CapacityLimiter, workers)
        # Two per worker: the next chunk is queued in the loop when one ends.
        self.capacity = 2 * workers

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Start ``task`` as a task of the portal's event loop."""
        return self._portal.start_task_soon(self._run, task)

    async def _run(self, task: ChunkTask) -> ChunkOutcome:
        if inspect.iscoroutinefunction(task.func):
            async with self._limiter:
                return await run_chunk_async(task)
        # A thread cannot be cancelled: on timeout or failure the call stops waiting for
        # it, and the thread ends with its chunk (as on the thread backend).
        return await anyio.to_thread.run_sync(run_chunk, task, limiter=self._limiter, abandon_on_cancel=True)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """Stop the portal's event loop, cancelling its tasks on abort."""
        if abort:
            self._portal.call(self._portal.stop, True)
        self._stack.close()


class AsyncBackend:
    """Chunks as anyio tasks, at most ``workers`` at a time."""

    crosses_processes: ClassVar[bool] = False
    # Coroutine chunks are cancelled; sync chunks in worker threads run to their end.
    can_stop_running: ClassVar[bool] = False
    runs_in_event_loop: ClassVar[bool] = True
    settings: ClassVar[Mapping[str, BackendSetting]] = {
        "async_library": BackendSetting(
            "the event loop that runs the chunks of a call made from sync code: 'asyncio' or 'trio'",
            (str,),
            _ASYNC_LIBRARIES.__contains__,
        ),
    }

    def before_call(self, call: CallInfo) -> None:
        pass

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> PortalRunner:
        return PortalRunner(workers, settings.get("async_library") or "asyncio")

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> AwaitedChunks:
        return AwaitedChunks(workers)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
