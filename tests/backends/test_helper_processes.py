"""The processes a process call keeps beside its workers, and what they cost.

A ``multiprocessing.Pool`` forked from the caller has nothing but its workers; conc-ml's
pool has a fork server and one resource tracker, alive as long as the caller. These tests
keep them as small as they were made: one tracker (loky's, which cleans up both the
shared-memory segments and the pool's semaphores), started without importing numpy;
workers that report to it instead of starting trackers of their own; and a server whose
objects are frozen, so that the workers' garbage collector does not copy them.

Each test runs a small program in a fresh interpreter: the tracker and the server are
started once per program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conc_ml.backends._process import _forkserver

pytestmark = pytest.mark.skipif(not _forkserver._fork_server_available(), reason="no fork server on this platform")

REPO = Path(__file__).resolve().parents[2]


def _result(script: str, tmp_path: Path, **environment: str) -> Any:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(script))
    env = {key: value for key, value in os.environ.items() if key != "CONC_ML_START_METHOD"}
    env.update(environment, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    run = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "leaked" not in run.stderr, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0][len("RESULT ") :])


# A process call that sends a 4 MB array through shared memory, another with a
# ``shared_array``; then each resource tracker among the caller's descendants, with
# whether numpy is loaded in it.
_TRACKERS = """
    import json
    import numpy as np
    import psutil
    import conc_ml

    def total(items, data):
        return [float(data[i]) for i in items]

    if __name__ == "__main__":
        data = np.arange(500_000, dtype=np.float64)
        medians = conc_ml.parallel(backend="process", workers=2, chunks=2)(total)
        medians([1, 2], data)
        medians([3, 4], conc_ml.shared_array(data))
        trackers = []
        for child in psutil.Process().children(recursive=True):
            command = " ".join(child.cmdline())
            if "resource_tracker" in command:
                with open(f"/proc/{child.pid}/maps") as maps:
                    numpy_loaded = "_multiarray_umath" in maps.read()
                trackers.append({"loky": "loky" in command, "numpy": numpy_loaded})
        print("RESULT " + json.dumps(trackers), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_process_call_keeps_one_resource_tracker_and_it_does_not_load_numpy(tmp_path: Path) -> None:
    # Before: multiprocessing's tracker for the pool's semaphores and the fork server's
    # protocol, and loky's for the segments, started by importing joblib (and numpy).
    assert _result(_TRACKERS, tmp_path) == [{"loky": True, "numpy": False}]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_with_fresh_interpreters_for_workers_no_tracker_loads_numpy(tmp_path: Path) -> None:
    # loky's own start method hands its workers multiprocessing's tracker too: two then.
    trackers = _result(_TRACKERS, tmp_path, CONC_ML_START_METHOD="loky")
    assert {"loky": True, "numpy": False} in trackers
    assert not any(tracker["numpy"] for tracker in trackers)


_IN_A_WORKER = """
    import gc, json
    import psutil
    import conc_ml

    def inside(items):
        segment = conc_ml.shared_array((300_000,))  # registers a segment with a tracker
        segment[:] = 1.0
        started = [" ".join(child.cmdline()) for child in psutil.Process().children()]
        return [{"frozen": gc.get_freeze_count(), "started": started, "sum": float(segment.sum())}]

    if __name__ == "__main__":
        result = conc_ml.parallel(backend="process", workers=2, chunks=2, combine="concat")(inside)([1, 2])
        print("RESULT " + json.dumps(result), flush=True)
"""


def test_a_worker_registers_its_segments_with_the_callers_tracker_and_starts_none(tmp_path: Path) -> None:
    # Before: the worker's loky tracker had no pipe, so its first segment started a
    # tracker process of the worker's own.
    chunks = _result(_IN_A_WORKER, tmp_path)
    assert [chunk["sum"] for chunk in chunks] == [300_000.0, 300_000.0]
    assert [chunk["started"] for chunk in chunks] == [[], []]


def test_workers_start_with_the_servers_objects_frozen(tmp_path: Path) -> None:
    chunks = _result(_IN_A_WORKER, tmp_path)
    assert all(chunk["frozen"] > 1000 for chunk in chunks), chunks
