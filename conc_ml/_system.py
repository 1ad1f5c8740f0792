"""Facts about the process conc-ml runs in: its CPUs, whether it is a worker, its inner threads.

The options, every backend and the plugin ask these questions; keeping the answers here,
below all of them, lets each import them without importing the others (the options
module and the backends would otherwise import each other). Nothing here imports
another conc-ml module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = [
    "THREAD_VARIABLES",
    "in_daemonic_process",
    "in_worker_process",
    "inner_thread_env",
    "inner_threads",
    "inside_worker",
    "mark_worker_process",
    "nested_calls_allowed",
    "running_a_chunk",
    "usable_cpus",
]

#: environment variables that size the thread pools of BLAS, OpenMP and numexpr
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def usable_cpus() -> int:
    """CPUs this process may use: affinity- and cgroup-quota-aware (via loky)."""
    # loky's count reads the affinity mask and the cgroup CPU quota, which os.cpu_count()
    # ignores; it is a public function of the copy of loky that the process backend uses.
    from .backends._process._loky import cpu_count

    return max(1, int(cpu_count()))


def inner_threads(workers: int) -> int:
    """BLAS/OpenMP threads each of ``workers`` workers may use: ``CPUs // workers``, at least 1.

    So that workers x inner threads <= CPUs, and no call oversubscribes the machine.
    """
    return max(1, usable_cpus() // workers)


def inner_thread_env(workers: int) -> dict[str, str]:
    """Environment capping each worker's BLAS/OpenMP threads, and joblib's CPUs, at :func:`inner_threads`."""
    # LOKY_MAX_CPU_COUNT is what joblib's cpu_count() (so n_jobs=-1) reads.
    return dict.fromkeys((*THREAD_VARIABLES, "LOKY_MAX_CPU_COUNT"), str(inner_threads(workers)))


_inside_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("conc_ml_inside_worker", default=False)
_nested_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("conc_ml_nested_allowed", default=False)


def inside_worker() -> bool:
    """Whether the current code runs inside a chunk that conc-ml started."""
    return _inside_worker.get()


def nested_calls_allowed() -> bool:
    """Whether the chunk running here was started by a call with ``allow_nested=True``.

    Its own ``@parallel`` calls then run in parallel too, as if inside
    ``config(allow_nested=True)`` (see :func:`conc_ml._options.current_config`).
    """
    return _nested_allowed.get()


@contextlib.contextmanager
def running_a_chunk(*, allow_nested: bool = False) -> Iterator[None]:
    """Mark the code run inside the block as a chunk's (see :func:`inside_worker`).

    :param allow_nested: the call that started the chunk let its chunks run ``@parallel``
        calls in parallel.
    """
    inside = _inside_worker.set(True)
    nested = _nested_allowed.set(allow_nested)
    try:
        yield
    finally:
        _nested_allowed.reset(nested)
        _inside_worker.reset(inside)


#: set in each process worker as it starts (see conc_ml.backends._process._backend.prepare_worker)
_in_worker_process = False


def mark_worker_process() -> None:
    """Record that this process is a process worker: a ``KeyboardInterrupt`` here is a chunk's failure."""
    global _in_worker_process
    _in_worker_process = True


def in_worker_process() -> bool:
    """Whether this process is one of the process backend's workers."""
    return _in_worker_process


def in_daemonic_process() -> bool:
    """Whether this process is a daemonic ``multiprocessing`` child (a dask task, a ``Pool`` worker).

    Such a process may not start children of its own.
    """
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)
