"""The ``thread`` backend: a :class:`~concurrent.futures.ThreadPoolExecutor` per call.

Right for code that releases the GIL (numpy, BLAS, I/O). A pool per call costs a few
hundred microseconds and guarantees that no thread outlives the call that needed it.
BLAS/OpenMP pools are process-wide, so the cap on inner threads is applied in the caller
for the duration of the call.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ClassVar

from .._options import usable_cpus

__all__ = ["InterruptibleThreadPool", "ThreadBackend"]


class InterruptibleThreadPool(ThreadPoolExecutor):
    """A thread pool that can raise :class:`KeyboardInterrupt` in the calls it is running.

    Threads cannot be killed, and the interpreter waits for a pool's threads before it
    exits: without this, Ctrl-C during a long chunk would leave the process hanging
    until the chunk ended.
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

    def interrupt_running(self) -> int:
        """Raise :class:`KeyboardInterrupt` in every call still running; return how many.

        The exception arrives at the thread's next Python instruction: a call blocked
        inside C code (a sleep, a lock, one long BLAS call) stops when that returns.
        """
        with self._running_lock:
            for ident in self._running:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
            return len(self._running)


class ThreadBackend:
    """Chunks on the threads of a per-call pool."""

    name: ClassVar[str] = "thread"
    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    max_in_flight_per_worker: ClassVar[int] = 2

    def __init__(self) -> None:
        # BLAS limits are process-wide: calls that overlap share one cap, applied by the
        # first and restored by the last, so that no call restores another's cap.
        self._limits_lock = threading.Lock()
        self._capped_calls: set[int] = set()
        self._limits: Any = None

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        executor = InterruptibleThreadPool(max_workers=workers, thread_name_prefix="conc-ml-thread")
        if workers > 1:
            from threadpoolctl import threadpool_limits

            with self._limits_lock:
                if not self._capped_calls:
                    self._limits = threadpool_limits(limits=max(1, usable_cpus() // workers))
                self._capped_calls.add(id(executor))
        return executor

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        try:
            # Threads cannot be killed: on abort, queued chunks are dropped and the
            # caller does not wait for the running ones, which end with their chunk. On
            # Ctrl-C they are interrupted too, so that the process can exit.
            if stop_running and isinstance(executor, InterruptibleThreadPool):
                executor.interrupt_running()
            executor.shutdown(wait=not abort, cancel_futures=True)
        finally:
            with self._limits_lock:
                if id(executor) in self._capped_calls:
                    self._capped_calls.discard(id(executor))
                    if not self._capped_calls:
                        self._limits.restore_original_limits()
                        self._limits = None

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
