"""The one small interface every backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._runner import ChunkOutcome, ChunkTask

__all__ = ["AwaitedChunks", "Backend"]


class AwaitedChunks:
    """Chunks of an ``async def`` function awaited in the caller's event loop, ``capacity`` at a time.

    What a backend that declares ``runs_in_event_loop`` opens for a call made from async code.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity

    async def run(self, task: ChunkTask) -> ChunkOutcome:
        """Await one chunk (its exceptions come back in the outcome)."""
        from .._runner import run_chunk_async

        return await run_chunk_async(task)


@runtime_checkable
class Backend(Protocol):
    """A place to run chunks: it lends an :class:`~concurrent.futures.Executor` per call.

    The engine submits :func:`conc_ml._runner.run_chunk` with one
    :class:`~conc_ml._runner.ChunkTask` per chunk, waits on the futures, and gives the
    executor back with :meth:`release`. Splitting, seeding, combining and error
    translation happen outside the backend, identically for all of them.

    Capabilities are declared as class attributes:

    - ``crosses_processes``: tasks and results are pickled; BLAS threads are capped inside
      the workers and a worker can die on its own (crash detection applies).
    - ``can_stop_running``: chunks already running can be stopped (workers killed) when
      the call times out or is interrupted.
    - ``max_in_flight_per_worker``: how many chunks the engine keeps submitted per worker
      (1 runs chunks strictly one after another, as the sequential backend must).
    """

    name: ClassVar[str]
    crosses_processes: ClassVar[bool]
    can_stop_running: ClassVar[bool]
    max_in_flight_per_worker: ClassVar[int]

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        """An executor with ``workers`` workers for one call.

        :param workers: the pool size the call asked for.
        :param settings: backend settings from ``conc_ml.config()``.
        """
        ...

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        """Give back the executor of one call.

        :param abort: the call failed or was cancelled; pending chunks are cancelled already.
        :param stop_running: running chunks must be stopped too (timeout, Ctrl-C).
        """
        ...

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        """A conc-ml error for a failure of the backend itself (not of the user's code).

        Called with what a future raised; returns ``None`` when the error is not the
        backend's (it is then re-raised as it is).
        """
        ...
