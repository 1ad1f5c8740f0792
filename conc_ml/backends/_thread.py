"""The ``thread`` backend, and the thread pool it shares with ``@io_bound``.

The backend runs chunks on an :class:`InterruptibleThreadPool` per call: right for code
that releases the GIL (numpy, BLAS, I/O). A pool per call costs a few hundred
microseconds and ends with the call. BLAS/OpenMP pools are process-wide, so the cap on
inner threads is applied in the caller for the duration of the call.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import _worker as _stdlib_worker
from typing import Any, ClassVar

from .._runner import ChunkOutcome, ChunkTask, run_chunk
from .._system import inner_threads
from ._base import BackendSetting, CallInfo

__all__ = ["ABANDONED_THREADS_NOTE", "InterruptibleThreadPool", "ThreadBackend", "ThreadRunner"]

#: what the errors that give up running calls say about their threads
ABANDONED_THREADS_NOTE = (
    "a thread cannot be killed: the running call is abandoned on its daemon thread, which ends "
    "when the call returns or when the process exits"
)


class InterruptibleThreadPool(ThreadPoolExecutor):
    """A thread pool whose calls can be interrupted or abandoned, and that exit never waits for.

    A Python thread cannot be killed, and a call blocked in C (``socket.recv``,
    ``time.sleep``, a lock) does not see an exception raised in its thread until the C
    call returns. The interpreter joins a plain
    :class:`~concurrent.futures.ThreadPoolExecutor`'s threads at exit, so one such call
    would keep a Ctrl-C'd program alive until it returned, for ever with a silent peer.
    This pool's threads are daemon threads that exit does not wait for: a call given up
    (on Ctrl-C, a timeout or a cancellation) runs on in the background and ends with its
    call or with the process.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = ""):
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._running: set[int] = set()
        self._running_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``, remembering which thread runs it."""
        return super().submit(self._run_tracked, fn, *args, **kwargs)

    def _run_tracked(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ident = threading.get_ident()
        with self._running_lock:
            self._running.add(ident)
        try:
            return fn(*args, **kwargs)
        finally:
            # Under the lock, so that an interrupt sent while the call ends is still
            # raised in this frame (caught by the pool), never in the pool's own loop.
            with self._running_lock:
                self._running.discard(ident)

    def _adjust_thread_count(self) -> None:
        # The stdlib's own method, except that the threads are daemon threads and stay out
        # of the registry that concurrent.futures joins at exit. These two private parts
        # of ThreadPoolExecutor are the only ones this module relies on.
        if self._idle_semaphore.acquire(timeout=0):
            return
        if len(self._threads) >= self._max_workers:
            return

        def wake_workers(_: object, queue: Any = self._work_queue) -> None:
            queue.put(None)

        reference = weakref.ref(self, wake_workers)
        arguments: tuple[Any, ...]
        if hasattr(self, "_create_worker_context"):  # Python >= 3.14
            arguments = (reference, self._create_worker_context(), self._work_queue)
        else:
            arguments = (reference, self._work_queue, self._initializer, self._initargs)
        thread = threading.Thread(
            name=f"{self._thread_name_prefix or self}_{len(self._threads)}",
            target=_stdlib_worker,
            args=arguments,
            daemon=True,
        )
        thread.start()
        self._threads.add(thread)  # type: ignore[attr-defined]  # a set at run time

    def add_threads(self, count: int) -> None:
        """Let ``count`` more calls run at once (a negative count takes them back).

        For a caller that stops waiting for a stuck call: the pool grows by one thread
        while the call is stuck, so that the next call does not queue behind it.
        """
        with self._shutdown_lock:
            self._max_workers += count

    def interrupt_running(self) -> int:
        """Raise :class:`KeyboardInterrupt` in every call still running; return how many.

        The exception arrives at the thread's next Python instruction: a call blocked
        inside C code (``time.sleep``, ``socket.recv``, one long BLAS call) stops when
        that returns, and until then is simply abandoned.
        """
        with self._running_lock:
            for ident in self._running:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
            return len(self._running)

    def close(self, *, interrupt: bool = False) -> None:
        """End the pool: join its threads if none is busy, else abandon the busy ones.

        :param interrupt: raise :class:`KeyboardInterrupt` in the running calls (Ctrl-C).
        """
        with self._running_lock:
            busy = bool(self._running)
        if busy or interrupt:
            self.abandon(interrupt=interrupt)
        else:
            self.shutdown(wait=True, cancel_futures=True)

    def abandon(self, *, interrupt: bool) -> None:
        """Drop the queued calls and stop waiting for the running ones, without blocking.

        :param interrupt: also raise :class:`KeyboardInterrupt` in the running calls (Ctrl-C).
        """
        if interrupt:
            self.interrupt_running()
        self.shutdown(wait=False, cancel_futures=True)


class ThreadRunner:
    """The per-call thread pool of the thread backend, two chunks queued per thread."""

    def __init__(self, backend: ThreadBackend, workers: int):
        self._backend = backend
        self.pool = InterruptibleThreadPool(max_workers=workers, thread_name_prefix="conc-ml-thread")
        self.capacity = 2 * workers

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Queue ``run_chunk(task)`` on the pool."""
        return self.pool.submit(run_chunk, task)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """End the pool: on abort without waiting for running chunks, interrupting them on Ctrl-C."""
        try:
            # On abort, queued chunks are dropped and the running ones abandoned on their
            # daemon threads; on Ctrl-C they are interrupted too, and stop at their next
            # Python instruction. Nothing waits for them, not even the interpreter's exit.
            if abort:
                self.pool.abandon(interrupt=stop_running)
            else:
                self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._backend.uncap(self)


class ThreadBackend:
    """Chunks on the threads of a per-call pool."""

    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    runs_in_event_loop: ClassVar[bool] = False
    settings: ClassVar[Mapping[str, BackendSetting]] = {}

    def __init__(self) -> None:
        # BLAS limits are process-wide: calls that overlap share one cap, applied by the
        # first and restored by the last, so that no call restores another's cap.
        self._limits_lock = threading.Lock()
        self._capped_calls: set[int] = set()
        self._limits: Any = None

    def before_call(self, call: CallInfo) -> None:
        pass

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> ThreadRunner:
        runner = ThreadRunner(self, workers)
        if workers > 1:
            from threadpoolctl import threadpool_limits

            with self._limits_lock:
                if not self._capped_calls:
                    self._limits = threadpool_limits(limits=inner_threads(workers))
                self._capped_calls.add(id(runner))
        return runner

    def uncap(self, runner: ThreadRunner) -> None:
        """The call of ``runner`` ended: the last capped call to end restores the BLAS limits."""
        with self._limits_lock:
            if id(runner) in self._capped_calls:
                self._capped_calls.discard(id(runner))
                if not self._capped_calls:
                    self._limits.restore_original_limits()
                    self._limits = None

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
