"""Process workers forked from a server that has imported their modules once.

Why. A worker started the usual way (loky's default: a fresh interpreter) imports numpy,
scikit-learn, torch... for itself: about a second of CPU and 100-200 MB of private memory
per worker, paid again by every one of 8, 16 or 64 workers at the same moment. Python's
*fork server* imports them once, in one server process, and forks each worker from it:
a worker starts in milliseconds with every module loaded, and the pages of those modules
are shared between the workers (copy-on-write) instead of being copied into each.

What this module adds to :mod:`multiprocessing.forkserver`, and why it does not use the
standard ``"forkserver"`` context as it is:

- **No re-run of the caller's script.** The standard context runs the caller's
  ``__main__`` again in every worker (the ``if __name__ == "__main__"`` rule), which breaks
  scripts written without that guard and notebooks. loky's own start method never does
  that, and users of ``@parallel`` rely on it; :class:`_Popen` leaves ``__main__`` out of
  what a worker prepares, as loky does (functions defined in ``__main__`` travel by value
  with cloudpickle).
- **A server of our own**, so that a program that also uses the standard fork server with
  its own preload list is not affected, and the other way round.
- **Preloading that cannot break the pool.** The standard server skips a preloaded module
  only when it raises :class:`ImportError`; any other error kills the server and with it
  every later worker start. The server here imports a single module of ours,
  :mod:`conc_ml._preload`, which imports the wanted modules and ignores their failures (a
  module that really cannot be imported fails the chunk that needs it, with its own error,
  as without preloading).

Which modules. conc-ml's own (numpy, cloudpickle, loky's worker code) always; the modules
that the first process call's function uses (its module and the modules of the globals
it refers to, see :func:`conc_ml._warm_up.modules_used_by`); and whatever
:func:`conc_ml.warm_up` is given before the server starts. The server starts once per
program, at the first process call or ``warm_up``; modules wanted later are imported by
the workers themselves, as before.

Fork safety. The server is a single-threaded process that does nothing but import and
fork: no thread holds a lock when it forks. (It may hold the idle thread pool of a BLAS
library loaded by numpy; OpenBLAS and MKL re-create theirs in the child, which is what
lets the standard library make the fork server its default from Python 3.14.) Workers cap
their BLAS/OpenMP threads with threadpoolctl when they start (see
:mod:`conc_ml.backends._process`), since these libraries were loaded before the cap could
be put in their environment.

``CONC_ML_START_METHOD=loky`` turns all this off and starts workers as fresh interpreters
(loky's default); on platforms without ``fork`` (Windows) that is the only method.
"""

from __future__ import annotations

import io
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.reduction
import multiprocessing.spawn
import multiprocessing.util
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["PRELOAD_VARIABLE", "START_METHODS", "context", "preload", "start", "start_method", "started"]

#: the environment variable choosing how workers start, and its values (the first is the default)
START_METHOD_VARIABLE = "CONC_ML_START_METHOD"
START_METHODS = ("forkserver", "loky")

#: how the server learns which modules to import (read and removed by conc_ml._preload)
PRELOAD_VARIABLE = "CONC_ML_PRELOAD_MODULES"

#: imported in the server whatever the function: what starting a worker and running a chunk needs
ALWAYS = (
    "numpy",
    "cloudpickle",
    "loky.process_executor",
    "threadpoolctl",
    "conc_ml._runner",
    "conc_ml._shared_memory",
    "conc_ml.backends._process",
)

_lock = threading.Lock()
_server = multiprocessing.forkserver.ForkServer()
_started = False
_wanted: dict[str, None] = dict.fromkeys(ALWAYS)  # ordered set


def start_method() -> str:
    """How process workers start: ``"forkserver"`` (default where ``fork`` exists) or ``"loky"``.

    :raises ValueError: if ``CONC_ML_START_METHOD`` holds anything else.
    """
    value = os.environ.get(START_METHOD_VARIABLE, "").strip().lower()
    if value and value not in START_METHODS:
        raise ValueError(
            f"{START_METHOD_VARIABLE}={os.environ[START_METHOD_VARIABLE]!r} is not a start method; "
            f"expected one of: {', '.join(START_METHODS)}"
        )
    if not _fork_server_available():
        return "loky"
    return value or START_METHODS[0]


def _fork_server_available() -> bool:
    return sys.platform != "win32" and bool(multiprocessing.reduction.HAVE_SEND_HANDLE)


def started() -> bool:
    """Whether the server has been started (its preload list is then fixed)."""
    return _started


def preload(modules: Iterable[str]) -> bool:
    """Ask for ``modules`` to be imported in the server before it forks the first worker.

    :returns: whether they will be (``False`` once the server has started: the workers
        then import them on first use).
    """
    with _lock:
        if _started:
            return all(name in _wanted for name in modules)
        for name in modules:
            if name != "__main__":
                _wanted[name] = None
        return True


def start() -> None:
    """Start the server now (it imports in the background; returns at once). Idempotent."""
    global _started
    with _lock:
        if _started:
            return
        # The server inherits this process's environment when it is spawned; the variable
        # is removed here right after, and in the server by conc_ml._preload.
        previous = os.environ.get(PRELOAD_VARIABLE)
        os.environ[PRELOAD_VARIABLE] = ",".join(_wanted)
        try:
            _server.set_forkserver_preload(["conc_ml._preload"])
            _server.ensure_running()
        finally:
            if previous is None:
                os.environ.pop(PRELOAD_VARIABLE, None)
            else:
                os.environ[PRELOAD_VARIABLE] = previous
        _started = True


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class _Popen(multiprocessing.popen_forkserver.Popen):
    """Starts one worker through :data:`_server`, without the caller's ``__main__``."""

    _fds: list[int]  # set by the base class: fds the worker inherits

    def _launch(self, process_obj: Any) -> None:
        # As multiprocessing.popen_forkserver.Popen._launch, with two changes: the worker
        # is not told to run the caller's __main__ (loky's rule), and it comes from our server.
        prep_data = multiprocessing.spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            multiprocessing.reduction.dump(prep_data, buf)
            multiprocessing.reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        start()
        self.sentinel, w = _server.connect_to_new_process(self._fds)
        # A duplicate of the data pipe's write end is the worker's sign that we are alive.
        parent_w = os.dup(w)
        self.finalizer = multiprocessing.util.Finalize(self, _close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class _Process(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


class _Context(multiprocessing.context.ForkServerContext):
    Process = _Process


_CONTEXT = _Context()


def context() -> multiprocessing.context.BaseContext | None:
    """The context loky should start workers with; ``None`` means loky's default."""
    return _CONTEXT if start_method() == "forkserver" else None
