"""One Ctrl-C and the program is back, whatever its calls are blocked in; cancelled work stops.

Each scenario of ``cancel_scenarios.py`` runs in a process of its own. Ctrl-C tests wait
until its calls are blocked (in ``socket.recv``, which no exception can interrupt, or in a
long ``time.sleep``), send one SIGINT, and check that the process ends with a plain
``KeyboardInterrupt`` within :data:`STOP_WITHIN` seconds (the promise is 2 s; the bound
leaves room for a loaded machine) and leaves no worker process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from .census import is_resource_tracker
from .conftest import parse_result, scenario_environment

SCRIPT = Path(__file__).with_name("cancel_scenarios.py")
STOP_WITHIN = 5.0
START_WITHIN = 60.0
RUN_WITHIN = 60.0


def _command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), name, *args]


def _wait_for_marker(process: subprocess.Popen[str], marker: Path, lines: int) -> None:
    deadline = time.monotonic() + START_WITHIN
    while not (marker.exists() and len(marker.read_text().splitlines()) >= lines):
        if process.poll() is not None:
            raise AssertionError(f"the scenario ended before it was ready:\n{process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the scenario was not ready within {START_WITHIN} s")
        time.sleep(0.02)


def _is_gone(process: psutil.Process) -> bool:
    # An orphan's zombie waits for init to reap it: it runs no more, so it counts as gone.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive(processes: list[psutil.Process], within: float) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _is_gone(p)]
    for survivor in alive:
        survivor.kill()
    return alive


def interrupt_scenario(tmp_path: Path, name: str, *args: str, ready_lines: int = 1) -> dict[str, Any]:
    """Run a scenario until it is blocked, send it one SIGINT; return how it ended."""
    marker = tmp_path / "marker"
    process = subprocess.Popen(
        _command(name, str(marker), *args),
        env=scenario_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_marker(process, marker, ready_lines)
        workers = [p for p in psutil.Process(process.pid).children(recursive=True) if not is_resource_tracker(p)]
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=STOP_WITHIN)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return {
        "stdout": stdout,
        "stderr": stderr,
        "returncode": process.returncode,
        "stopped_after": stopped_after,
        "workers_left": _alive(workers, within=STOP_WITHIN),
    }


def _assert_plain_interrupt(ended: dict[str, Any]) -> None:
    assert "RESULT" not in ended["stdout"]
    assert ended["returncode"] in (-signal.SIGINT, 1), ended["stderr"]
    last_line = ended["stderr"].rstrip().splitlines()[-1]
    assert last_line == "KeyboardInterrupt", ended["stderr"]
    assert "ExceptionGroup" not in ended["stderr"]
    assert not ended["workers_left"], "workers orphaned after Ctrl-C"


@pytest.mark.parametrize("how", ["map", "plain-timeout", "amap-asyncio", "amap-trio", "async-map-trio"])
def test_one_ctrl_c_ends_io_bound_calls_blocked_in_recv(tmp_path: Path, how: str) -> None:
    ready = 2 if how in ("map", "amap-asyncio", "amap-trio", "async-map-trio") else 1
    _assert_plain_interrupt(interrupt_scenario(tmp_path, "io-bound-recv", how, ready_lines=ready))


def test_one_ctrl_c_ends_a_thread_backend_chunk_blocked_in_recv(tmp_path: Path) -> None:
    _assert_plain_interrupt(interrupt_scenario(tmp_path, "thread-backend-recv", ready_lines=2))


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_ctrl_c_in_the_loop_body_of_a_stream_stops_the_running_chunks(tmp_path: Path, backend: str) -> None:
    # Ready when the three chunks have started and the consumer is in its loop body.
    ended = interrupt_scenario(tmp_path, "stream-body", backend, ready_lines=4)
    _assert_plain_interrupt(ended)


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_ctrl_c_while_awaiting_a_process_call_stops_its_chunks(tmp_path: Path, library: str) -> None:
    # Ready when both chunks have started in their workers.
    ended = interrupt_scenario(tmp_path, "await-until-ctrl-c", library, ready_lines=2)
    _assert_plain_interrupt(ended)


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_ctrl_c_in_the_loop_body_of_an_async_stream_stops_the_running_chunks(tmp_path: Path, library: str) -> None:
    # Ready when the three chunks have started and the consumer is in its loop body.
    ended = interrupt_scenario(tmp_path, "async-stream-body", library, ready_lines=4)
    _assert_plain_interrupt(ended)


def test_a_call_stuck_in_recv_never_holds_map_past_its_timeout(tmp_path: Path) -> None:
    completed = subprocess.run(
        _command("io-bound-map-timeout", str(tmp_path / "marker")),
        env=scenario_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=RUN_WITHIN,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = parse_result(completed.stdout)
    assert result["results"] == ["TimeoutError"] * 5
    assert all("abandoned on its daemon thread" in message for message in result["messages"])


def _run(tmp_path: Path, name: str, *args: str) -> tuple[dict[str, Any], str]:
    completed = subprocess.run(
        _command(name, str(tmp_path / "marker"), *args),
        env=scenario_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=RUN_WITHIN,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return parse_result(completed.stdout), completed.stderr


def test_chunks_queued_ahead_do_not_run_after_break_from_a_stream(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "break-from-stream", "process")
    # Chunks 0 and 1 ran, and 2 and 3 may have started as they ended, before the consumer
    # got to its break; none after them may start once it has left.
    assert {0, 1} <= set(result["started"]) - {100, 101, 200, 201} <= {0, 1, 2, 3}
    assert {200, 201} <= set(result["started"])  # the next call ran


def test_chunks_queued_ahead_do_not_run_after_another_chunk_failed(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "failure-cancels-the-others")
    # Chunk 0 failed; 1 to 3 may have started before the caller saw it (or been skipped).
    assert 0 in result["started"]
    assert set(result["started"]) <= {0, 1, 2, 3}


def test_cancelling_await_on_the_process_backend_stops_its_chunks(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "cancel-await")
    assert result["still_running"] == []
    assert result["next_call"] == [[2], [3]]


def test_a_timeout_with_chunks_queued_behind_the_running_ones_prints_nothing(tmp_path: Path) -> None:
    result, stderr = _run(tmp_path, "timeout-more-chunks-than-workers")
    assert result["errors"] == ["ChunkTimeoutError"] * 3
    assert result["next_call"] == [[1], [2]]
    assert "Traceback" not in stderr, stderr
    assert "Exception in thread" not in stderr, stderr


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_an_async_backend_timeout_says_its_coroutines_were_cancelled(library: str) -> None:
    import anyio

    from conc_ml import ChunkTimeoutError, parallel

    cancelled: list[int] = []

    async def forever(items: list[int]) -> list[int]:
        try:
            await anyio.sleep(60)
        finally:
            cancelled.extend(items)
        return items

    func = parallel(backend="async", workers=2, chunks=2, timeout=0.05)(forever)
    with pytest.raises(ChunkTimeoutError) as caught:
        anyio.run(func, [1, 2], backend=library)
    assert "the running chunks were cancelled" in str(caught.value)
    assert "cannot be stopped" not in str(caught.value)
    assert sorted(cancelled) == [1, 2]
