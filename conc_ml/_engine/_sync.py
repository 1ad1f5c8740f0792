"""The futures driver: runs a call's chunks on a backend's pool and waits on their futures.

It feeds :class:`~conc_ml._engine._state.CallState` and does what the state cannot: it
submits, waits (``concurrent.futures.wait``), reads and writes the checkpoint, and gives
the pool back, stopping running chunks when the state says so.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Generator
from typing import Any

from .._interrupts import InterruptWatch
from .._left_calls import LeftCallFlag
from .._runner import ChunkOutcome, ChunkTask, run_chunk
from .._split import Chunk
from ._state import CallState, PreparedCall, reporting

__all__ = ["iter_outcomes"]

Outcomes = Generator[tuple[Chunk, ChunkOutcome], None, None]


class _LentExecutor:
    """The executor a backend lends one call, and what the call submits to it."""

    def __init__(self, call: PreparedCall, left_flag: LeftCallFlag | None):
        self._call = call
        self._run = run_chunk if left_flag is None else left_flag.wrap(run_chunk)
        self.executor = call.backend.open(call.workers, call.options.settings)

    def submit(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        return self.executor.submit(self._run, task)

    def renew(self) -> None:
        """Give back a pool that broke (loky marks it broken before it fails its futures) and take a fresh one."""
        self.close(abort=True, stop_running=False)
        self.executor = self._call.backend.open(self._call.workers, self._call.options.settings)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        self._call.backend.release(self.executor, abort=abort, stop_running=stop_running)


def iter_outcomes(call: PreparedCall) -> Outcomes:
    """Run the chunks of ``call`` and yield each one's outcome as it finishes.

    Chunks are submitted lazily, a window at a time, so that an iterator cut by
    ``chunk_size`` is never read far ahead. A chunk's exception is re-raised at once;
    whatever happens, pending chunks are cancelled and the pool is given back before this
    returns.
    """
    backend = call.backend
    # Chunks in another process check this flag before they start (see _left_calls).
    left_flag = LeftCallFlag() if backend.crosses_processes else None
    runner = _LentExecutor(call, left_flag)
    # Ctrl-C in the body of the caller's loop over ``.stream()`` reaches this generator as
    # GeneratorExit, as a ``break`` does: the watch tells the two apart.
    interrupts = InterruptWatch()
    with reporting(call) as progress:
        state = CallState(call, backend.max_in_flight_per_worker * call.workers, progress)
        try:
            while True:
                yield from _submit_what_fits(state, runner)
                if not state.in_flight or state.cancelled:
                    break
                yield from _deliver_finished(state, runner, _wait(state))
            state.ended()
        except BaseException as error:
            state.failed(error, interrupted=interrupts.interrupted())
            raise
        finally:
            interrupts.close()
            _give_back(state, runner, left_flag)


def _submit_what_fits(state: CallState, runner: _LentExecutor) -> Outcomes:
    """Submit chunks until the window is full; yield those that come from the checkpoint."""
    ledger = state.call.ledger
    while state.wants_more():
        state.check_deadline()
        chunk = state.next_chunk()
        if chunk is None:
            return
        resumed = ledger.resume(chunk)
        if resumed is not None:
            state.delivered(chunk, resumed=True)
            yield chunk, resumed
            continue
        task = state.task_for(chunk)
        try:
            future = runner.submit(task)
        except Exception as error:
            state.refused(error, chunk, task)
            runner.renew()
            future = runner.submit(task)
        state.submitted(future, chunk, task)


def _wait(state: CallState) -> set[concurrent.futures.Future[Any]]:
    """The futures that finished; none when the caller cancelled.

    :raises ChunkTimeoutError: if the deadline passed first.
    """
    waited: list[concurrent.futures.Future[Any]] = [*state.in_flight, state.call.wake]  # type: ignore[list-item]
    done, _ = concurrent.futures.wait(waited, timeout=state.time_left(), return_when=concurrent.futures.FIRST_COMPLETED)
    done.discard(state.call.wake)
    if state.cancelled:
        return set()
    if not done:
        state.timed_out()
    return done


def _deliver_finished(state: CallState, runner: _LentExecutor, done: set[concurrent.futures.Future[Any]]) -> Outcomes:
    ledger = state.call.ledger
    for future in state.in_index_order(done):
        try:
            outcome = future.result()
        except BaseException as error:
            chunk, task = state.lost(future, error)
            try:
                retried = runner.submit(task)
            except Exception:
                runner.renew()
                retried = runner.submit(task)
            state.submitted(retried, chunk, task)
            continue
        chunk = state.finished(future, outcome)
        ledger.keep(chunk, outcome)
        state.delivered(chunk)
        yield chunk, outcome


def _give_back(state: CallState, runner: _LentExecutor, left_flag: LeftCallFlag | None) -> None:
    pending: list[concurrent.futures.Future[Any]] = list(state.in_flight)  # type: ignore[arg-type]
    # Stopping running chunks cancels the queued ones with them: cancelling them here first
    # would make loky's manager thread fail (and print a traceback) as it fails every
    # pending future of the pool it shuts down.
    if not state.stop_running:
        for future in pending:
            future.cancel()
        if left_flag is not None:
            # Left by ``break`` or a failure: what the pool could not cancel is skipped.
            left_flag.raise_for(pending)
    try:
        runner.close(abort=state.abort, stop_running=state.stop_running)
    finally:
        for future in pending:
            future.cancel()  # what a backend that cannot stop chunks left queued
