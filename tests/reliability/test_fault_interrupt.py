"""Ctrl-C in the caller stops the call at once, on every backend, and leaves nothing running.

A scenario process runs a call whose chunks would take a minute; once a chunk has
started, the test sends SIGINT to the process alone, or to its whole process group as a
terminal does, and checks that it ends with ``KeyboardInterrupt`` within 5 s and that
none of its descendants (workers, resource tracker) survive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from .census import is_resource_tracker
from .conftest import scenario_command, scenario_environment

STOP_WITHIN = 5.0
START_WITHIN = 60.0
TRACKER_EXIT_WITHIN = 30.0


def _is_gone(process: psutil.Process) -> bool:
    # An orphan's zombie waits for init to reap it: it runs no more, so it counts as gone.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _survivors(processes: list[psutil.Process], *, within: float) -> list[psutil.Process]:
    """The processes still running after ``within`` seconds (killed then, not left behind)."""
    deadline = time.monotonic() + within
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _is_gone(p)]
    for survivor in alive:
        survivor.kill()
    return alive


def _wait_for_start(process: subprocess.Popen[str], marker: Path) -> None:
    deadline = time.monotonic() + START_WITHIN
    while not (marker.exists() and marker.read_text()):
        if process.poll() is not None:
            raise AssertionError(f"the scenario ended before its chunks started:\n{process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no chunk started within {START_WITHIN} s")
        time.sleep(0.02)


@pytest.mark.parametrize("to_group", [False, True], ids=["to-pid", "to-group"])
@pytest.mark.parametrize(
    "backend", ["sequential", "thread", "process", "async", "async-coroutine", "io-bound-threads", "io-bound-async"]
)
def test_ctrl_c_stops_the_call_and_leaves_no_process(tmp_path: Path, backend: str, to_group: bool) -> None:
    marker = tmp_path / "started"
    process, descendants, stdout, stderr = _interrupt(
        scenario_command("interrupt", backend, str(marker)), scenario_environment(tmp_path), marker, to_group
    )
    assert "RESULT" not in stdout
    assert process.returncode in (-signal.SIGINT, 1), stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    workers = [p for p in descendants if not is_resource_tracker(p)]
    trackers = [p for p in descendants if is_resource_tracker(p)]
    assert not _survivors(workers, within=STOP_WITHIN), "workers orphaned after Ctrl-C"
    # A resource tracker outlives its caller a moment on purpose: it deletes what the
    # caller left registered, then exits.
    assert not _survivors(trackers, within=TRACKER_EXIT_WITHIN), "resource tracker orphaned after Ctrl-C"
    left = [entry for entry in os.listdir("/dev/shm") if entry.startswith(f"conc-ml-{process.pid}-")]
    assert not left, f"segments left in /dev/shm: {left}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["started"]


@pytest.mark.parametrize("to_group", [False, True], ids=["to-pid", "to-group"])
def test_ctrl_c_stops_a_call_on_the_embedded_dask_cluster_without_waiting_for_its_workers(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, to_group: bool
) -> None:
    """dask cannot stop a running task: its nanny would give the worker 4 s, warn, then kill it.

    The embedded cluster is conc-ml's own, and nobody waits for the chunk at exit: its
    workers are given half a second, and the program ends within the bound.
    """
    pytest.importorskip("distributed")
    marker = tmp_path / "started"
    env = scenario_environment(tmp_path)
    # dask keeps lock files in its scratch folder for good, by design: not in the checked folder.
    env["DASK_TEMPORARY_DIRECTORY"] = str(tmp_path_factory.mktemp("dask-scratch"))
    process, descendants, _, stderr = _interrupt(
        scenario_command("interrupt", "dask", str(marker)), env, marker, to_group
    )
    assert process.returncode in (-signal.SIGINT, 1), stderr
    assert "\nKeyboardInterrupt\n" in stderr, stderr
    assert "still alive after" not in stderr, stderr
    assert not _survivors(descendants, within=STOP_WITHIN), "dask workers orphaned after Ctrl-C"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["started"]


def _interrupt(
    command: list[str], env: dict[str, str], marker: Path, to_group: bool
) -> tuple[subprocess.Popen[str], list[psutil.Process], str, str]:
    """Start ``command``, send one SIGINT once it has started, and wait (bounded) for it to end.

    Gives the process, its descendants just before the signal, and its stdout and stderr.
    """
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _wait_for_start(process, marker)
        descendants = psutil.Process(process.pid).children(recursive=True)
        if to_group:
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=STOP_WITHIN)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process, descendants, stdout, stderr
