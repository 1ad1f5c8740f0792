"""Measure what a caller killed with SIGKILL leaves behind, and how fast it goes.

Not a test (timings belong here, not in asserts): ``python tests/reliability/measure_caller_killed.py
[ROUNDS] [CALLS]``. For each start method and state (chunks running, or the pool idle
after CALLS calls), a program is SIGKILLed ROUNDS times; printed per case: the median and
largest time from the kill to the last of its descendants gone, and what was left
(processes after 10 s, entries in /dev/shm and in its temporary folder).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from programs import program_environment

_PROGRAM = """
    import os, sys, time
    import numpy as np
    import conc_ml

    def busy(items, weights, marker):
        with open(marker, "a") as file:
            file.write(f"{os.getpid()}\\n")
        while True:
            time.sleep(0.01)

    def total(items, weights):
        return float(weights[items].sum())

    marker, state, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    weights = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: through shared memory
    quick = conc_ml.parallel(backend="process", workers=2, chunks=2)(total)
    for _ in range(calls):
        quick([1, 2, 3, 4], weights)
    if state == "idle":
        with open(marker, "a") as file:
            file.write("idle\\nidle\\n")
        time.sleep(600)
    conc_ml.parallel(backend="process", workers=2, chunks=2)(busy)([1, 2], weights, marker)
"""


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def one_round(folder: Path, method: str, state: str, calls: int) -> tuple[float, int, int, int]:
    program = folder / "program.py"
    program.write_text(textwrap.dedent(_PROGRAM))
    marker = folder / "started"
    marker.unlink(missing_ok=True)
    temp = folder / "tmp"
    temp.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, str(program), str(marker), state, str(calls)],
        env=program_environment(CONC_ML_START_METHOD=method, TMPDIR=str(temp)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (marker.exists() and len(marker.read_text().splitlines()) >= 2):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the program did not get going")
        time.sleep(0.01)
    descendants = psutil.Process(process.pid).children(recursive=True)
    killed_at = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    while not all(_gone(p) for p in descendants) and time.monotonic() - killed_at < 10:
        time.sleep(0.005)
    elapsed = time.monotonic() - killed_at
    alive = [p for p in descendants if not _gone(p)]
    for p in alive:
        p.kill()
    time.sleep(0.5)  # let the resource tracker finish deleting, as it does after the others are gone
    shm = [n for n in os.listdir("/dev/shm") if f"-{process.pid}-" in n]
    left = sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))
    if left:
        print(f"  left in the temporary folder: {left}", flush=True)
    for path in sorted(temp.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    return elapsed, len(alive), len(shm), len(left)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for method in ("forkserver", "loky"):
            for state in ("running", "idle"):
                results = [one_round(folder, method, state, calls) for _ in range(rounds)]
                times = [r[0] for r in results]
                print(
                    f"{method:10} {state:8} after {calls} calls: kill -> all gone "
                    f"median {statistics.median(times):.3f} s, max {max(times):.3f} s; "
                    f"left after 10 s: {sum(r[1] for r in results)} processes, "
                    f"{sum(r[2] for r in results)} /dev/shm entries, {sum(r[3] for r in results)} temp files "
                    f"({rounds} rounds)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
