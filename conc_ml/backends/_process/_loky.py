"""The one place that touches loky: the copy joblib ships, ``joblib.externals.loky``.

Why joblib's copy rather than the ``loky`` distribution: scikit-learn's ``n_jobs`` runs on
joblib, and joblib on its own copy of loky. Two copies in one program mean two resource
trackers, each deleting the other's memory-mapped folders and printing ``KeyError``
tracebacks and "leaked file objects" warnings at exit. With one copy there is one
tracker, and conc-ml's calls and scikit-learn's run side by side in silence. (joblib is
installed with scikit-learn anyway.)

Everything here that reads a private attribute of loky says so; when loky changes, this
module is the one to fix.
"""

from __future__ import annotations

import contextlib
import multiprocessing.spawn
import multiprocessing.util
import os
import queue
import re
import signal
import sys
from concurrent.futures import Executor
from typing import Any

from joblib.externals import loky
from joblib.externals.loky import process_executor as _process_executor
from joblib.externals.loky.backend import resource_tracker
from joblib.externals.loky.backend.context import LokyContext

__all__ = [
    "BrokenProcessPool",
    "ProcessPoolExecutor",
    "ShutdownExecutorError",
    "SynchronizationFromLoky",
    "TerminatedWorkerError",
    "cpu_count",
    "failed_in_worker",
    "first_exit_code",
    "has_unfinished_work",
    "is_broken",
    "is_shut_down",
    "kill_workers",
    "loky",
    "register_file",
    "start_tracker",
    "tracker_fd",
    "unblock_call_queue",
    "unregister_file",
    "use_tracker",
]

ProcessPoolExecutor = loky.ProcessPoolExecutor
#: what a future of a broken pool raises: loky raises this class itself only when a task or
#: a result could not be unpickled on the other side of the pipe (see :func:`failed_in_worker`)
BrokenProcessPool = loky.BrokenProcessPool
#: loky's subclass of :data:`BrokenProcessPool` for a worker that died (a signal, ``os._exit``)
TerminatedWorkerError = _process_executor.TerminatedWorkerError
#: what a pending future of a pool shut down with ``kill_workers=True`` raises
ShutdownExecutorError = _process_executor.ShutdownExecutorError
cpu_count = loky.cpu_count

#: what a worker imports to run loky's worker loop (the fork server preloads it)
WORKER_MODULE = "joblib.externals.loky.process_executor"


def first_exit_code(error: BaseException) -> int | None:
    """The exit code of the first dead worker that loky reports in ``error``, if any.

    loky gives the codes in its message only, as ``The exit codes of the workers are
    {SIGKILL(-9), EXIT(7)}``; there is no attribute to read them from.
    """
    listed = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    codes = re.findall(r"\((-?\d+)\)", listed.group(1)) if listed else []
    return int(codes[0]) if codes else None


def failed_in_worker(error: BaseException) -> bool:
    """For a pool that loky broke because something could not be unpickled: whether it was a task, in a worker.

    ``False`` means a result, in the caller. loky raises the same class for both and tells
    them apart in its message only ("A task has failed to un-serialize" / "A result ...").
    """
    return "task has failed to un-serialize" in str(error)


#: the packages above loky's resource tracker, stood in for by empty packages in the tracker's
#: program, so that importing the tracker does not run joblib's and loky's ``__init__``
_TRACKER_PACKAGES = (
    ("joblib", os.path.dirname(os.path.dirname(os.path.dirname(loky.__file__)))),
    ("joblib.externals", os.path.dirname(os.path.dirname(loky.__file__))),
    ("joblib.externals.loky", os.path.dirname(loky.__file__)),
)

_TRACKER_PROGRAM = """import sys, types
for name, path in {packages!r}:
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
from joblib.externals.loky.backend.resource_tracker import main
main({fd}, False)
"""


def start_tracker() -> None:
    """Start loky's resource tracker as a small program, unless it runs already.

    loky starts its tracker as ``from joblib.externals.loky.backend.resource_tracker import
    main``, which runs joblib's ``__init__`` first: numpy, joblib's pools and cloudpickle,
    24 to 26 MiB for a process that reads a pipe. This starts the same ``main`` with the three
    packages above it replaced by empty ones (about 10 MiB), as loky's own launch does
    otherwise: the same pipe, the same blocked signals while it starts. loky uses it as its
    own (private attributes ``_lock``, ``_fd``, ``_pid``); if it dies, loky starts its own
    again at the next use. Where joblib started the tracker first, that one is kept.
    """
    if sys.platform == "win32":
        return  # loky's own launch: pipes and handles there are another matter
    tracker: Any = resource_tracker._resource_tracker
    with tracker._lock:
        if tracker._fd is not None:
            return
        read, write = os.pipe()
        try:
            passed = [read]
            with contextlib.suppress(Exception):
                passed.append(sys.stderr.fileno())
            executable = multiprocessing.spawn.get_executable()
            program = _TRACKER_PROGRAM.format(packages=_TRACKER_PACKAGES, fd=read)
            flags = multiprocessing.util._args_from_interpreter_flags()  # type: ignore[attr-defined]
            arguments = [executable, *flags, "-P", "-c", program]
            # As loky: the tracker ignores Ctrl-C once it runs, and must not die of one before.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                pid = multiprocessing.util.spawnv_passfds(os.fsencode(executable), arguments, passed)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        tracker._fd, tracker._pid = write, pid


def tracker_fd() -> int:
    """The write end of loky's resource tracker's pipe (started first if need be), for a worker to inherit."""
    start_tracker()
    fd: int = resource_tracker._resource_tracker.getfd()
    return fd


def use_tracker(fd: int) -> None:
    """In a worker forked from conc-ml's server: report to the caller's tracker, whose pipe is ``fd``."""
    tracker: Any = resource_tracker._resource_tracker
    tracker._fd, tracker._pid = fd, None


class SynchronizationFromLoky:
    """For a multiprocessing context: locks and semaphores that loky's resource tracker cleans up.

    The standard library's register their names with multiprocessing's own resource
    tracker, a second tracker process in the program (7 MiB) for the few semaphores of
    the pool's queues; loky's do the same with loky's tracker, which conc-ml needs anyway.
    These are loky's own context's methods (POSIX only there, as the fork server is).
    :func:`start_tracker` must have run first, or loky starts its large tracker.
    """

    if sys.platform != "win32":
        Lock = LokyContext.Lock
        RLock = LokyContext.RLock
        Semaphore = LokyContext.Semaphore
        BoundedSemaphore = LokyContext.BoundedSemaphore
        Condition = LokyContext.Condition
        Event = LokyContext.Event


def register_file(path: str) -> None:
    """Have loky's resource tracker delete ``path`` if this process dies without doing so."""
    start_tracker()
    resource_tracker.register(path, "file")


def unregister_file(path: str) -> None:
    """Undo :func:`register_file` (the file was deleted by its owner)."""
    resource_tracker.unregister(path, "file")


_leak_threshold: int | None = None


def tolerate_in_worker(held_bytes: int) -> None:
    """In a loky worker: memory held on purpose (mapped shared arrays) is not taken for a leak.

    loky ends a worker whose resident memory grew by more than 300 MB since its first task
    (``_MAX_MEMORY_LEAK_SIZE``, private), and mapped pages count as resident: a worker that
    keeps a large segment mapped between chunks would be restarted after every chunk.
    """
    global _leak_threshold
    from joblib.externals.loky import process_executor

    if _leak_threshold is None:
        _leak_threshold = process_executor._MAX_MEMORY_LEAK_SIZE
    process_executor._MAX_MEMORY_LEAK_SIZE = _leak_threshold + held_bytes


def is_broken(pool: Executor) -> bool:
    """Whether a worker of ``pool`` died (loky then refuses new tasks)."""
    flags = getattr(pool, "_flags", None)  # private: loky's _ExecutorFlags
    return getattr(flags, "broken", None) is not None


def has_unfinished_work(pool: Executor) -> bool:
    """Whether a chunk submitted to ``pool`` is still queued or running (not done, not cancelled)."""
    items = getattr(pool, "_pending_work_items", None)  # private: work id -> loky's _WorkItem
    if not items:
        return False
    return any(not item.future.done() for item in list(items.values()))


def is_shut_down(pool: Executor) -> bool:
    """Whether ``pool`` was shut down (by us, or by loky after a crash)."""
    flags = getattr(pool, "_flags", None)
    return bool(getattr(flags, "shutdown", False))


def kill_workers(pool: Executor) -> None:
    """Shut ``pool`` down now, killing its workers, and free its call queue (see :func:`unblock_call_queue`)."""
    call_queue = getattr(pool, "_call_queue", None)  # private; shutdown() drops it
    # Chunks not yet handed to the workers: loky's manager thread fails every pending
    # future as it shuts down, then still looks their ids up and dies with a KeyError
    # traceback on stderr. Taking the ids out first leaves it nothing to look up.
    work_ids = getattr(pool, "_work_ids", None)  # private: a queue.Queue of pending ids
    if work_ids is not None:
        with contextlib.suppress(queue.Empty):
            while True:
                work_ids.get_nowait()
    pool.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]
    _unblock(call_queue)


def unblock_call_queue(pool: Executor) -> None:
    """Let the feeder thread of a dead pool's call queue end, so that it frees its pipe.

    The feeder thread writes pickled tasks into a pipe that the workers read. When they
    are killed with a task larger than the pipe's buffer half-sent, nobody reads the rest
    and the thread blocks in ``write`` for good, keeping the pipe's two descriptors and the
    queue's semaphores (one thread, two fds and three ``/dev/shm`` entries per timeout or
    crash). This process still holds the pipe's read end; closing it makes the write fail
    with EPIPE once the workers are gone, and the thread ends. The pool is dead, so
    nothing else reads from that end.
    """
    _unblock(getattr(pool, "_call_queue", None))  # private: loky's _SafeQueue


def _unblock(call_queue: Any) -> None:
    reader = getattr(call_queue, "_reader", None)
    if reader is not None:
        with contextlib.suppress(OSError):
            reader.close()
