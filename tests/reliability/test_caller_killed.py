"""A caller killed with SIGKILL takes everything it started with it, within seconds.

The OOM killer, a job scheduler or a crashed notebook kernel give no chance to clean up:
the fork server and the workers must notice on their own, not linger for loky's idle
timeout (or for good) holding memory, loky's semaphores in ``/dev/shm``, and the caller's
stdout and stderr (a parent reading them would wait for ever). Nor may the caller's
segments stay in ``/dev/shm``, those of a result that a worker was sending included, nor
the flag that tells the workers to skip the chunks of a call the caller left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from .programs import program_environment, write_program

GONE_WITHIN = 10.0
START_WITHIN = 60.0

_PROGRAM = """
    import os, sys, time
    import conc_ml

    def busy(items, marker):
        with open(marker, "a") as file:
            file.write(f"{os.getpid()}\\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return items

    class Stuck:
        # Stops a result half-way through being sent: its large array is in /dev/shm already.

        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            with open(self.marker, "a") as file:
                file.write(f"{os.getpid()}\\n")
            time.sleep(120)
            return (Stuck, (self.marker,))

    def returning(items, marker):
        import numpy as np

        return [(np.ones(1_000_000), Stuck(marker))]

    def first_when_another_runs(items, marker):
        if items == [1]:
            deadline = time.monotonic() + 60
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.01)
            return items
        with open(marker, "a") as file:
            file.write(f"{os.getpid()}\\n")
        time.sleep(120)
        return items

    marker, state = sys.argv[1], sys.argv[2]
    work = conc_ml.parallel(backend="process", workers=2, chunks=2)(busy if state == "running" else returning)
    if state == "left":
        # Left with chunks in flight: their "left" flag is up in /dev/shm while they run.
        left = conc_ml.parallel(backend="process", workers=2, chunks=4)(first_when_another_runs)
        for _ in left.stream([1, 2, 3, 4], marker):
            break
        import glob
        flags = glob.glob(f"/dev/shm/conc-ml-{os.getpid()}-left-*")
        with open(marker, "a") as file:
            file.write(f"flags {len(flags)}\\n")
        time.sleep(120)
    elif state == "idle":
        conc_ml.parallel(backend="process", workers=2, chunks=2)(len)([1, 2])
        with open(marker, "a") as file:
            file.write("idle\\n")
        time.sleep(120)
    else:
        work([1, 2], marker)
"""


def _is_gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(marker: Path, ready: Callable[[list[str]], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_WITHIN
    while not (marker.exists() and ready(marker.read_text().splitlines())):
        assert process.poll() is None, f"the program ended early:\n{process.communicate()}"
        assert time.monotonic() < deadline, "the program did not get going"
        time.sleep(0.02)


@pytest.mark.parametrize("state", ["running", "idle", "returning", "left"])
@pytest.mark.parametrize("method", ["forkserver", "loky"])
def test_a_killed_caller_leaves_no_process_pipe_or_semaphore(tmp_path: Path, method: str, state: str) -> None:
    program = write_program(tmp_path, _PROGRAM)
    marker = tmp_path / "started"
    process = subprocess.Popen(
        [sys.executable, str(program), str(marker), state],
        cwd=tmp_path,
        env=program_environment(CONC_ML_START_METHOD=method, TMPDIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    descendants: list[psutil.Process] = []
    try:
        if state == "left":
            # The flags the caller saw once it had left the call (chunks write their pids too).
            _wait_for(marker, lambda lines: any(line.startswith("flags") for line in lines), process)
            assert "flags 1" in marker.read_text().splitlines()
        else:
            _wait_for(marker, lambda lines: len(lines) >= (1 if state == "idle" else 2), process)
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 2
        os.kill(process.pid, signal.SIGKILL)
        # Returns only once every holder of the program's stdout and stderr is gone.
        process.communicate(timeout=GONE_WITHIN)
        deadline = time.monotonic() + GONE_WITHIN
        while not all(_is_gone(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = [p.pid for p in descendants if not _is_gone(p)]
    finally:
        for child in descendants:
            if not _is_gone(child):
                child.kill()
        process.kill()
        process.communicate()
    assert not alive, f"processes outlived their killed caller: {alive}"
    left = [name for name in os.listdir("/dev/shm") if f"-{process.pid}-" in name]
    assert not left, f"left in /dev/shm: {left}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["program.py", "started"]
