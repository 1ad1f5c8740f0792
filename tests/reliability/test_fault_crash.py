"""A worker that dies (``os._exit``, SIGKILL as the OOM killer sends, a segfault) is a clear error."""

from __future__ import annotations

import signal
from typing import Any

import pytest

#: the chunk of ``range(8)`` cut in 4 that holds the crashing item (5)
CRASHING_CHUNK = 2
WAYS_TO_DIE = ("exit", "sigkill", "segfault")


@pytest.fixture(scope="module")
def crashes(run_scenario: Any) -> dict[str, Any]:
    # One process for all three: each crash rebuilds the pool, which the next one uses.
    return run_scenario("crash", *WAYS_TO_DIE)  # type: ignore[no-any-return]


def _chunks_named(outcome: dict[str, Any]) -> set[int]:
    named = {outcome["chunk"]}
    for note in outcome["notes"]:
        if not note.startswith("conc-ml: chunks "):
            continue  # another note (how retries= would run the chunk again)
        listed = note.split("conc-ml: chunks ")[1].split(" were in flight")[0]
        named |= {int(index) for index in listed.split(", ")}
    return named


@pytest.mark.parametrize(
    ("how", "exitcode", "said"),
    [
        ("exit", 7, "with exit code 7"),
        ("sigkill", -signal.SIGKILL, "killed by SIGKILL (exit code -9)"),
        ("segfault", -signal.SIGSEGV, "killed by SIGSEGV (exit code -11)"),
    ],
)
def test_worker_death_is_a_worker_crashed_error_and_the_next_call_works(
    crashes: dict[str, Any], how: str, exitcode: int, said: str
) -> None:
    outcome = crashes[how]
    assert outcome["type"] == "WorkerCrashedError"
    assert outcome["is_runtime_error"]
    assert outcome["exitcode"] == exitcode
    assert said in outcome["message"]
    assert f"chunk {outcome['chunk']}" in outcome["message"]
    # A broken pool fails every chunk in flight alike: the crashing one is among those named.
    assert CRASHING_CHUNK in _chunks_named(outcome)
    assert outcome["next_call"] == [1, 5, 9, 13]


def test_sigkill_names_the_oom_killer_and_what_to_do(crashes: dict[str, Any]) -> None:
    message = crashes["sigkill"]["message"]
    assert "OOM killer" in message
    assert "use more chunks" in message
    assert "OOM" not in crashes["exit"]["message"]
