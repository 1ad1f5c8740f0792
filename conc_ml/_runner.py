"""What runs inside a worker: one chunk, with its stream, limits and error capture.

Everything here must be importable and cheap in a fresh worker process: loky imports
this module by reference when it unpickles a :class:`ChunkTask`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import numpy as np

from ._system import in_worker_process, running_a_chunk
from .errors import UnpicklableRemoteError

__all__ = ["ChunkFailure", "ChunkOutcome", "ChunkTask", "run_chunk"]


def _interrupts_the_caller(error: BaseException) -> bool:
    # Ctrl-C in the caller's own process (sequential, thread and async backends) stops the
    # call: it must propagate, not be reported as the failure of one chunk.
    return isinstance(error, KeyboardInterrupt) and not in_worker_process()


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkTask:
    """Everything one chunk needs; pickled as a whole when it crosses a process boundary.

    :ivar func: the undecorated user function.
    :ivar args: positional arguments, the split ones already cut.
    :ivar kwargs: keyword arguments, the split ones already cut.
    :ivar index: the chunk's position.
    :ivar seed: the chunk's :class:`~numpy.random.SeedSequence` when ``rng_param`` is set.
    :ivar rng_param: name of the parameter that receives the chunk's ``Generator``.
    :ivar allow_nested: let ``@parallel`` calls made by the chunk run in parallel.
    """

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    index: int
    seed: np.random.SeedSequence | None = None
    rng_param: str | None = None
    #: the caller's ``config(allow_nested=...)``, which a worker's own context lacks
    allow_nested: bool = False


class ChunkFailure:
    """A user exception raised by a chunk, with the worker's traceback as text.

    When pickled (on its way back from a process), the exception travels with
    cloudpickle if it survives a round trip, else as :class:`UnpicklableRemoteError`
    carrying its type name and traceback: an exception that cannot be sent back must
    still surface in the caller, never hang or vanish.
    """

    __slots__ = ("error", "traceback_text")

    def __init__(self, error: BaseException, traceback_text: str):
        self.error = error
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        error_type = type(self.error)
        type_name = f"{error_type.__module__}.{error_type.__qualname__}"
        try:
            text = str(self.error)
        except Exception:
            text = "<str() of the exception failed>"
        try:
            payload = cloudpickle.dumps(self.error)
            cloudpickle.loads(payload)
        except Exception as pickling_error:
            payload = cloudpickle.dumps(_unpicklable_error(type_name, text, self.traceback_text, pickling_error))
        return (_rebuild_failure, (payload, self.traceback_text, type_name, text))


def _unpicklable_error(
    type_name: str, text: str, traceback_text: str, pickling_error: BaseException
) -> UnpicklableRemoteError:
    return UnpicklableRemoteError(
        f"the worker raised {type_name}: {text}; it could not be sent back to the caller "
        f"({type(pickling_error).__name__}: {pickling_error}). Make the exception picklable "
        "(its __init__ must accept its args, or define __reduce__) and its class importable in the caller",
        type_name=type_name,
        traceback_text=traceback_text,
    )


def _rebuild_failure(payload: bytes, traceback_text: str, type_name: str = "", text: str = "") -> ChunkFailure:
    # The round trip was checked in the worker, but the caller may still be unable to
    # load the class (a module only the worker can import): failing here would break
    # the whole pool and lose the other chunks, so the failure is rebuilt as text.
    try:
        error = cloudpickle.loads(payload)
    except Exception as loading_error:
        error = _unpicklable_error(type_name or "an exception", text, traceback_text, loading_error)
    # The worker's frames are in traceback_text, which the caller chains as the cause. A
    # traceback pickled along (distributed's tblib does that for the exception classes that
    # existed when it was imported) would show them twice, as File "<dynamic-code>".
    error.__traceback__ = None
    return ChunkFailure(error, traceback_text)


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What a chunk gives back: its value, or its failure, and where it ran."""

    index: int
    value: Any
    failure: ChunkFailure | None
    worker: str


def describe_worker() -> str:
    """``pid N, thread NAME``: enough to find the worker in ``ps`` or a log."""
    return f"pid {os.getpid()}, thread {threading.current_thread().name!r}"


@contextlib.contextmanager
def _chunk_context(task: ChunkTask) -> Iterator[None]:
    """Mark the code as running in a chunk, with the caller's nesting permission."""
    with running_a_chunk(allow_nested=task.allow_nested):
        yield


def _chunk_kwargs(task: ChunkTask) -> dict[str, Any]:
    if task.rng_param is None:
        return task.kwargs
    return {**task.kwargs, task.rng_param: np.random.default_rng(task.seed)}


def _failed(task: ChunkTask, error: BaseException) -> ChunkOutcome:
    text = "".join(traceback.format_exception(error))
    return ChunkOutcome(task.index, None, ChunkFailure(error, text), describe_worker())


def run_chunk(task: ChunkTask) -> ChunkOutcome:
    """Run one chunk and capture its result or its exception.

    An ``async def`` function gets an event loop of its own for the chunk. Every exception
    is captured, ``SystemExit``, ``GeneratorExit`` and other ``BaseException`` subclasses
    included (and ``KeyboardInterrupt`` in a process worker): left alone, loky would send
    them back without the chunk's note and traceback, and a ``SystemExit`` re-raised in the
    caller would end the caller's program in silence (the engine turns it into a
    :class:`~conc_ml.errors.ChunkExitError`). A ``KeyboardInterrupt`` in the caller's own
    process is Ctrl-C, which stops the whole call: it is not captured.
    """
    if inspect.iscoroutinefunction(task.func):
        import anyio

        outcome: ChunkOutcome = anyio.run(run_chunk_async, task)
        return outcome
    with _chunk_context(task):
        try:
            value = task.func(*task.args, **_chunk_kwargs(task))
        except BaseException as error:
            if _interrupts_the_caller(error):
                raise
            return _failed(task, error)
    return ChunkOutcome(task.index, value, None, describe_worker())


async def run_chunk_async(task: ChunkTask) -> ChunkOutcome:
    """Await one chunk of an ``async def`` function in the current event loop.

    As :func:`run_chunk`, every exception is captured except the event loop's cancellation,
    which must reach the task group that cancelled the chunk.
    """
    import anyio

    with _chunk_context(task):
        try:
            value = await task.func(*task.args, **_chunk_kwargs(task))
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as error:
            if _interrupts_the_caller(error):
                raise
            return _failed(task, error)
    return ChunkOutcome(task.index, value, None, describe_worker())
