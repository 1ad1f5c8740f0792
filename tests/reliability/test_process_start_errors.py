"""What stops process workers from starting is a conc-ml error that says what to do, or no error at all.

- The fork server dying as it starts (a module it preloads ends the interpreter) was a bare
  ``EOFError`` or ``ConnectionRefusedError``.
- A read-only or missing ``/dev/shm`` (where Linux keeps the pool's semaphores) was a bare
  ``OSError`` on every process call, even with no arrays.
- A process call inside a daemonic process (a dask task, a ``multiprocessing.Pool``
  worker), which may not start children, was a bare ``AssertionError``; it now runs its
  chunks one after another there, as joblib does and as a call nested in a worker does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conc_ml.backends._process import _forkserver

from .programs import program_environment, result_of, run_program, write_program

_SERVER_DIES = """
    import json
    import conc_ml

    conc_ml.warm_up(modules=["ends_the_interpreter"], workers=2, wait=False)
    work = conc_ml.parallel(backend="process", workers=2, chunks=2)(sum)
    try:
        work([1, 2])
        first = None
    except conc_ml.WorkerCrashedError as error:
        first = str(error)
    print("RESULT " + json.dumps({"first": first, "next": work([1, 2, 3])}), flush=True)
"""


@pytest.mark.skipif(not _forkserver._fork_server_available(), reason="no fork server on this platform")
def test_a_fork_server_that_dies_at_start_is_a_worker_crashed_error_and_the_next_call_works(tmp_path: Path) -> None:
    write_program(tmp_path, "import os\nos._exit(5)\n", "ends_the_interpreter.py")
    result = result_of(run_program(write_program(tmp_path, _SERVER_DIES), cwd=tmp_path))
    message = result["first"]
    assert message is not None
    assert "fork server" in message
    assert "exit code 5" in message
    assert "ends_the_interpreter" in message
    assert "CONC_ML_START_METHOD=loky" in message
    assert result["next"] == [3, 3]


_NO_ARRAYS = """
    import json
    import conc_ml

    try:
        conc_ml.parallel(backend="process", workers=2, chunks=2)(sum)([1, 2])
        outcome = None
    except conc_ml.BackendUnavailableError as error:
        outcome = str(error)
    print("RESULT " + json.dumps(outcome), flush=True)
"""


def _can_make_dev_shm_read_only() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro tmpfs /dev/shm"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.parametrize("method", ["forkserver", "loky"])
def test_a_read_only_dev_shm_is_a_backend_unavailable_error_that_says_what_to_do(tmp_path: Path, method: str) -> None:
    if not _can_make_dev_shm_read_only():
        pytest.skip("cannot mount a read-only /dev/shm here (needs unprivileged user namespaces)")
    program = write_program(tmp_path, _NO_ARRAYS)
    # A private mount namespace in which /dev/shm is an empty read-only tmpfs.
    in_namespace = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs /dev/shm && exec "$0" "$1"']
    run = subprocess.run(
        [*in_namespace, sys.executable, str(program)],
        cwd=tmp_path,
        env=program_environment(CONC_ML_START_METHOD=method),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    message = result_of(run)
    assert message is not None
    assert "/dev/shm" in message
    assert "backend='thread'" in message


_DAEMONIC = """
    import json, multiprocessing, os
    import conc_ml

    def pids(items):
        return [os.getpid()]

    def task(_):
        return conc_ml.parallel(backend="process", workers=2, chunks=2)(pids)([1, 2]), os.getpid()

    if __name__ == "__main__":
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            chunks, daemon = pool.map(task, [0])[0]
        print("RESULT " + json.dumps({"chunks": chunks, "daemon": daemon}), flush=True)
"""


def test_a_process_call_in_a_daemonic_process_runs_its_chunks_there(tmp_path: Path) -> None:
    result = result_of(run_program(write_program(tmp_path, _DAEMONIC), cwd=tmp_path))
    assert result["chunks"] == [[result["daemon"]], [result["daemon"]]]
