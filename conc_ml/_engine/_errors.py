"""What a failure of one chunk means to the caller: the one place errors are translated.

A user's exception comes back as its own type with a note naming the chunk; a failure of
the backend itself (a dead worker, a task that cannot be pickled, a timeout) becomes the
conc-ml error that says what happened and how to fix it. Both drivers of the engine raise
through these functions, so every backend reports alike.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from .._runner import ChunkOutcome, ChunkTask
from .._sendable import locate_unpicklable
from .._split import Chunk
from .._tracebacks import with_source_lines
from ..errors import ChunkExitError, ChunkTimeoutError, RemoteTraceback, SerializationError, WorkerCrashedError

if TYPE_CHECKING:
    from ._state import PreparedCall

__all__ = ["cancelled_by_backend", "describe_chunk", "raise_failure", "raise_translated", "timeout_error"]


def describe_chunk(chunk: Chunk, call: PreparedCall) -> str:
    """``chunk 3 of 8 (125 items)``, for messages."""
    of = f" of {call.plan.n_chunks}" if call.plan.n_chunks is not None else ""
    return f"chunk {chunk.index}{of} ({chunk.n_items} items)"


def raise_failure(outcome: ChunkOutcome, chunk: Chunk, call: PreparedCall) -> NoReturn:
    """Re-raise a chunk's exception as its own type, with a note saying where it ran."""
    assert outcome.failure is not None
    error = outcome.failure.error
    note = (
        f"conc-ml: raised in {describe_chunk(chunk, call)} of {call.function_name}() "
        f"on backend {call.backend_name!r}, worker {outcome.worker}"
    )
    error.add_note(note)
    remote = (
        RemoteTraceback(with_source_lines(outcome.failure.traceback_text, call.function))
        if call.backend.crosses_processes
        else None
    )
    if isinstance(error, SystemExit):
        # Re-raised, it would end the caller's program without a word.
        error.__cause__ = remote
        exit_error = ChunkExitError(
            f"{describe_chunk(chunk, call)} of {call.function_name}() called sys.exit({error.code!r}); "
            "a chunk cannot end the program: raise an exception instead, or return a value the caller checks",
            code=error.code,
        )
        exit_error.add_note(note)
        raise exit_error from error
    if remote is not None:
        raise error from remote
    raise error


def cancelled_by_backend(chunk: Chunk, call: PreparedCall) -> WorkerCrashedError:
    """The error for a chunk the backend cancelled: a chunk without a result never vanishes silently."""
    return WorkerCrashedError(
        f"{describe_chunk(chunk, call)} was cancelled by backend {call.backend_name!r} "
        "before it finished; no result came back for it",
        chunk=chunk.index,
    )


def timeout_error(call: PreparedCall, done: int, stopped: str | None = None) -> ChunkTimeoutError:
    """The error of a call whose ``timeout`` passed with ``done`` chunks finished."""
    total = call.plan.n_chunks if call.plan.n_chunks is not None else "?"
    if stopped is None:
        stopped = (
            "running chunks were stopped"
            if call.backend.can_stop_running
            else f"running chunks cannot be stopped on backend {call.backend_name!r} and finish in the background"
        )
    return ChunkTimeoutError(
        f"{call.function_name}() timed out after {call.options.timeout:g} s "
        f"with {done} of {total} chunks done; {stopped}"
    )


def raise_translated(
    error: Exception, chunk: Chunk, task: ChunkTask, call: PreparedCall, others: Iterable[tuple[Chunk, ChunkTask]]
) -> None:
    """Raise the conc-ml error for a failure of the backend, if it is one; else note it and return.

    :param others: the chunks in flight beside ``chunk``, named when a worker died.
    """
    translated = call.backend.translate_error(error, chunk.index)
    if translated is not None:
        if isinstance(translated, WorkerCrashedError):
            _note_chunks_in_flight(translated, chunk, others)
            call.ledger.note_attempts(translated, chunk)
        raise translated from error
    if _is_pickling_error(error):
        raise _serialization_error(error, chunk, task, call) from error
    # Not the function's own failure (that comes back as a ChunkFailure, with its note):
    # raised while the chunk's task or result crossed to or from the worker.
    error.add_note(
        f"conc-ml: raised by backend {call.backend_name!r} while {describe_chunk(chunk, call)} of "
        f"{call.function_name}() or its result was sent to or from a worker"
    )


def _note_chunks_in_flight(error: WorkerCrashedError, chunk: Chunk, others: Iterable[tuple[Chunk, ChunkTask]]) -> None:
    # A broken pool fails every pending future alike: the one reported first is not
    # necessarily the chunk whose worker died, so say which ones it may have been.
    in_flight = sorted([chunk.index, *(other.index for other, _ in others)])
    if len(in_flight) > 1:
        error.add_note(
            f"conc-ml: chunks {', '.join(map(str, in_flight))} were in flight when the worker died; "
            "any of them may be the one that crashed it"
        )


def _is_pickling_error(error: BaseException) -> bool:
    if isinstance(error, pickle.PicklingError):
        return True
    text = str(error).lower()
    return isinstance(error, TypeError | AttributeError) and ("pickle" in text or "serializ" in text)


def _find_unpicklable(task: ChunkTask, chunk: Chunk) -> tuple[str, str] | None:
    """Which argument of ``task`` cannot be pickled, and what in it cannot (``data[3] is a ...``)."""
    candidates: list[tuple[str, str, Any]] = [("the function", f"{task.func.__qualname__}()", task.func)]
    try:
        bound = inspect.signature(task.func).bind_partial(*task.args, **task.kwargs)
        candidates += [(f"argument {name!r}", name, value) for name, value in bound.arguments.items()]
    except (TypeError, ValueError):
        candidates += [(f"positional argument {i}", f"args[{i}]", a) for i, a in enumerate(task.args)]
        candidates += [(f"argument {k!r}", k, v) for k, v in task.kwargs.items()]
    split = {id(piece) for piece in chunk.values}
    for where, root, value in candidates:
        found = locate_unpicklable(value)
        if found is None:
            continue
        # An index into a split argument counts from the start of the whole input.
        path = found.path(root, offset=chunk.start if id(value) in split else 0)
        inner = f": {path} is a {found.describe()}" if found.steps else ""
        return f"{where} (of type {type(value).__module__}.{type(value).__qualname__})", inner
    return None


def _serialization_error(error: BaseException, chunk: Chunk, task: ChunkTask, call: PreparedCall) -> SerializationError:
    culprit = _find_unpicklable(task, chunk)
    if culprit is not None:
        where, inner = culprit
        what = (
            f"{where} of {describe_chunk(chunk, call)} cannot be pickled to reach a {call.backend_name!r} worker{inner}"
        )
        fix = (
            "create the object inside the function, pass something picklable (a path, a config) instead, "
            "or use backend='thread'"
        )
    else:
        what = f"the result of {describe_chunk(chunk, call)} cannot be pickled to come back from a worker"
        fix = "return plain data (arrays, lists, dicts, fitted estimators) or use backend='thread'"
        if "'generator' object" in str(error):
            # A function written with yield, or one returning a generator expression.
            fix = "the function returns a generator, which cannot leave its process: return a list of its items"
    return SerializationError(f"{what} ({type(error).__name__}: {error}); {fix}")
