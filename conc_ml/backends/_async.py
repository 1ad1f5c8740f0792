"""The ``async`` backend: anyio tasks limited by a :class:`anyio.CapacityLimiter`.

``async def`` functions awaited from async code run as tasks of a task group in the
caller's own event loop (asyncio or trio): see :mod:`conc_ml._engine._async`.
Called from sync code, chunks run in an event loop that a blocking portal starts in a
helper thread for the duration of the call; sync functions given this backend run in
anyio worker threads under the same limiter.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._runner import ChunkOutcome, ChunkTask, run_chunk_async
from ._base import AwaitedChunks

__all__ = ["AsyncBackend", "PortalExecutor"]

_ASYNC_LIBRARIES = ("asyncio", "trio")


class PortalExecutor(Executor):
    """An executor whose calls run as tasks in an event loop held by a blocking portal."""

    def __init__(self, workers: int, async_library: str):
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(backend=async_library))
        self._limiter: anyio.CapacityLimiter = self._portal.call(anyio.CapacityLimiter, workers)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        (task,) = args
        return self._portal.start_task_soon(self._run, fn, task)

    async def _run(self, fn: Callable[[ChunkTask], ChunkOutcome], task: ChunkTask) -> ChunkOutcome:
        if inspect.iscoroutinefunction(task.func):
            async with self._limiter:
                return await run_chunk_async(task)
        # A thread cannot be cancelled: on timeout or failure the call stops waiting for
        # it, and the thread ends with its chunk (as on the thread backend).
        return await anyio.to_thread.run_sync(fn, task, limiter=self._limiter, abandon_on_cancel=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self._portal.call(self._portal.stop, True)
        self._stack.close()


class AsyncBackend:
    """Chunks as anyio tasks, at most ``workers`` at a time."""

    name: ClassVar[str] = "async"
    crosses_processes: ClassVar[bool] = False
    # Coroutine chunks are cancelled; sync chunks in worker threads run to their end.
    can_stop_running: ClassVar[bool] = False
    max_in_flight_per_worker: ClassVar[int] = 2
    #: from async code, the chunks of an ``async def`` function are tasks of the caller's loop
    runs_in_event_loop: ClassVar[bool] = True

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> AwaitedChunks:
        return AwaitedChunks(workers)

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        library = settings.get("async_library", "asyncio")
        if library not in _ASYNC_LIBRARIES:
            raise ValueError(f"async_library must be one of {', '.join(_ASYNC_LIBRARIES)}, got {library!r}")
        return PortalExecutor(workers, library)

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        executor.shutdown(wait=True, cancel_futures=abort)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
