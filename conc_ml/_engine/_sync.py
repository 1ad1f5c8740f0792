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
from .._runner import ChunkOutcome, ChunkTask
from .._split import Chunk
from ..backends import ChunkRunner
from ._state import CallState, PreparedCall, reporting

__all__ = ["iter_outcomes"]

Outcomes = Generator[tuple[Chunk, ChunkOutcome], None, None]


class _Runner:
    """The runner the backend opened for the call, replaced by a fresh one when it breaks."""

    def __init__(self, call: PreparedCall):
        self._call = call
        self._runner: ChunkRunner = call.backend.open_runner(call.workers, call.options.settings)
        self.capacity = self._runner.capacity

    def submit(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        return self._runner.submit(task)

    def submit_to_fresh_runner(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        """Close a runner that broke (a pool whose worker died) and submit ``task`` to a new one."""
        self._runner.close(abort=True, stop_running=False)
        self._runner = self._call.backend.open_runner(self._call.workers, self._call.options.settings)
        return self._runner.submit(task)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        self._runner.close(abort=abort, stop_running=stop_running)


def iter_outcomes(call: PreparedCall) -> Outcomes:
    """Run the chunks of ``call`` and yield each one's outcome as it finishes.

    Chunks are submitted lazily, at most the runner's capacity at a time, so that an
    iterator cut by ``chunk_size`` is never read far ahead. A chunk's exception is re-raised at once;
    whatever happens, pending chunks are cancelled and the pool is given back before this
    returns.
    """
    runner = _Runner(call)
    # Ctrl-C in the body of the caller's loop over ``.stream()`` reaches this generator as
    # GeneratorExit, as a ``break`` does: the watch tells the two apart.
    interrupts = InterruptWatch()
    with reporting(call) as progress:
        state = CallState(call, runner.capacity, progress)
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
            _give_back(state, runner)


def _submit_what_fits(state: CallState, runner: _Runner) -> Outcomes:
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
            future = runner.submit_to_fresh_runner(task)
        state.submitted(future, chunk, task)


def _wait(state: CallState) -> set[concurrent.futures.Future[Any]]:
    """The futures that finished; none when the caller cancelled.

    :raises ChunkTimeoutError: if the deadline passed first.
    """
    in_flight: list[concurrent.futures.Future[Any]] = list(state.in_flight)  # type: ignore[arg-type]
    # Chunks that finished as they were submitted (sequential), or while the caller was
    # busy with the previous results, need no wait.
    done = {future for future in in_flight if future.done()}
    if not done and not state.cancelled:
        done, _ = concurrent.futures.wait(
            [*in_flight, state.call.wake], timeout=state.time_left(), return_when=concurrent.futures.FIRST_COMPLETED
        )
        done.discard(state.call.wake)
    if state.cancelled:
        return set()
    if not done:
        state.timed_out()
    return done


def _deliver_finished(state: CallState, runner: _Runner, done: set[concurrent.futures.Future[Any]]) -> Outcomes:
    ledger = state.call.ledger
    for future in state.in_index_order(done):
        try:
            outcome = future.result()
        except BaseException as error:
            chunk, task = state.lost(future, error)
            try:
                retried = runner.submit(task)
            except Exception:
                retried = runner.submit_to_fresh_runner(task)
            state.submitted(retried, chunk, task)
            continue
        chunk = state.finished(future, outcome)
        ledger.keep(chunk, outcome)
        state.delivered(chunk)
        yield chunk, outcome


def _give_back(state: CallState, runner: _Runner) -> None:
    pending: list[concurrent.futures.Future[Any]] = list(state.in_flight)  # type: ignore[arg-type]
    # Stopping running chunks cancels the queued ones with them: cancelling them here first
    # would make loky's manager thread fail (and print a traceback) as it fails every
    # pending future of the pool it shuts down.
    if not state.stop_running:
        for future in pending:
            future.cancel()
    try:
        runner.close(abort=state.abort, stop_running=state.stop_running)
    finally:
        for future in pending:
            future.cancel()  # what a backend that cannot stop chunks left queued
