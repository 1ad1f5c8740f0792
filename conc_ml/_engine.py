"""Running the chunks of one call on a backend, and turning failures into clear errors.

This is the single place that submits chunks, waits for them, enforces the timeout,
cancels what is left when something fails or the user interrupts, and translates
what went wrong. Every backend goes through it, so they all behave alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import inspect
import math
import pickle
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import Any

import anyio

from ._checkpoint import RESUMED_FROM_CHECKPOINT, CallLedger, progress_note
from ._interrupts import InterruptWatch
from ._left_calls import LeftCallFlag
from ._options import ParallelOptions
from ._runner import ChunkOutcome, ChunkTask, run_chunk, run_chunk_async
from ._sendable import locate_unpicklable
from ._split import Chunk, ChunkPlan
from ._tracebacks import with_source_lines
from .backends import Backend
from .errors import ChunkExitError, ChunkTimeoutError, RemoteTraceback, SerializationError, WorkerCrashedError

__all__ = ["PreparedCall", "iter_outcomes", "iter_outcomes_async"]


@dataclasses.dataclass(slots=True)
class PreparedCall:
    """One call, ready to run: its options, backend, chunks and task factory."""

    function_name: str
    options: ParallelOptions
    backend_name: str
    backend: Backend
    workers: int
    plan: ChunkPlan
    make_task: Callable[[Chunk], ChunkTask]
    #: retries and checkpoint of the call
    ledger: CallLedger = dataclasses.field(default_factory=CallLedger)
    #: set from another thread to stop the call (an async caller was cancelled): see :meth:`cancel`
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: done when the call is cancelled: the engine waits on it beside the chunks, to stop at once
    wake: concurrent.futures.Future[None] = dataclasses.field(default_factory=concurrent.futures.Future)

    def cancel(self) -> None:
        """Stop the call from any thread: queued chunks are dropped, running ones stopped where the backend can."""
        self.cancelled.set()
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.wake.set_result(None)

    #: the user's function, whose code gives remote tracebacks their source lines
    function: Callable[..., Any] | None = None


def _progress_bar(call: PreparedCall) -> Any:
    if not call.options.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=call.plan.n_items, unit="item", desc=call.function_name)


def _describe_chunk(chunk: Chunk, call: PreparedCall) -> str:
    of = f" of {call.plan.n_chunks}" if call.plan.n_chunks is not None else ""
    return f"chunk {chunk.index}{of} ({chunk.n_items} items)"


def raise_failure(outcome: ChunkOutcome, chunk: Chunk, call: PreparedCall) -> None:
    """Re-raise a chunk's exception as its own type, with a note saying where it ran."""
    assert outcome.failure is not None
    error = outcome.failure.error
    note = (
        f"conc-ml: raised in {_describe_chunk(chunk, call)} of {call.function_name}() "
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
            f"{_describe_chunk(chunk, call)} of {call.function_name}() called sys.exit({error.code!r}); "
            "a chunk cannot end the program: raise an exception instead, or return a value the caller checks",
            code=error.code,
        )
        exit_error.add_note(note)
        raise exit_error from error
    if remote is not None:
        raise error from remote
    raise error


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


def _is_pickling_error(error: BaseException) -> bool:
    if isinstance(error, pickle.PicklingError):
        return True
    text = str(error).lower()
    return isinstance(error, TypeError | AttributeError) and ("pickle" in text or "serializ" in text)


def _serialization_error(error: BaseException, chunk: Chunk, task: ChunkTask, call: PreparedCall) -> SerializationError:
    culprit = _find_unpicklable(task, chunk)
    if culprit is not None:
        where, inner = culprit
        what = (
            f"{where} of {_describe_chunk(chunk, call)} cannot be pickled to reach a {call.backend_name!r} "
            f"worker{inner}"
        )
        fix = (
            "create the object inside the function, pass something picklable (a path, a config) instead, "
            "or use backend='thread'"
        )
    else:
        what = f"the result of {_describe_chunk(chunk, call)} cannot be pickled to come back from a worker"
        fix = "return plain data (arrays, lists, dicts, fitted estimators) or use backend='thread'"
    return SerializationError(f"{what} ({type(error).__name__}: {error}); {fix}")


def _timeout_error(call: PreparedCall, done: int, stopped: str | None = None) -> ChunkTimeoutError:
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


def _note_chunks_in_flight(error: WorkerCrashedError, chunk: Chunk, others: Iterable[tuple[Chunk, ChunkTask]]) -> None:
    # A broken pool fails every pending future alike: the one reported first is not
    # necessarily the chunk whose worker died, so say which ones it may have been.
    in_flight = sorted([chunk.index, *(other.index for other, _ in others)])
    if len(in_flight) > 1:
        error.add_note(
            f"conc-ml: chunks {', '.join(map(str, in_flight))} were in flight when the worker died; "
            "any of them may be the one that crashed it"
        )


def _raise_translated(
    error: Exception, chunk: Chunk, task: ChunkTask, call: PreparedCall, others: Iterable[tuple[Chunk, ChunkTask]]
) -> None:
    """Raise the conc-ml error for a failure of the backend, if it is one; else return."""
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
        f"conc-ml: raised by backend {call.backend_name!r} while {_describe_chunk(chunk, call)} of "
        f"{call.function_name}() or its result was sent to or from a worker"
    )


def _count_resumed(progress: Any, chunk: Chunk, ledger: CallLedger) -> None:
    if progress is not None:
        progress.set_postfix_str(progress_note(ledger), refresh=False)
        progress.update(chunk.n_items)


def _submit_again(
    call: PreparedCall, executor: concurrent.futures.Executor, task: ChunkTask
) -> tuple[concurrent.futures.Executor, concurrent.futures.Future[ChunkOutcome]]:
    """Submit a chunk whose worker died; on a pool that broke with it, on a fresh pool."""
    try:
        return executor, executor.submit(run_chunk, task)
    except Exception:
        # loky marks its pool broken before it fails the futures: the next one is built anew.
        call.backend.release(executor, abort=True, stop_running=False)
        executor = call.backend.open(call.workers, call.options.settings)
        return executor, executor.submit(run_chunk, task)


def iter_outcomes(call: PreparedCall) -> Generator[tuple[Chunk, ChunkOutcome], None, None]:
    """Run the chunks of ``call`` and yield each one's outcome as it finishes.

    Chunks are submitted lazily, at most ``max_in_flight_per_worker x workers`` at a
    time, so that an iterator cut by ``chunk_size`` is never read far ahead. A chunk's
    exception is re-raised at once (see :func:`raise_failure`); whatever happens,
    pending chunks are cancelled and the executor is released before this returns.
    """
    backend = call.backend
    ledger = call.ledger
    window = max(1, backend.max_in_flight_per_worker * call.workers)
    deadline = None if call.options.timeout is None else time.monotonic() + call.options.timeout
    chunks = iter(call.plan.chunks)
    pending: dict[concurrent.futures.Future[ChunkOutcome], tuple[Chunk, ChunkTask]] = {}
    progress = _progress_bar(call)
    executor = backend.open(call.workers, call.options.settings)
    completed = 0
    abort = True
    stop_running = False
    # Ctrl-C in the body of the caller's loop over ``.stream()`` reaches this generator as
    # GeneratorExit, as a ``break`` does: the watch tells the two apart.
    interrupts = InterruptWatch()
    # Chunks in another process check this flag before they start (see _left_calls).
    left_flag = LeftCallFlag() if backend.crosses_processes else None
    run = run_chunk if left_flag is None else left_flag.wrap(run_chunk)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window and not call.cancelled.is_set():
                # Checked here too because a backend that runs chunks inline (sequential)
                # finishes each one before ``wait`` below could ever time out.
                if deadline is not None and time.monotonic() >= deadline:
                    stop_running = backend.can_stop_running
                    raise _timeout_error(call, completed)
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                resumed = ledger.resume(chunk)
                if resumed is not None:
                    completed += 1
                    _count_resumed(progress, chunk, ledger)
                    yield chunk, resumed
                    continue
                task = call.make_task(chunk)
                try:
                    future = executor.submit(run, task)
                except Exception as error:
                    if ledger.retries and isinstance(backend.translate_error(error, chunk.index), WorkerCrashedError):
                        # The pool broke under earlier chunks (retried as their futures fail):
                        # this one never ran, so it goes to a fresh pool uncounted.
                        executor, future = _submit_again(call, executor, task)
                        pending[future] = (chunk, task)
                        continue
                    # A pool that broke since the last chunk was sent (a worker died
                    # running an earlier chunk) refuses new ones: report that chunk's crash.
                    in_flight = sorted(pending.values(), key=lambda item: item[0].index)
                    crashed, crashed_task = in_flight[0] if in_flight else (chunk, task)
                    _raise_translated(error, crashed, crashed_task, call, in_flight[1:])
                    raise
                pending[future] = (chunk, task)
            if not pending or call.cancelled.is_set():
                break
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            waited: list[concurrent.futures.Future[Any]] = [*pending, call.wake]
            done, _ = concurrent.futures.wait(waited, timeout=remaining, return_when=concurrent.futures.FIRST_COMPLETED)
            done.discard(call.wake)
            if call.cancelled.is_set():
                break
            if not done:
                stop_running = backend.can_stop_running
                raise _timeout_error(call, completed)
            for future in sorted(done, key=lambda f: pending[f][0].index):
                chunk, task = pending.pop(future)
                try:
                    outcome = future.result()
                except concurrent.futures.CancelledError:
                    # The engine cancels only after this loop: a cancel seen here came from
                    # the backend, and a chunk without a result must never vanish silently.
                    raise WorkerCrashedError(
                        f"{_describe_chunk(chunk, call)} was cancelled by backend {call.backend_name!r} "
                        "before it finished; no result came back for it",
                        chunk=chunk.index,
                    ) from None
                except Exception as error:
                    if ledger.may_retry(backend.translate_error(error, chunk.index), chunk):
                        executor, retried = _submit_again(call, executor, task)
                        pending[retried] = (chunk, task)
                        continue
                    _raise_translated(error, chunk, task, call, pending.values())
                    raise
                if outcome.failure is not None:
                    raise_failure(outcome, chunk, call)
                ledger.keep(chunk, outcome)
                completed += 1
                if progress is not None:
                    progress.update(chunk.n_items)
                yield chunk, outcome
        abort = call.cancelled.is_set()
        # A cancelled caller stops its running chunks too, so that none outlives the call.
        stop_running = abort and backend.can_stop_running
    except BaseException as error:
        # Ctrl-C (and a timeout, above) stops running chunks where the backend can. A
        # user's error, a crash, or a ``break`` out of ``.stream`` only drops what is queued.
        # On Ctrl-C every backend is asked, even one that cannot stop chunks cleanly: the
        # thread backend then interrupts its threads, which would otherwise keep the
        # interpreter from exiting until their chunks end.
        if not isinstance(error, Exception | GeneratorExit) or interrupts.interrupted():
            stop_running = True
        raise
    finally:
        interrupts.close()
        # Stopping running chunks cancels the queued ones with them: cancelling them here
        # first would make loky's manager thread fail (and print a traceback) as it fails
        # every pending future of the pool it shuts down.
        if not stop_running:
            for future in pending:
                future.cancel()
            if left_flag is not None:
                # Left by ``break`` or a failure: what the pool could not cancel is skipped.
                left_flag.raise_for(pending)
        if progress is not None:
            progress.close()
        try:
            backend.release(executor, abort=abort, stop_running=stop_running)
        finally:
            for future in pending:
                future.cancel()  # what a backend that cannot stop chunks left queued
        ledger.report(call.function_name, call.plan.n_chunks)


async def iter_outcomes_async(call: PreparedCall) -> AsyncGenerator[tuple[Chunk, ChunkOutcome], None]:
    """Run the chunks of an ``async def`` function as tasks of the current event loop.

    At most ``workers`` chunks run at once. The first failure cancels the others and is
    re-raised as its own type (not wrapped in an exception group).
    """
    limiter = anyio.CapacityLimiter(call.workers)
    send, receive = anyio.create_memory_object_stream[tuple[Chunk, ChunkOutcome]](math.inf)
    progress = _progress_bar(call)
    timeout = call.options.timeout
    completed = 0
    ledger = call.ledger

    async def run_one(chunk: Chunk, task: ChunkTask, token: object) -> None:
        try:
            outcome = await run_chunk_async(task)
        finally:
            limiter.release_on_behalf_of(token)
        await send.send((chunk, outcome))

    async def produce() -> None:
        async with send, anyio.create_task_group() as group:
            for chunk in call.plan.chunks:
                if ledger.checkpointing:
                    resumed = await anyio.to_thread.run_sync(ledger.resume, chunk)
                    if resumed is not None:
                        await send.send((chunk, resumed))
                        continue
                token = object()
                await limiter.acquire_on_behalf_of(token)
                group.start_soon(run_one, chunk, call.make_task(chunk), token)

    # The deadline guards each wait for a chunk, never a ``yield``: a cancel scope left open
    # across a yield would fire in the consumer's code as a bare cancellation.
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(produce)
            async with receive:
                try:
                    while True:
                        # A chunk finished in time is delivered even if the consumer was slow.
                        try:
                            chunk, outcome = receive.receive_nowait()
                        except anyio.EndOfStream:
                            break
                        except anyio.WouldBlock:
                            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as waiting:
                                try:
                                    chunk, outcome = await receive.receive()
                                except anyio.EndOfStream:
                                    break
                            if waiting.cancelled_caught:
                                outer.cancel_scope.cancel()
                                raise _timeout_error(call, completed, "the running chunks were cancelled") from None
                        if outcome.failure is not None:
                            outer.cancel_scope.cancel()
                            raise_failure(outcome, chunk, call)
                        if ledger.checkpointing:
                            await anyio.to_thread.run_sync(ledger.keep, chunk, outcome)
                        completed += 1
                        if outcome.worker == RESUMED_FROM_CHECKPOINT:
                            _count_resumed(progress, chunk, ledger)
                        elif progress is not None:
                            progress.update(chunk.n_items)
                        yield chunk, outcome
                except GeneratorExit:
                    # The consumer closed the stream early: cancel the chunks still running
                    # and end quietly (the task group would wrap GeneratorExit in a group).
                    outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A failure raised inside the task group arrives wrapped: unwrap a single one.
        errors = group.exceptions
        if len(errors) == 1:
            raise errors[0] from None
        raise
    finally:
        if progress is not None:
            progress.close()
        ledger.report(call.function_name, call.plan.n_chunks)
