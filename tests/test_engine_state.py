"""The engine's bookkeeping of one call, driven by hand: no pool, no event loop, no clock but ours."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from conc_ml import ChunkTimeoutError, WorkerCrashedError
from conc_ml._checkpoint import CallLedger
from conc_ml._engine._state import CallState, PreparedCall
from conc_ml._options import ParallelOptions
from conc_ml._runner import ChunkFailure, ChunkOutcome, ChunkTask
from conc_ml._split import Chunk, plan_chunks
from conc_ml.backends import get_backend


class PoolBrokenError(RuntimeError):
    pass


class CrashingBackend:
    """What the state asks of a backend: its capabilities and its error translation."""

    crosses_processes = True
    can_stop_running = True

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        if isinstance(error, PoolBrokenError):
            return WorkerCrashedError(f"a worker died running chunk {chunk}", chunk=chunk)
        return None


def _call(backend: Any, *, n_items: int = 6, chunks: int = 3, retries: int = 0, timeout: float | None = None) -> Any:
    def make_task(chunk: Chunk) -> ChunkTask:
        return ChunkTask(func=sum, args=tuple(chunk.values), kwargs={}, index=chunk.index)

    return PreparedCall(
        function_name="total",
        options=ParallelOptions(chunks=chunks, retries=retries, timeout=timeout),
        backend_name="test",
        backend=backend,
        workers=2,
        plan=plan_chunks([list(range(n_items))], ["items"], chunks=chunks, chunk_size=None, workers=2),
        make_task=make_task,
        ledger=CallLedger(retries=retries),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _submit_next(state: CallState) -> tuple[Chunk, ChunkTask]:
    chunk = state.next_chunk()
    assert chunk is not None
    task = state.task_for(chunk)
    state.submitted(chunk.index, chunk, task)
    return chunk, task


def test_the_window_holds_at_most_capacity_chunks_and_the_input_ends() -> None:
    state = CallState(_call(CrashingBackend()), capacity=2)
    _submit_next(state)
    assert state.wants_more()
    _submit_next(state)
    assert not state.wants_more()
    chunk = state.finished(0, ChunkOutcome(0, 1, None, "here"))
    state.delivered(chunk)
    assert state.wants_more()
    _submit_next(state)
    assert state.next_chunk() is None
    assert not state.wants_more()
    assert state.completed == 1


def test_a_cancelled_call_submits_nothing_more() -> None:
    call = _call(CrashingBackend())
    state = CallState(call, capacity=3)
    call.cancel()
    assert not state.wants_more()
    state.ended()
    assert state.abort
    assert state.stop_running  # the backend can stop its running chunks: a cancelled call does


def test_a_chunks_exception_comes_back_as_its_own_type_with_a_note() -> None:
    state = CallState(_call(CrashingBackend()), capacity=3)
    _submit_next(state)
    failure = ChunkFailure(KeyError("missing"), "Traceback (most recent call last):\n...")
    with pytest.raises(KeyError) as raised:
        state.finished(0, ChunkOutcome(0, None, failure, "pid 1"))
    assert "raised in chunk 0 of 3 (2 items) of total() on backend 'test', worker pid 1" in raised.value.__notes__[0]


def test_a_crash_is_retried_then_reported_with_the_attempts() -> None:
    state = CallState(_call(CrashingBackend(), retries=1), capacity=3)
    chunk, task = _submit_next(state)
    assert state.lost(0, PoolBrokenError("died")) == (chunk, task)
    state.submitted("again", chunk, task)
    with pytest.raises(WorkerCrashedError, match="died running chunk 0") as raised:
        state.lost("again", PoolBrokenError("died again"))
    assert any("attempted 2 time(s) (retries=1)" in note for note in raised.value.__notes__)


def test_a_chunk_the_backend_cancelled_is_an_error_not_a_gap() -> None:
    state = CallState(_call(CrashingBackend()), capacity=3)
    _submit_next(state)
    with pytest.raises(WorkerCrashedError, match="cancelled by backend 'test'"):
        state.lost(0, concurrent.futures.CancelledError())


def test_a_refused_submission_goes_to_a_fresh_runner_only_with_retries() -> None:
    with_retries = CallState(_call(CrashingBackend(), retries=2), capacity=3)
    chunk = with_retries.next_chunk()
    assert chunk is not None
    assert with_retries.refused(PoolBrokenError("broken"), chunk, with_retries.task_for(chunk))

    without = CallState(_call(CrashingBackend()), capacity=3)
    _submit_next(without)
    refused = without.next_chunk()
    assert refused is not None
    # The crash reported is that of the chunk in flight, which broke the pool.
    with pytest.raises(WorkerCrashedError, match="running chunk 0"):
        without.refused(PoolBrokenError("broken"), refused, without.task_for(refused))


def test_the_deadline_is_measured_on_the_drivers_clock_and_stops_what_can_be_stopped() -> None:
    clock = Clock()
    state = CallState(_call(CrashingBackend(), timeout=5.0), capacity=3, clock=clock)
    state.check_deadline()
    clock.now += 4.0
    assert state.time_left() == pytest.approx(1.0)
    clock.now += 1.0
    with pytest.raises(ChunkTimeoutError, match=r"total\(\) timed out after 5 s with 0 of 3 chunks done"):
        state.check_deadline()
    assert state.stop_running


def test_a_timeout_on_a_backend_that_cannot_stop_chunks_says_they_run_on() -> None:
    state = CallState(_call(get_backend("thread"), timeout=1.0), capacity=3, clock=lambda: 0.0)
    with pytest.raises(ChunkTimeoutError, match="cannot be stopped on backend 'test' and finish in the background"):
        state.timed_out()
    assert not state.stop_running


def test_ctrl_c_stops_running_chunks_and_a_users_error_does_not() -> None:
    state = CallState(_call(get_backend("thread")), capacity=3)
    state.failed(ValueError("the user's"), interrupted=False)
    assert not state.stop_running
    state.failed(GeneratorExit(), interrupted=True)  # Ctrl-C in the body of a loop over .stream()
    assert state.stop_running
    other = CallState(_call(get_backend("thread")), capacity=3)
    other.failed(KeyboardInterrupt(), interrupted=False)
    assert other.stop_running
