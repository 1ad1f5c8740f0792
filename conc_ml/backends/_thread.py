"""The ``thread`` backend: a :class:`~concurrent.futures.ThreadPoolExecutor` per call.

Right for code that releases the GIL (numpy, BLAS, I/O). A pool per call costs a few
hundred microseconds and guarantees that no thread outlives the call that needed it.
BLAS/OpenMP pools are process-wide, so the cap on inner threads is applied in the caller
for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, ClassVar

from .._options import usable_cpus

__all__ = ["ThreadBackend"]


class ThreadBackend:
    """Chunks on the threads of a per-call pool."""

    name: ClassVar[str] = "thread"
    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    max_in_flight_per_worker: ClassVar[int] = 2

    def __init__(self) -> None:
        self._limits: dict[int, Any] = {}

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conc-ml-thread")
        if workers > 1:
            from threadpoolctl import threadpool_limits

            self._limits[id(executor)] = threadpool_limits(limits=max(1, usable_cpus() // workers))
        return executor

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        try:
            # Threads cannot be killed: on abort, queued chunks are dropped and the
            # caller does not wait for the running ones, which end with their chunk.
            executor.shutdown(wait=not abort, cancel_futures=True)
        finally:
            limits = self._limits.pop(id(executor), None)
            if limits is not None:
                limits.restore_original_limits()

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None
