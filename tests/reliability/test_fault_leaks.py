"""A thousand calls with a large broadcast array leave the process holding what it held before."""

from __future__ import annotations

from typing import Any

import pytest

CALLS = 1000
BACKENDS = ("sequential", "thread", "process", "async")


@pytest.fixture(scope="module")
def repeated_calls(run_scenario: Any) -> dict[str, Any]:
    # One process for every backend: a census before and after each backend's calls.
    return run_scenario("repeated-calls", str(CALLS), *BACKENDS, timeout=110)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thousand_calls_leak_no_fd_thread_process_segment_or_temp_file(
    repeated_calls: dict[str, Any], backend: str
) -> None:
    outcome = repeated_calls[backend]
    assert outcome["leaked"] == {}
    # weights[i] == i: chunks [1, 2] and [3, 4] of every call
    assert outcome["results"] == [[3.0, 7.0]]


def test_timeouts_crashes_and_ctrl_c_with_large_tasks_in_flight_leak_nothing(run_scenario: Any) -> None:
    # A killed pool used to leave loky's queue feeder thread blocked on a half-sent task,
    # with its pipe and semaphores, once per fault.
    result = run_scenario("faults-leave-nothing", "1")
    assert result["errors"] == []
    assert result["leaked"] == {}
