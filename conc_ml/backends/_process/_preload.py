"""The program of conc-ml's fork server: import the workers' modules once, then fork workers on request.

It runs in its own interpreter, started by :mod:`conc_ml.backends._process._forkserver` as
``python -P -c "import sys; sys.path[:] = [...]; from conc_ml.backends._process._preload import main; main(...)"``:
``-P`` keeps the current directory off the path and the caller's ``sys.path`` replaces
it before anything is imported, so that the server (and every worker forked from it)
imports exactly the modules the caller would, never a same-named file that happens to
lie in the working directory. (The standard library's ``forkserver.main`` is handed the
caller's path too, but ignores it on Python 3.11.)

What it does that :func:`multiprocessing.forkserver.main` does not:

- **A module that fails to import is skipped, whatever it raises**: the server must stay
  up; the chunk that needs the module reports the failure when its worker imports it.
- **A module that starts a thread when imported is not kept**: forking while another
  thread runs can leave a lock held for good in every worker (a worker then hangs at its
  first log line or import). The server starts again (``exec``, same pid and sockets)
  without that module, says so once on stderr, and the workers import it themselves.
- **It lives no longer than its caller**: only the caller holds the write end of the
  server's *alive* pipe (the standard server hands it to every worker too, so that the
  workers keep it running), so the server sees the caller's death at once, even a
  SIGKILL, and kills the workers it forked. Each worker also asks the kernel for
  SIGKILL when the server dies (``PR_SET_PDEATHSIG``; the server is single-threaded, so
  the thread that forked it lives as long as it does).

After such a restart the shorter list of modules comes in an environment variable,
removed here so that the workers do not carry it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

#: the same names as in conc_ml.backends._process._forkserver (not imported from it: it imports conc_ml's backends)
_VARIABLE = "CONC_ML_PRELOAD_MODULES"

#: as multiprocessing.forkserver: more than this many fds in one request is refused
MAXFDS_TO_SEND = 256

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _python_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.is_alive())


def preload(names: list[str]) -> str | None:
    """Import ``names`` in order; return the first one that left a thread running, if any.

    :param names: module names; a module that fails to import (whatever it raises) is skipped.
    """
    for name in names:
        before = _python_threads()
        with contextlib.suppress(Exception, SystemExit):
            importlib.import_module(name)
        if _python_threads() > before:
            return name
    return None


def _restart_without(name: str, names: list[str]) -> None:
    """Run the server's program again in this process, without ``name`` (never returns)."""
    os.environ[_VARIABLE] = ",".join(n for n in names if n != name)
    sys.stderr.write(
        f"conc-ml: module {name!r} starts a thread when it is imported, so the fork server does not "
        "import it (forking while a thread runs can hang the workers); the process workers import it "
        "themselves\n"
    )
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def main(listener_fd: int, alive_r: int, modules: list[str]) -> None:
    """Preload, then fork a worker for each request on ``listener_fd`` until ``alive_r`` reaches EOF.

    :param listener_fd: the listening Unix socket that callers connect to.
    :param alive_r: read end of a pipe whose write end only the caller holds.
    :param modules: the modules to import first (replaced by the environment variable's
        list when the server started itself again without a module).
    """
    restarted = os.environ.pop(_VARIABLE, None)
    names = modules if restarted is None else [n for n in restarted.split(",") if n]
    threaded = preload(names)
    if threaded is not None:
        _restart_without(threaded, names)
    _freeze_objects()
    _serve(listener_fd, alive_r)


def _freeze_objects() -> None:
    """Keep the garbage collector of every worker off the objects imported here.

    A worker shares the server's memory until it writes to a page. A collection walks
    every object it tracks and writes to each one's header, so a worker's first full
    collection copied most of the server's objects into it (measured with the medians
    benchmark: a worker's private memory 23 MiB unfrozen, 14 MiB frozen). Frozen objects
    are never collected again; they are the modules' own, which live as long as the
    process anyway.
    """
    gc.collect()
    gc.freeze()


def _serve(listener_fd: int, alive_r: int) -> None:
    """Fork a worker for each request on ``listener_fd`` until ``alive_r`` reaches EOF."""
    from multiprocessing import forkserver, util

    util._close_stdin()  # type: ignore[attr-defined]
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    handlers: dict[signal.Signals, Any] = {signal.SIGCHLD: lambda *_: None, signal.SIGINT: signal.SIG_IGN}
    old_handlers = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    signal.set_wakeup_fd(sig_w)
    #: each worker's pid, and the pipe that tells its caller the worker's exit code
    children: dict[int, int] = {}
    try:
        with (
            socket.socket(socket.AF_UNIX, fileno=listener_fd) as listener,
            selectors.DefaultSelector() as selector,
        ):
            for source in (listener, alive_r, sig_r):
                selector.register(source, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if alive_r in ready:
                    # EOF: the caller exited or was killed; its workers have nobody to work for.
                    _remove_socket_file(listener.getsockname())
                    return
                if sig_r in ready:
                    os.read(sig_r, 65536)
                    _reap(children, forkserver.write_signed)
                if listener in ready:
                    fds = _receive_request(listener)
                    if fds is not None:
                        server = _ServerFiles(listener, selector, (alive_r, sig_r, sig_w))
                        _fork_worker(fds, server, children, old_handlers)
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _receive_request(listener: socket.socket) -> list[int] | None:
    """The fds of one caller's request to start a worker (``None``: the caller gave up connecting)."""
    from multiprocessing import reduction

    try:
        connection = listener.accept()[0]
    except OSError as error:
        if error.errno == errno.ECONNABORTED:
            return None
        raise
    with connection:
        fds = reduction.recvfds(connection, MAXFDS_TO_SEND + 1)
    if len(fds) > MAXFDS_TO_SEND:
        raise RuntimeError(f"too many ({len(fds)}) fds to send")
    return fds


@dataclasses.dataclass(frozen=True, slots=True)
class _ServerFiles:
    """What the server holds open and a forked worker must close first."""

    listener: socket.socket
    selector: selectors.BaseSelector
    fds: tuple[int, ...]


def _fork_worker(
    fds: list[int], server: _ServerFiles, children: dict[int, int], handlers: dict[signal.Signals, Any]
) -> None:
    """Fork one worker for a request (``fds``: its pipes, then what it inherits) and tell the caller its pid."""
    from multiprocessing import forkserver

    child_r, child_w, *inherited = fds
    pid = os.fork()
    if pid == 0:
        _become_worker(child_r, (child_w, *children.values()), inherited, server, handlers)
    with contextlib.suppress(BrokenPipeError):
        forkserver.write_signed(child_w, pid)
    children[pid] = child_w
    for fd in (child_r, *inherited):
        os.close(fd)


def _become_worker(
    child_r: int, foreign: tuple[int, ...], inherited: list[int], server: _ServerFiles, handlers: dict[Any, Any]
) -> NoReturn:
    """In the child just forked: let go of the server's files, run the worker, and exit with its code."""
    code = 1
    try:
        server.listener.close()
        server.selector.close()
        for fd in (*server.fds, *foreign):
            os.close(fd)
        code = _serve_one(child_r, inherited, handlers)
    except Exception:
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
    finally:
        os._exit(code)


def _remove_socket_file(address: object) -> None:
    """Delete the server's socket file and its folder, which a killed caller could not delete."""
    if not isinstance(address, str) or not address or address.startswith("\0"):
        return  # an abstract socket: nothing on disk
    with contextlib.suppress(OSError):
        os.unlink(address)
    folder = os.path.dirname(address)
    if os.path.basename(folder).startswith("pymp-"):
        with contextlib.suppress(OSError):  # not empty: something else of the caller's is there
            os.rmdir(folder)


def _reap(pid_to_fd: dict[int, int], write_signed: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        child_w = pid_to_fd.pop(pid, None)
        if child_w is not None:
            with contextlib.suppress(BrokenPipeError):
                write_signed(child_w, os.waitstatus_to_exitcode(status))
            os.close(child_w)


def _serve_one(child_r: int, fds: list[int], handlers: dict[Any, Any]) -> int:
    """In a freshly forked worker: run the process object the caller sends."""
    from multiprocessing import forkserver, spawn

    from conc_ml.backends._process import _loky  # preloaded: see _forkserver.ALWAYS

    server = os.getppid()
    _die_with_parent()
    if os.getppid() != server:  # the server died before the request above took effect
        return 1
    signal.set_wakeup_fd(-1)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    tracker_fd, *inherited = fds
    _loky.use_tracker(tracker_fd)
    forkserver._forkserver._inherited_fds = inherited  # type: ignore[attr-defined]
    parent_sentinel = os.dup(child_r)
    code: int = spawn._main(child_r, parent_sentinel)
    return code
