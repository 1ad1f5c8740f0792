"""The ``process`` backend: one loky process pool for the whole program.

loky (the copy joblib ships, see :mod:`conc_ml.backends._process._loky`) gives what a home-made pool would
get wrong: cloudpickle for lambdas, closures and functions defined in ``__main__`` or
notebooks; detection of workers that die (signal, ``os._exit``, OOM killer); and warm
workers reused across calls, so imports and process start are paid once. BLAS/OpenMP
pools in the workers are capped through the environment loky starts them with, so that
workers x inner threads <= CPUs (see :mod:`conc_ml._system`).

``workers`` is a cap for the process as a whole: every calling thread and every
concurrent ``await`` shares the one pool (recent versions of loky keep their reusable
executor per thread, which would make ``workers`` a cap per thread). A call asking for
another pool size while other calls use the pool shares it at its current size; the
pool is rebuilt at the new size once it is idle.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar

from ..._runner import ChunkOutcome, ChunkTask, run_chunk
from ..._system import in_daemonic_process, inner_thread_env, mark_worker_process
from ...errors import BackendUnavailableError, SerializationError, WorkerCrashedError
from .._base import BackendSetting, CallInfo
from .._sequential import InlineExecutor, InlineRunner

__all__ = [
    "ProcessBackend",
    "limit_inner_threads",
    "prepare_worker",
    "shut_down_pool",
    "watch_parent",
]

#: seconds an idle worker waits for work before loky shuts it down
IDLE_TIMEOUT = 300
#: at most this many seconds, the interpreter's exit waits for calls to give the pool back
GIVE_BACK_WAIT = 1.0


def limit_inner_threads(env: dict[str, str]) -> None:
    """Run in each worker as it starts: cap the BLAS/OpenMP threads and joblib of this process.

    A worker forked from the fork server has numpy's BLAS loaded already, with the
    server's thread count, so the environment alone cannot cap it: threadpoolctl sets the
    libraries loaded now, the environment those loaded later (and child processes).

    joblib (scikit-learn's ``n_jobs``) in a chunk runs as inside one of joblib's own
    workers: on threads, ``n_jobs=-1`` meaning this worker's share of the CPUs. A process
    pool per worker would multiply the processes, and the folders it memory-maps arrays
    into, left when the worker stops, make loky print "leaked folder objects" at exit. A
    ``joblib.parallel_config`` in the chunk still chooses otherwise.
    """
    import joblib
    from threadpoolctl import threadpool_limits

    os.environ.update(env)
    threadpool_limits(int(next(iter(env.values()))))
    # Chunks run on the worker's main thread, whose joblib default this sets.
    joblib.parallel_config(backend="threading")


#: seconds between two looks of a worker at its parent (see :func:`watch_parent`)
PARENT_POLL_INTERVAL = 0.25


def watch_parent(interval: float = PARENT_POLL_INTERVAL) -> threading.Thread:
    """Run in each worker as it starts: exit as soon as the process that started it is gone.

    A caller killed with SIGKILL (the OOM killer, a job scheduler, a crashed notebook
    kernel) cannot tell its workers to stop: they would run their chunk to the end, then
    wait for work until loky's idle timeout, holding memory and the caller's stdout and
    stderr. A daemon thread watches the caller: a worker forked by the fork server holds
    a pipe that only the caller writes to, which reaches EOF when the caller dies; a
    worker started by loky is the caller's child, and is handed to another parent (init
    or a subreaper) when the caller dies, which the thread checks every ``interval``.
    """
    import multiprocessing.connection

    caller = multiprocessing.parent_process()
    sentinel = None if caller is None else caller.sentinel
    # Recorded when the caller created the worker: a caller killed while the worker was
    # still starting is not taken for a parent that is alive.
    caller_pid = os.getppid() if caller is None or caller.pid is None else caller.pid

    def watch() -> None:
        if sentinel is not None:
            multiprocessing.connection.wait([sentinel])
        else:
            while os.getppid() == caller_pid:
                time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="conc-ml-parent-watch", daemon=True)
    thread.start()
    return thread


def prepare_worker(env: dict[str, str]) -> None:
    """Run in each worker as it starts: cap its inner threads, and watch its parent."""
    mark_worker_process()
    watch_parent()
    limit_inner_threads(env)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class _SharedPool:
    """The program's one process pool, lent to every call, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: Executor | None = None
        self._workers = 0
        self._users = 0
        #: notified when a call gives the pool back
        self._given_back = threading.Condition(self._lock)

    def lend(self, workers: int) -> Executor:
        """The pool, (re)built with ``workers`` workers if it is dead or idle at another size."""
        from . import _loky
        from ._forkserver import context

        with self._lock:
            pool = self._pool
            usable = pool is not None and not _loky.is_broken(pool) and not _loky.is_shut_down(pool)
            if pool is not None and (not usable or (self._workers != workers and self._users == 0)):
                # Idle, or dead: its chunks are done or lost already, nothing waits.
                pool.shutdown(wait=False)
                pool = None
            if pool is None:
                env = inner_thread_env(workers)
                try:
                    # Before the pool's semaphores register with it: the small tracker, not loky's.
                    _loky.start_tracker()
                    pool = _loky.ProcessPoolExecutor(
                        max_workers=workers,
                        timeout=IDLE_TIMEOUT,
                        # Workers are forked from a server that has imported their modules (see
                        # conc_ml.backends._process._forkserver), or started fresh when CONC_ML_START_METHOD=loky.
                        context=context(),
                        env=env,
                        initializer=prepare_worker,
                        initargs=(env,),
                    )
                except OSError as error:
                    raise _no_semaphores(error) from error
                self._pool, self._workers = pool, workers
            self._users += 1
            return pool

    def give_back(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            self._given_back.notify_all()
        self.stop_left_chunks_at_exit()

    def stop_left_chunks_at_exit(self) -> None:
        """Have the interpreter's exit kill the workers of chunks that no call waits for.

        A call left early (``break`` out of a stream, Ctrl-C in the body of an ``async for``
        over one, a cancelled ``await``) lets its running chunks finish, since stopping them
        stops the pool every call shares. At exit nobody can use their results, and
        loky's exit handler would wait for them: 30 s chunks, 30 s more before the
        program ends. Exit handlers run last registered first, and loky registers its
        handler again each time a pool starts (before any call gives it back), so ours is
        registered again whenever it is no longer the last. It leaves a pool that a call
        still uses, or that has nothing left to run, to loky.
        """
        # Private but stable since Python 3.9: the list behind threading._register_atexit,
        # which concurrent.futures and loky use to run before non-daemon threads are joined.
        handlers = getattr(threading, "_threading_atexits", None)
        if handlers is None or (handlers and handlers[-1] == self._kill_left_chunks):
            return
        with contextlib.suppress(RuntimeError):  # the interpreter is shutting down already
            threading._register_atexit(self._kill_left_chunks)  # type: ignore[attr-defined]

    def _kill_left_chunks(self) -> None:
        from ..._left_calls import close_left_streams
        from . import _loky

        close_left_streams()
        with self._lock:
            # A call cancelled at Ctrl-C (an ``await`` under trio) gives the pool back on the
            # thread it was abandoned on, while this thread exits. Stopping the workers there
            # unlinks each of the pool's semaphores, then unregisters it from the resource
            # tracker: a thread frozen between the two by the end of the interpreter leaves
            # the tracker to report a "leaked" semaphore. It takes milliseconds; bounded all
            # the same, for a call still running on a daemon thread.
            self._given_back.wait_for(lambda: self._users == 0, timeout=GIVE_BACK_WAIT)
            pool, users = self._pool, self._users
        if pool is not None and users == 0 and _loky.has_unfinished_work(pool):
            _loky.kill_workers(pool)

    def forget(self) -> None:
        """Drop the reference at exit, while the modules that loky's clean-up uses still exist."""
        with self._lock:
            self._pool = None

    def shut_down(self) -> None:
        """Stop the pool's workers and forget it (the next call starts a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _no_semaphores(error: OSError) -> BackendUnavailableError:
    # The pool's queues and locks are POSIX named semaphores, which Linux keeps in /dev/shm.
    return BackendUnavailableError(
        f"the process backend cannot create the semaphores its pool needs ({type(error).__name__}: {error}); "
        "they live in /dev/shm, which must exist and be writable. In a container, mount it "
        "(docker run --shm-size=1g, or a tmpfs at /dev/shm); or use backend='thread'"
    )


_shared_pool = _SharedPool()
# loky joins its workers at exit on its own; a pool collected later, during the teardown of
# modules, would print a traceback from loky's weakref callback.
atexit.register(_shared_pool.forget)


@contextlib.contextmanager
def borrowed_pool(workers: int) -> Iterator[Executor]:
    """The program's process pool with ``workers`` workers, for work that is not a call's chunks (``warm_up``).

    In a daemonic process, which may not start children, an executor that runs each task inline.
    """
    if in_daemonic_process():
        yield InlineExecutor()
        return
    pool = _shared_pool.lend(workers)
    try:
        yield pool
    finally:
        _shared_pool.give_back()


def shut_down_pool() -> None:
    """Shut the warm process pool down now, waiting for its workers to exit (tests, ``warm_up``)."""
    _shared_pool.shut_down()


class ProcessRunner:
    """One call's share of the program's process pool.

    Large numpy arrays travel through shared memory (see :mod:`._shared_memory`). Each
    chunk first looks for the call's "left" flag (see :mod:`conc_ml._left_calls`): loky
    cannot cancel chunks it has handed to its call queue, so the chunks of a call its
    caller left (``break``, a failure) are skipped there instead of run.
    """

    def __init__(self, workers: int):
        from ..._left_calls import LeftCallFlag
        from . import _loky
        from ._shared_memory import SharingExecutor

        # Four chunks queued per worker keep the pool busy while results travel back; with
        # two, many small chunks waited on the caller's round trips (8 chunks: 33 -> 20 ms).
        self.capacity = 4 * workers
        # Tracked: a caller killed while the flag is up leaves no file behind.
        self._left = LeftCallFlag(track=_loky.register_file, untrack=_loky.unregister_file)
        self._run = self._left.wrap(run_chunk)
        self._pool = _shared_pool.lend(workers)
        self._sharing = SharingExecutor(self._pool)
        self._in_flight: set[Future[ChunkOutcome]] = set()

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Send ``task`` to the pool (its large arrays through shared memory)."""
        future: Future[ChunkOutcome] = self._sharing.submit(self._run, task)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        # loky registered its exit handler when the pool started: ours must run first.
        _shared_pool.stop_left_chunks_at_exit()
        return future

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """Give the pool back: kill its workers to stop running chunks, else let them finish."""
        from . import _loky

        if abort and not stop_running:
            # Left by ``break`` or a failure: what the pool could not cancel is skipped.
            self._left.raise_for(list(self._in_flight))
        try:
            if stop_running:
                # The only way to stop a chunk that is running in a process: the pool goes
                # (with the chunks of other calls sharing it) and the next call builds a new one.
                _loky.kill_workers(self._pool)
            elif abort and _loky.is_broken(self._pool):
                # A worker died: loky kills the others; the next call builds a new pool. Wait
                # until they are gone, so that no result segment is written after close()
                # deleted the unclaimed ones.
                _loky.kill_workers(self._pool)
        finally:
            try:
                # Segments go once the chunks still running are done (at once after a kill).
                self._sharing.close()
            finally:
                # Last: the interpreter's exit waits for this (see _SharedPool._kill_left_chunks).
                _shared_pool.give_back()


class ProcessBackend:
    """Chunks on the program's one loky process pool."""

    crosses_processes: ClassVar[bool] = True
    can_stop_running: ClassVar[bool] = True
    runs_in_event_loop: ClassVar[bool] = False
    settings: ClassVar[Mapping[str, BackendSetting]] = {}

    def before_call(self, call: CallInfo) -> None:
        """Before the first call starts the fork server: have it import what the function uses."""
        from . import _forkserver

        if _forkserver.started():
            return
        try:
            modules = _forkserver.modules_used_by(call.function)
        except Exception:  # an odd global (a proxy that fails on attribute access): preloading is only a help
            return
        _forkserver.preload(modules)

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> ProcessRunner | InlineRunner:
        if in_daemonic_process():
            # As joblib does: the chunks run one after another here, like a nested call in a worker.
            return InlineRunner()
        return ProcessRunner(workers)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        from . import _loky

        if isinstance(error, _loky.ShutdownExecutorError):
            # Only a call that timed out or was interrupted kills the pool's workers: this
            # chunk belonged to another call sharing the pool at that moment.
            return WorkerCrashedError(
                f"chunk {chunk} was lost: another call sharing the process pool timed out or was interrupted "
                "while it ran, and its running chunks can only be stopped by stopping the pool's workers. "
                "The pool is rebuilt for the next call (retries= runs such a chunk again)",
                chunk=chunk,
            )
        if isinstance(error, SerializationError):
            # A task the worker could not unpickle (conc_ml.backends._process._shared_memory.run_shared_chunk):
            # its message already says which chunk and how to fix it.
            return SerializationError(str(error))
        if isinstance(error, _loky.TerminatedWorkerError):
            return _worker_died(chunk, _loky.first_exit_code(error))
        if isinstance(error, _loky.BrokenProcessPool):
            # Not a dead worker: loky breaks the pool when a task or a result that pickled
            # fine here cannot be unpickled on the other side. That is bad input, not a crash.
            return _not_unpicklable(chunk, in_worker=_loky.failed_in_worker(error))
        return None


def _not_unpicklable(chunk: int, *, in_worker: bool) -> SerializationError:
    if in_worker:
        return SerializationError(
            f"an argument of chunk {chunk} (or of a chunk sent with it) was pickled but cannot be "
            "unpickled in the worker (see the cause below); pass objects whose class the worker can "
            "import and rebuild, or use backend='thread'"
        )
    return SerializationError(
        f"the result of chunk {chunk} (or of a chunk running with it) cannot be unpickled in the "
        "caller (see the cause below); return plain data whose class the caller can import, "
        "or use backend='thread'"
    )


def _worker_died(chunk: int, exitcode: int | None) -> WorkerCrashedError:
    if exitcode is None:
        how = "with an unknown exit code"
    elif exitcode < 0:
        how = f"killed by {_signal_name(exitcode)} (exit code {exitcode})"
    else:
        how = f"with exit code {exitcode}"
    hint = ""
    if exitcode == -signal.SIGKILL:
        hint = (
            "; SIGKILL is what the kernel's OOM killer sends: if memory ran out, use more chunks "
            "(smaller pieces) or fewer workers"
        )
    return WorkerCrashedError(
        f"a worker process died while chunk {chunk} was in flight, {how}{hint}. The pool is rebuilt for the next call",
        chunk=chunk,
        exitcode=exitcode,
    )
