"""Long-run scenarios (a caller killed mid-run, workers that die), each in its own process.

Usage: ``python long_run_scenarios.py NAME [ARG ...]``. A scenario prints one JSON line
starting with ``RESULT`` that ``test_fault_long_runs.py`` reads.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from conc_ml import WorkerCrashedError, parallel

N_CHUNKS = 8
ROWS = np.arange(N_CHUNKS * 4 * 3, dtype=np.float64).reshape(N_CHUNKS * 4, 3)
#: the item of ``range(8)`` whose chunk (of 4) kills its worker
CRASHING_ITEM = 5


def report(**fields: Any) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def shut_down_loky() -> None:
    from conc_ml.backends._process._backend import shut_down_pool

    shut_down_pool()


def noisy_sums(rows: np.ndarray, ran: str, rng: np.random.Generator) -> float:
    Path(ran, f"{int(rows[0, 0])}-{uuid.uuid4().hex}").touch()
    return float(rows.sum()) + float(rng.random())


def training(store: str | None) -> Any:
    return parallel(backend="process", chunks=N_CHUNKS, workers=2, seed=11, checkpoint=store, combine="sum")(noisy_sums)


def ran_chunks(ran: str) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(ran))


def killed_caller(store: str, ran: str, pids_file: str) -> None:
    """Consume a checkpointed run until 5 chunks came back, then die as ``kill -9`` would make it."""
    import psutil

    for seen, _ in enumerate(training(store).stream(ROWS, ran), start=1):
        if seen == 5:
            children = [child.pid for child in psutil.Process().children(recursive=True)]
            Path(pids_file).write_text(json.dumps(children))
            os.kill(os.getpid(), signal.SIGKILL)
    report(killed=False)


def resumed(store: str, ran: str, fresh_ran: str) -> None:
    result = training(store)(ROWS, ran)
    ran_now = ran_chunks(ran)
    uninterrupted = training(None)(ROWS, fresh_ran)
    sequential = training(store).sequential(ROWS, fresh_ran)
    shut_down_loky()
    report(result=result, ran=ran_now, uninterrupted=uninterrupted, sequential=sequential)


def exit_once(items: list[int], marker: str) -> int:
    if CRASHING_ITEM in items:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(3)
    return sum(items)


def exit_always(items: list[int]) -> int:
    if CRASHING_ITEM in items:
        os._exit(3)
    return sum(items)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def die_with_a_neighbour_in_flight(items: list[int], folder: str) -> int:
    """Chunk 0 kills its worker once while chunk 1 runs; chunk 1 counts its attempts."""
    if items[0] == 0:
        _wait_for(Path(folder, "neighbour-1"))
        try:
            os.close(os.open(Path(folder, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return sum(items)
        os._exit(3)
    attempt = len([name for name in os.listdir(folder) if name.startswith("neighbour-")]) + 1
    Path(folder, f"neighbour-{attempt}").touch()
    if attempt == 1:
        time.sleep(30)  # in flight until the broken pool's workers are killed (bounded)
    return sum(items)


def crashes(marker: str) -> None:
    outcome: dict[str, Any] = {}
    neighbours = Path(marker).with_name("neighbours")
    neighbours.mkdir()
    func = parallel(backend="process", chunks=2, workers=2, retries=1)(die_with_a_neighbour_in_flight)
    outcome["with_neighbour"] = func([0, 1, 2, 3], str(neighbours))
    outcome["neighbour_attempts"] = len([n for n in os.listdir(neighbours) if n.startswith("neighbour-")])
    func = parallel(backend="process", chunks=4, workers=2, retries=1)(exit_once)
    outcome["retried"] = func(list(range(8)), marker)
    outcome["died_once"] = os.path.exists(marker)
    try:
        parallel(backend="process", chunks=4, workers=2, retries=2)(exit_always)(list(range(8)))
    except WorkerCrashedError as error:
        outcome["exhausted"] = {"message": str(error), "notes": getattr(error, "__notes__", [])}
    try:
        parallel(backend="process", chunks=4, workers=2)(exit_always)(list(range(8)))
    except WorkerCrashedError as error:
        outcome["no_retries"] = {"message": str(error), "notes": getattr(error, "__notes__", [])}
    outcome["next_call"] = parallel(backend="process", chunks=4, workers=2)(sum)(list(range(8)))
    shut_down_loky()
    report(**outcome)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    {"killed_caller": killed_caller, "resumed": resumed, "crashes": crashes}[name](*args)
