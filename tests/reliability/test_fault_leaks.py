"""A thousand calls with a large broadcast array leave the process holding what it held before."""

from __future__ import annotations

from typing import Any

import pytest

CALLS = 1000


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sequential", "thread", "process", "async"])
def test_a_thousand_calls_leak_no_fd_thread_process_segment_or_temp_file(run_scenario: Any, backend: str) -> None:
    result = run_scenario("repeated-calls", backend, str(CALLS), timeout=110)
    assert result["leaked"] == {}
    # weights[i] == i: chunks [1, 2] and [3, 4] of every call
    assert result["results"] == [[3.0, 7.0]]


def test_timeouts_crashes_and_ctrl_c_with_large_tasks_in_flight_leak_nothing(run_scenario: Any) -> None:
    # A killed pool used to leave loky's queue feeder thread blocked on a half-sent task,
    # with its pipe and semaphores, once per fault.
    result = run_scenario("faults-leave-nothing", "2")
    assert result["errors"] == []
    assert result["leaked"] == {}
