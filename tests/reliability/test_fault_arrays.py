"""Arrays in containers and closures, large results, and every failure: no shared memory is left behind."""

from __future__ import annotations

from typing import Any


def test_errors_crashes_timeouts_and_ctrl_c_with_shared_arrays_and_results_leave_no_segment(run_scenario: Any) -> None:
    result = run_scenario("arrays-in-faults", timeout=90)
    # chunks [0, 1], [2, 3], ...: the sum of those items of arange, plus the closure's 1.0
    expected = [2.0, 6.0, 10.0, 14.0]
    assert result["outcomes"] == [
        expected,
        "ValueError",
        "WorkerCrashedError",
        "ChunkTimeoutError",
        "KeyboardInterrupt",
        expected,
    ]
    # The two arrays' copies are kept for the next call while the arrays live; results are not.
    assert result["kept_while_alive"] == 2
    assert result["left_after_gc"] == [], "and they go with the arrays"
    assert result["leaked"] == {}
