"""Measure how fast one Ctrl-C ends a program, whatever its calls are doing, and what it leaves.

Not a test (timings belong here, not in asserts): ``python tests/reliability/measure_ctrl_c.py
[ROUNDS] [pid|group]``. Each case runs a scenario of the reliability tests until its calls
are blocked (chunks asleep for a minute, calls stuck in ``socket.recv``, a consumer in the
body of its stream loop), sends one SIGINT to the program (``pid``, the default) or to its
process group as a terminal does (``group``), ROUNDS times. Printed per case: the median
and largest time from the signal to the program's exit; the rounds that did not end in a
plain ``KeyboardInterrupt`` within 30 s; and what was left: processes 5 s after the exit,
entries named after the program's pid in /dev/shm, files in its temporary folder.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from programs import program_environment

HERE = Path(__file__).resolve().parent

FAULT = str(HERE / "fault_scenarios.py")
CANCEL = str(HERE / "cancel_scenarios.py")

#: name -> (script, arguments before the marker, arguments after it, marker lines that mean "blocked")
CASES: dict[str, tuple[str, list[str], list[str], int]] = {
    **{
        f"call, {backend}": (FAULT, ["interrupt", backend], [], 1)
        for backend in ("sequential", "thread", "process", "async-coroutine", "dask")
    },
    "@io_bound map, blocked in recv": (CANCEL, ["io-bound-recv"], ["map"], 2),
    "@io_bound amap on trio, recv": (CANCEL, ["io-bound-recv"], ["amap-trio"], 2),
    "@io_bound async map on trio": (CANCEL, ["io-bound-recv"], ["async-map-trio"], 2),
    "thread chunk blocked in recv": (CANCEL, ["thread-backend-recv"], [], 2),
    "stream loop body, process": (CANCEL, ["stream-body"], ["process"], 4),
    "stream loop body, thread": (CANCEL, ["stream-body"], ["thread"], 4),
    "async stream body, process, asyncio": (CANCEL, ["async-stream-body"], ["asyncio"], 4),
    "async stream body, process, trio": (CANCEL, ["async-stream-body"], ["trio"], 4),
    "await process call, asyncio": (CANCEL, ["await-until-ctrl-c"], ["asyncio"], 2),
    "await process call, trio": (CANCEL, ["await-until-ctrl-c"], ["trio"], 2),
}


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def one_round(
    folder: Path, case: tuple[str, list[str], list[str], int], to_group: bool
) -> tuple[float | None, bool, int, int, int]:
    script, before, after, ready = case
    marker = folder / "marker"
    marker.unlink(missing_ok=True)
    temp = folder / "tmp"
    temp.mkdir(exist_ok=True)
    scratch = folder / "dask-scratch"  # dask keeps lock files there for good, by design
    if script == FAULT:
        command = [sys.executable, script, *before, str(marker), *after]
    else:
        command = [sys.executable, script, before[0], str(marker), *after]
    process = subprocess.Popen(
        command,
        env=program_environment(TMPDIR=str(temp), DASK_TEMPORARY_DIRECTORY=str(scratch)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (marker.exists() and len(marker.read_text().splitlines()) >= ready):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"{command} did not get going: {process.communicate()[1]}")
        time.sleep(0.01)
    time.sleep(0.2)  # the chunks are in their sleep or recv
    descendants = psutil.Process(process.pid).children(recursive=True)
    sent = time.monotonic()
    (os.killpg if to_group else os.kill)(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=30)
        elapsed: float | None = time.monotonic() - sent
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        elapsed = None
    plain = elapsed is not None and "\nKeyboardInterrupt\n" in stderr + "\n" and "Error: internal error" not in stderr
    while not all(_gone(p) for p in descendants) and time.monotonic() - sent < 5:
        time.sleep(0.01)
    alive = [p for p in descendants if not _gone(p)]
    for p in alive:
        p.kill()
    time.sleep(0.5)  # the resource tracker deletes what was registered once the others are gone
    shm = [n for n in os.listdir("/dev/shm") if f"-{process.pid}-" in n]
    left = sorted(temp.rglob("*"))
    for path in sorted(temp.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    return elapsed, plain, len(alive), len(shm), len(left)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    to_group = len(sys.argv) > 2 and sys.argv[2] == "group"
    print(f"one SIGINT to the {'process group' if to_group else 'process'}; {rounds} rounds per case", flush=True)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for label, case in CASES.items():
            results = [one_round(folder, case, to_group) for _ in range(rounds)]
            times = [r[0] for r in results if r[0] is not None]
            timing = f"median {statistics.median(times):.2f} s, max {max(times):.2f} s" if times else "never"
            print(
                f"{label:38} Ctrl-C -> exit {timing}; not a plain KeyboardInterrupt in 30 s: "
                f"{sum(not r[1] for r in results)}; left: {sum(r[2] for r in results)} processes, "
                f"{sum(r[3] for r in results)} /dev/shm entries, {sum(r[4] for r in results)} temp files",
                flush=True,
            )


if __name__ == "__main__":
    main()
