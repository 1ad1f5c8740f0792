"""The ``sequential`` backend: chunks run one after another in the caller.

It is the reference every parity check compares against, so it does nothing clever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar, ParamSpec, TypeVar

from .._runner import ChunkOutcome, ChunkTask, run_chunk
from ._base import AwaitedChunks, BackendSetting, CallInfo

__all__ = ["InlineExecutor", "InlineRunner", "SequentialBackend"]

P = ParamSpec("P")
T = TypeVar("T")


def _run_inline(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:
        future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    return future


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the submitting thread."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return _run_inline(fn, *args, **kwargs)


class InlineRunner:
    """Runs each chunk as it is submitted, in the caller's thread: one chunk at a time."""

    capacity = 1

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Run ``task`` now; the future is done when this returns."""
        return _run_inline(run_chunk, task)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """Nothing to give back."""


class SequentialBackend:
    """Chunks in order, in the caller's thread (from async code: in the caller's event loop)."""

    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    runs_in_event_loop: ClassVar[bool] = True
    settings: ClassVar[Mapping[str, BackendSetting]] = {}

    def before_call(self, call: CallInfo) -> None:
        pass

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> InlineRunner:
        return InlineRunner()

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> AwaitedChunks:
        return AwaitedChunks(1)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
