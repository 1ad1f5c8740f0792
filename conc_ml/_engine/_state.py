"""The bookkeeping of one call, without I/O: what to submit next and what each outcome means.

:class:`CallState` is fed events by a driver (the futures driver in :mod:`._sync`, the
anyio driver in :mod:`._async`) and answers with decisions: the next chunk to run, whether
a failed chunk runs again, which error a failure is. It never waits, never touches a pool
and never reads or writes a checkpoint: the drivers do, each in its own way, so that the
rules (window, deadline, retries, cancellation, error translation) are written once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NoReturn

from .._checkpoint import CallLedger, progress_note
from .._options import ParallelOptions
from .._runner import ChunkOutcome, ChunkTask
from .._split import Chunk, ChunkPlan
from ..backends import Backend
from ..errors import WorkerCrashedError
from ._errors import cancelled_by_backend, raise_failure, raise_translated, timeout_error

__all__ = ["CallState", "PreparedCall", "reporting"]


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
    #: done when the call is cancelled: the futures driver waits on it beside the chunks, to stop at once
    wake: concurrent.futures.Future[None] = dataclasses.field(default_factory=concurrent.futures.Future)
    #: the user's function, whose code gives remote tracebacks their source lines
    function: Callable[..., Any] | None = None

    def cancel(self) -> None:
        """Stop the call from any thread: queued chunks are dropped, running ones stopped where the backend can."""
        self.cancelled.set()
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.wake.set_result(None)


class CallState:
    """What one call has done and what it does next.

    :param call: the call.
    :param capacity: how many chunks may be submitted and unfinished at once.
    :param progress: told of each chunk delivered (a tqdm bar; see :func:`open_progress`), or ``None``.
    :param clock: seconds, monotonic (the deadline is measured with it).
    :param stopped_on_timeout: what a timeout does to running chunks, when the driver knows
        (default: what the backend's ``can_stop_running`` says).
    """

    def __init__(
        self,
        call: PreparedCall,
        capacity: int,
        progress: Any = None,
        clock: Callable[[], float] = time.monotonic,
        stopped_on_timeout: str | None = None,
    ):
        self.call = call
        self.capacity = max(1, capacity)
        self._clock = clock
        timeout = call.options.timeout
        self._deadline = None if timeout is None else clock() + timeout
        self._chunks = iter(call.plan.chunks)
        self._exhausted = False
        #: chunks submitted and not finished, by the driver's handle (a future, an index)
        self.in_flight: dict[Hashable, tuple[Chunk, ChunkTask]] = {}
        self.completed = 0
        #: how the runner is to be closed: the call did not end normally / running chunks go too
        self.abort = True
        self.stop_running = False
        self.progress = progress
        self._stopped_on_timeout = stopped_on_timeout

    # -- what to run next ---------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether the caller cancelled the call (from any thread)."""
        return self.call.cancelled.is_set()

    def wants_more(self) -> bool:
        """Whether the driver should submit another chunk before it waits."""
        return not self._exhausted and len(self.in_flight) < self.capacity and not self.cancelled

    def check_deadline(self) -> None:
        """Time out now if the deadline passed.

        For a driver whose runner may run a chunk as it is submitted (sequential): it
        finishes each one before any wait could time out.

        :raises ChunkTimeoutError: if the deadline passed.
        """
        if self._deadline is not None and self._clock() >= self._deadline:
            self.timed_out()

    def next_chunk(self) -> Chunk | None:
        """The next chunk of the input, or ``None`` at its end."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self._exhausted = True
        return chunk

    def task_for(self, chunk: Chunk) -> ChunkTask:
        """What a worker needs to run ``chunk``."""
        return self.call.make_task(chunk)

    def submitted(self, handle: Hashable, chunk: Chunk, task: ChunkTask) -> None:
        """Record that ``task`` runs, known to the driver as ``handle``."""
        self.in_flight[handle] = (chunk, task)

    def refused(self, error: Exception, chunk: Chunk, task: ChunkTask) -> bool:
        """The runner refused ``task``: ``True`` if it goes to a fresh runner, else raise what it means.

        A pool that broke under earlier chunks refuses new ones. With ``retries``, the chunk
        never ran, so it goes to a fresh pool uncounted; without, the crash of the chunk that
        broke the pool is reported (the one in flight first).
        """
        if self.call.ledger.retries and isinstance(self._translate(error, chunk), WorkerCrashedError):
            return True
        in_flight = sorted(self.in_flight.values(), key=lambda item: item[0].index)
        crashed, crashed_task = in_flight[0] if in_flight else (chunk, task)
        raise_translated(error, crashed, crashed_task, self.call, in_flight[1:])
        raise error

    # -- waiting ------------------------------------------------------------------------

    def time_left(self) -> float | None:
        """Seconds until the deadline (``None``: no timeout)."""
        return None if self._deadline is None else max(0.0, self._deadline - self._clock())

    def timed_out(self) -> NoReturn:
        """The deadline passed: running chunks are to be stopped where the backend can.

        :raises ChunkTimeoutError: always.
        """
        self.stop_running = self.call.backend.can_stop_running
        raise timeout_error(self.call, self.completed, self._stopped_on_timeout)

    # -- what came back -----------------------------------------------------------------

    def in_index_order(self, handles: set[Any]) -> list[Any]:
        """``handles`` of finished chunks, lowest chunk first (the order errors are reported in)."""
        return sorted(handles, key=lambda handle: self.in_flight[handle][0].index)

    def finished(self, handle: Hashable, outcome: ChunkOutcome) -> Chunk:
        """A chunk came back: its chunk, or raise its exception as its own type."""
        chunk, _ = self.in_flight.pop(handle)
        if outcome.failure is not None:
            raise_failure(outcome, chunk, self.call)
        return chunk

    def lost(self, handle: Hashable, error: BaseException) -> tuple[Chunk, ChunkTask]:
        """A chunk's future failed: the chunk and task to submit again, or raise what it means.

        :raises WorkerCrashedError: for a chunk the backend cancelled or whose worker died
            (once its retries are spent).
        """
        chunk, task = self.in_flight.pop(handle)
        if isinstance(error, concurrent.futures.CancelledError):
            # The drivers cancel only once they stop waiting: a cancel seen here came from the backend.
            raise cancelled_by_backend(chunk, self.call) from None
        if not isinstance(error, Exception):
            raise error
        if self.call.ledger.may_retry(self._translate(error, chunk), chunk):
            return chunk, task
        raise_translated(error, chunk, task, self.call, self.in_flight.values())
        raise error

    def delivered(self, chunk: Chunk, *, resumed: bool = False) -> None:
        """Count a chunk whose result goes to the caller now (computed, or loaded from the checkpoint)."""
        self.completed += 1
        if self.progress is not None:
            if resumed:
                self.progress.set_postfix_str(progress_note(self.call.ledger), refresh=False)
            self.progress.update(chunk.n_items)

    # -- the end ------------------------------------------------------------------------

    def ended(self) -> None:
        """Every chunk came back, or the caller cancelled: a cancelled caller stops running chunks too."""
        self.abort = self.cancelled
        self.stop_running = self.abort and self.call.backend.can_stop_running

    def failed(self, error: BaseException, *, interrupted: bool) -> None:
        """The call ends with ``error``: a user's error, a crash or a ``break`` drop only what is queued.

        Ctrl-C (a ``BaseException`` that is no ``GeneratorExit``, or a ``break`` that the
        interrupt watch says was Ctrl-C) stops running chunks on every backend, even one
        that cannot stop them cleanly: the thread backend then interrupts its threads, which
        would otherwise keep the interpreter from exiting until their chunks end.
        """
        if not isinstance(error, Exception | GeneratorExit) or interrupted:
            self.stop_running = True

    def _translate(self, error: BaseException, chunk: Chunk) -> BaseException | None:
        return self.call.backend.translate_error(error, chunk.index)


@contextlib.contextmanager
def reporting(call: PreparedCall) -> Iterator[Any]:
    """The call's progress bar (``None`` without ``progress=True``), closed with the call.

    As the call ends, whatever way, the ledger logs how many chunks came from the checkpoint.
    """
    progress = None
    if call.options.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=call.plan.n_items, unit="item", desc=call.function_name)
    try:
        yield progress
    finally:
        if progress is not None:
            progress.close()
        call.ledger.report(call.function_name, call.plan.n_chunks)
