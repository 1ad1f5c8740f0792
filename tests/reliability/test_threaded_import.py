"""A module that starts a thread when imported never makes the process workers hang.

Workers are forked from a server that has imported the function's modules. A cache
refresher started at import holds its lock most of the time: forked while it held it,
every worker found the lock taken for good and hung at its first call (for ever, or
until the call's timeout). The server must not fork with such a thread running.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conc_ml.backends._process import _forkserver

from .programs import result_of, run_program, write_program

pytestmark = pytest.mark.skipif(not _forkserver._fork_server_available(), reason="no fork server on this platform")

_REFRESHER = """
    import os, threading, time

    IMPORTED_BY = os.getpid()
    _lock = threading.Lock()
    _cache = {"value": 1}

    def _refresh():
        while True:
            with _lock:
                time.sleep(0.01)  # the refresh, under the lock
            time.sleep(0.0001)

    threading.Thread(target=_refresh, name="cache-refresher", daemon=True).start()

    def value():
        with _lock:
            return _cache["value"]
"""

_PROGRAM = """
    import json, os
    import conc_ml
    import plain, refresher

    def work(items):
        return [refresher.value(), refresher.IMPORTED_BY == os.getpid(), plain.IMPORTED_BY == os.getppid()]

    try:
        result = conc_ml.parallel(backend="process", workers=2, chunks=2, timeout=60)(work)([1, 2])
    except conc_ml.ChunkTimeoutError as error:
        result = str(error)
    print("RESULT " + json.dumps(result), flush=True)
"""


def test_a_module_starting_a_thread_at_import_is_imported_by_the_workers_not_the_server(tmp_path: Path) -> None:
    write_program(tmp_path, _REFRESHER, "refresher.py")
    write_program(tmp_path, "import os\nIMPORTED_BY = os.getpid()\n", "plain.py")
    run = run_program(write_program(tmp_path, _PROGRAM), cwd=tmp_path, timeout=120)
    # Each worker imported the refresher itself (its thread runs in the worker), while
    # the plain module is still imported once, in the server, the workers' parent.
    assert result_of(run) == [[1, True, True], [1, True, True]]
    assert "module 'refresher' starts a thread when it is imported" in run.stderr
