"""The ``process`` backend: loky's reusable executor.

loky gives what a home-made pool would get wrong: cloudpickle for lambdas, closures and
functions defined in ``__main__`` or notebooks; detection of workers that die (signal,
``os._exit``, OOM killer); and warm workers reused across calls, so imports and process
start are paid once. BLAS/OpenMP pools in the workers are capped through the environment
loky starts them with, so that workers x inner threads <= CPUs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any, ClassVar

from .._options import usable_cpus
from ..errors import SerializationError, WorkerCrashedError

__all__ = ["ProcessBackend", "inner_thread_env", "limit_inner_threads"]

#: seconds an idle worker waits for work before loky shuts it down
IDLE_TIMEOUT = 300

_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def inner_thread_env(workers: int) -> dict[str, str]:
    """Environment capping each worker's BLAS/OpenMP threads at ``CPUs // workers``."""
    inner = str(max(1, usable_cpus() // workers))
    return dict.fromkeys(_THREAD_VARIABLES, inner)


def limit_inner_threads(env: dict[str, str]) -> None:
    """Run in each worker as it starts: cap the BLAS/OpenMP threads of this process.

    A worker forked from the fork server has numpy's BLAS loaded already, with the
    server's thread count, so the environment alone cannot cap it: threadpoolctl sets the
    libraries loaded now, the environment those loaded later (and child processes).
    """
    from threadpoolctl import threadpool_limits

    os.environ.update(env)
    threadpool_limits(int(next(iter(env.values()))))


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _unblock_call_queue(call_queue: Any) -> None:
    """Let the feeder thread of a dead pool's call queue end, so that it frees its pipe.

    The feeder thread writes pickled tasks into a pipe that the workers read. When they
    are killed with a task larger than the pipe's buffer half-sent, nobody reads the rest
    and the thread blocks in ``write`` for good, keeping the pipe's two descriptors and the
    queue's semaphores (found by ``benchmarks/soak.py``: one thread, two fds and three
    ``/dev/shm`` entries per timeout or crash). This process still holds the pipe's read
    end; closing it makes the write fail with EPIPE once the workers are gone, and the
    thread ends. The pool is dead, so nothing else reads from that end.
    """
    reader = getattr(call_queue, "_reader", None)
    if reader is not None:
        with contextlib.suppress(OSError):
            reader.close()


class ProcessBackend:
    """Chunks on loky's reusable process pool."""

    name: ClassVar[str] = "process"
    crosses_processes: ClassVar[bool] = True
    can_stop_running: ClassVar[bool] = True
    # issue 6: four chunks queued per worker keep the pool busy while results travel back;
    # with two, many small chunks waited on the caller's round trips (8 chunks: 33 -> 20 ms).
    max_in_flight_per_worker: ClassVar[int] = 4

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        from loky import get_reusable_executor

        from .._shared_memory import SharingExecutor
        from ._forkserver import context

        env = inner_thread_env(workers)
        pool: Executor = get_reusable_executor(
            max_workers=workers,
            timeout=IDLE_TIMEOUT,
            # Workers are forked from a server that has imported their modules (see
            # conc_ml.backends._forkserver), or started fresh when CONC_ML_START_METHOD=loky.
            context=context(),
            env=env,
            initializer=limit_inner_threads,
            initargs=(env,),
        )
        # issue 6: large numpy arguments travel through shared memory (see conc_ml._shared_memory).
        return SharingExecutor(pool)

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        from .._shared_memory import SharingExecutor

        sharing = executor if isinstance(executor, SharingExecutor) else None
        if sharing is not None:
            executor = sharing.pool
        call_queue = getattr(executor, "_call_queue", None)
        try:
            if stop_running:
                # The only way to stop a chunk that is running in a process; loky builds a
                # fresh pool on the next call.
                executor.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]
                _unblock_call_queue(call_queue)
            elif abort and getattr(getattr(executor, "_flags", None), "broken", None) is not None:
                # A worker died: loky kills the others and drops this pool.
                _unblock_call_queue(call_queue)
        finally:
            if sharing is not None:
                # Segments go once the chunks still running are done (at once after a kill).
                sharing.close()

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(error, BrokenProcessPool):
            return None
        text = str(error)
        # loky breaks the pool when a task or a result cannot be unpickled on the other
        # side (it pickled fine here): that is bad input, not a crash.
        if "task has failed to un-serialize" in text:
            return SerializationError(
                f"an argument of chunk {chunk} (or of a chunk sent with it) was pickled but cannot be "
                "unpickled in the worker (see the cause below); pass objects whose class the worker can "
                "import and rebuild, or use backend='thread'"
            )
        if "result has failed to un-serialize" in text:
            return SerializationError(
                f"the result of chunk {chunk} (or of a chunk running with it) cannot be unpickled in the "
                "caller (see the cause below); return plain data whose class the caller can import, "
                "or use backend='thread'"
            )
        codes = [int(c) for c in re.findall(r"\((-?\d+)\)", text)]
        exitcode = codes[0] if codes else None
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
            f"a worker process died while chunk {chunk} was in flight, {how}{hint}. "
            "The pool is rebuilt for the next call",
            chunk=chunk,
            exitcode=exitcode,
        )
