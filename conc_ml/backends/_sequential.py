"""The ``sequential`` backend: chunks run one after another in the caller.

It is the reference every parity check compares against, so it does nothing clever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar, ParamSpec, TypeVar

from ._base import AwaitedChunks

__all__ = ["InlineExecutor", "SequentialBackend"]

P = ParamSpec("P")
T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the submitting thread."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        return future


class SequentialBackend:
    """Chunks in order, in the caller's thread."""

    name: ClassVar[str] = "sequential"
    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    max_in_flight_per_worker: ClassVar[int] = 1
    #: from async code, the chunks of an ``async def`` function are awaited in the caller's loop
    runs_in_event_loop: ClassVar[bool] = True

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> AwaitedChunks:
        return AwaitedChunks(1)

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        return InlineExecutor()

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        executor.shutdown(wait=True)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
