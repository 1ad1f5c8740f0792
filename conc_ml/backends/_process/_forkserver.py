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
  its own preload list is not affected, and the other way round. Its program is
  :mod:`conc_ml.backends._process._preload`: it runs with the caller's ``sys.path`` (never the current
  directory first, as ``python -c`` has it), skips a module that fails to import or that
  starts a thread, and ends with its caller, taking its workers with it.
- **Preloading that cannot break the pool.** The standard server skips a preloaded module
  only when it raises :class:`ImportError`; any other error kills the server and with it
  every later worker start. A module that really cannot be imported fails the chunk that
  needs it, with its own error, as without preloading. A server that dies all the same
  is a :class:`~conc_ml.errors.WorkerCrashedError` saying so, and the next call starts a
  new one.

Which modules. conc-ml's own (numpy, cloudpickle, loky's worker code) always; the modules
that the first process call's function uses (its module and the modules of the globals
it refers to, see :func:`modules_used_by`); and whatever
:func:`conc_ml.warm_up` is given before the server starts. The server starts once per
program, at the first process call or ``warm_up``; modules wanted later are imported by
the workers themselves, when they unpickle what needs them.

Fork safety. The server is a single-threaded process that does nothing but import and
fork: no thread holds a lock when it forks. (It may hold the idle thread pool of a BLAS
library loaded by numpy; OpenBLAS and MKL re-create theirs in the child, which is what
lets the standard library make the fork server its default from Python 3.14.) Workers cap
their BLAS/OpenMP threads with threadpoolctl when they start (see
:mod:`conc_ml.backends._process._backend`), since these libraries were loaded before the cap could
be put in their environment.

``CONC_ML_START_METHOD=loky`` turns all this off and starts workers as fresh interpreters
(loky's default); on platforms without ``fork`` (Windows) that is the only method.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.reduction
import multiprocessing.spawn
import multiprocessing.util
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from . import _loky

__all__ = ["START_METHODS", "context", "modules_used_by", "preload", "start", "start_method", "started"]

#: the environment variable choosing how workers start, and its values (the first is the default)
START_METHOD_VARIABLE = "CONC_ML_START_METHOD"
START_METHODS = ("forkserver", "loky")

#: imported in the server whatever the function: what starting a worker and running a chunk needs
ALWAYS = (
    "numpy",
    "cloudpickle",
    "joblib.externals.loky.process_executor",  # conc_ml.backends._process._loky.WORKER_MODULE
    "threadpoolctl",
    "conc_ml._runner",
    "conc_ml.backends._process._loky",
    "conc_ml.backends._process._shared_memory",
    "conc_ml.backends._process._backend",
)

_lock = threading.Lock()
_started = False
_wanted: dict[str, None] = dict.fromkeys(ALWAYS)  # ordered set


class _Server(multiprocessing.forkserver.ForkServer):
    """The standard fork server's client, starting :func:`conc_ml.backends._process._preload.main` as the server.

    Two changes to how the server starts: ``-P`` and the caller's ``sys.path`` (the
    standard server runs with the current directory first on its path), and the *alive*
    pipe stays with the caller instead of being handed to every worker, so that the server
    ends when the caller does (see :mod:`conc_ml.backends._process._preload`).
    """

    _forkserver_address: Any
    _forkserver_alive_fd: int | None
    _forkserver_pid: int | None

    def ensure_running(self) -> None:
        with self._lock:  # type: ignore[attr-defined]
            if self._forkserver_pid is not None:
                pid, _ = os.waitpid(self._forkserver_pid, os.WNOHANG)
                if not pid:
                    return
                # It died (at start, or killed since): start a new one.
                if self._forkserver_alive_fd is not None:
                    os.close(self._forkserver_alive_fd)
                self._forkserver_address = self._forkserver_alive_fd = self._forkserver_pid = None
            with socket.socket(socket.AF_UNIX) as listener:
                address = multiprocessing.connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
                listener.bind(address)
                if not multiprocessing.util.is_abstract_socket_namespace(address):
                    os.chmod(address, 0o600)
                listener.listen()
                alive_r, alive_w = os.pipe()
                try:
                    program = (
                        f"import sys; sys.path[:] = {list(sys.path)!r}; "
                        "from conc_ml.backends._process._preload import main; "
                        f"main({listener.fileno()}, {alive_r}, {list(_wanted)!r})"
                    )
                    executable = multiprocessing.spawn.get_executable()
                    flags = multiprocessing.util._args_from_interpreter_flags()  # type: ignore[attr-defined]
                    pid = multiprocessing.util.spawnv_passfds(
                        os.fsencode(executable), [executable, *flags, "-P", "-c", program], [listener.fileno(), alive_r]
                    )
                except BaseException:
                    os.close(alive_w)
                    raise
                finally:
                    os.close(alive_r)
                self._forkserver_address = address
                self._forkserver_alive_fd = alive_w
                self._forkserver_pid = pid

    def connect_to_new_process(self, fds: Sequence[int]) -> tuple[int, int]:
        self.ensure_running()
        if len(fds) + 4 >= multiprocessing.forkserver.MAXFDS_TO_SEND:
            raise ValueError("too many fds")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(self._forkserver_address)
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            try:
                # The worker reports to loky's resource tracker, not to multiprocessing's.
                sent = [child_r, child_w, _loky.tracker_fd(), *fds]
                multiprocessing.reduction.sendfds(client, sent)
                return parent_r, parent_w
            except BaseException:
                os.close(parent_r)
                os.close(parent_w)
                raise
            finally:
                os.close(child_r)
                os.close(child_w)

    def forget(self) -> None:
        """Drop a server already reaped, so that the next request starts a new one."""
        with self._lock:  # type: ignore[attr-defined]
            if self._forkserver_alive_fd is not None:
                os.close(self._forkserver_alive_fd)
            self._forkserver_address = self._forkserver_alive_fd = self._forkserver_pid = None

    def pid(self) -> int | None:
        """The server's process id, while it runs."""
        return self._forkserver_pid


_server = _Server()


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
        _started = True
    _server.ensure_running()


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
        try:
            self.sentinel, w = _server.connect_to_new_process(self._fds)
        except (OSError, EOFError) as error:
            raise _server_died(error) from error
        # A duplicate of the data pipe's write end is the worker's sign that we are alive.
        parent_w = os.dup(w)
        self.finalizer = multiprocessing.util.Finalize(self, _close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        try:
            self.pid = multiprocessing.forkserver.read_signed(self.sentinel)
        except (OSError, EOFError) as error:
            raise _server_died(error) from error


def _server_died(error: BaseException) -> BaseException:
    """The error for a worker that could not be started because the server is gone."""
    from ...errors import WorkerCrashedError

    pid = _server.pid()
    code: int | None = None
    deadline = time.monotonic() + 1.0
    while pid is not None and code is None and time.monotonic() < deadline:
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if waited:
            code = os.waitstatus_to_exitcode(status)
            # Reaped here: the next call's ensure_running must not wait for it again.
            _server.forget()
        else:
            time.sleep(0.01)  # it closed its socket and is exiting: bounded wait for its status
    with _lock:
        # The next server imports conc-ml's own modules only: one of the others may be what killed it.
        dropped = [name for name in _wanted if name not in ALWAYS]
        _wanted.clear()
        _wanted.update(dict.fromkeys(ALWAYS))
    how = "" if code is None else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
    suspects = f" ({', '.join(dropped)})" if dropped else ""
    return WorkerCrashedError(
        f"conc-ml's fork server, which starts the process workers, died{how} before it could start one "
        f"({type(error).__name__}: {error}). A module it imported for the workers{suspects} may end or crash "
        "the interpreter when imported, or memory ran out. The next call starts a new server that imports "
        f"only conc-ml's own modules; if that one dies too, set {START_METHOD_VARIABLE}=loky to start "
        "workers as fresh interpreters",
        exitcode=code,
    )


class _Process(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


class _Context(_loky.SynchronizationFromLoky, multiprocessing.context.ForkServerContext):
    Process = _Process


_CONTEXT = _Context()


def context() -> multiprocessing.context.BaseContext | None:
    """The context loky should start workers with; ``None`` means loky's default."""
    return _CONTEXT if start_method() == "forkserver" else None


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _module_of(value: Any) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    if not isinstance(module, str):
        module = getattr(type(value), "__module__", None)
    return module if isinstance(module, str) else None


def modules_used_by(func: Callable[..., Any]) -> list[str]:
    """Names of the importable modules that ``func`` refers to (its globals, closure and own module).

    :param func: a plain or ``@parallel`` function.
    """
    target = getattr(func, "__wrapped__", func)
    found: set[str] = set()
    own = getattr(target, "__module__", None)
    if isinstance(own, str):
        found.add(own)
    code = getattr(target, "__code__", None)
    namespace = getattr(target, "__globals__", {})
    values: list[Any] = []
    if isinstance(code, types.CodeType):
        values += [namespace[name] for name in set(_code_names(code)) if name in namespace]
    for cell in getattr(target, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            values.append(cell.cell_contents)
    for value in values:
        module = _module_of(value)
        if module is not None:
            found.add(module)
    # ``__main__`` is the caller's script, which workers must not run again.
    return sorted(m for m in found if m not in ("__main__", "builtins") and m in sys.modules)
