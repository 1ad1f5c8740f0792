"""The interface every backend implements: operations and declared capabilities.

A backend is a place to run chunks. The engine (``conc_ml._engine``) asks it for a
*runner* per call and hands the runner one :class:`~conc_ml.backends.ChunkTask` per chunk;
everything else (splitting, seeding, the window of chunks in flight, the deadline,
retries, checkpoints, combining, error notes) happens outside the backend, identically for
all of them. The pieces, in the style of anyio's ``abc`` classes:

- :class:`Backend`: capabilities as class attributes, a settings schema, a hook before
  each call, :meth:`Backend.open_runner` and :meth:`Backend.translate_error`;
- :class:`ChunkRunner`: what one call submits to: ``submit(task) -> Future[ChunkOutcome]``
  and ``close(abort=, stop_running=)``;
- :class:`EventLoopBackend` and :class:`EventLoopRunner`: for a backend whose chunks of an
  ``async def`` function run as tasks of the caller's own event loop;
- :class:`ExecutorRunner` and :class:`AwaitedChunks`: ready-made runners.

A backend written before runners existed, which lends a
:class:`concurrent.futures.Executor` from ``open(workers, settings)`` and takes it back in
``release(executor, abort=, stop_running=)``, keeps working: the registry adapts it (see
:class:`ExecutorLendingBackend`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar, Protocol, runtime_checkable

from .._runner import ChunkOutcome, ChunkTask, run_chunk, run_chunk_async

__all__ = [
    "AwaitedChunks",
    "Backend",
    "BackendSetting",
    "CallInfo",
    "ChunkRunner",
    "EventLoopBackend",
    "EventLoopRunner",
    "ExecutorLendingBackend",
    "ExecutorRunner",
]


def _any_value(value: object) -> bool:
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSetting:
    """A setting that ``conc_ml.config()`` accepts for a backend (``address=`` for dask).

    ``None`` is always allowed: it means "not set".

    :ivar allowed: what the setting accepts, in words, for the error message.
    :ivar types: the types a value may have.
    :ivar check: whether a value of one of those types is allowed.
    """

    allowed: str
    types: tuple[type, ...]
    check: Callable[[Any], bool] = _any_value

    def validate(self, name: str, value: object) -> object:
        """``value`` if it is allowed, else raise.

        :raises TypeError: if the value is of another type.
        :raises ValueError: if the value is of the right type but not allowed.
        """
        if value is None:
            return value
        if not isinstance(value, self.types):
            raise TypeError(f"config({name}=...) must be {self.allowed}, not {type(value).__name__} {value!r}")
        if not self.check(value):
            raise ValueError(f"config({name}=...) must be {self.allowed}, got {value!r}")
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class CallInfo:
    """What a backend may look at before a call runs (see :meth:`Backend.before_call`).

    :ivar function: the user's undecorated function.
    :ivar function_name: its qualified name, for messages.
    :ivar arguments: the call's arguments by parameter name, before splitting.
    :ivar workers: the pool size the call asks for.
    :ivar settings: backend settings from ``conc_ml.config()``.
    """

    function: Callable[..., Any]
    function_name: str
    arguments: Mapping[str, Any]
    workers: int
    settings: Mapping[str, Any]


class ChunkRunner(Protocol):
    """Where the chunks of one call go: opened by :meth:`Backend.open_runner`, closed once.

    :ivar capacity: how many chunks the engine keeps submitted and unfinished at once. One
        per worker keeps each worker busy only if results travel back instantly; a few per
        worker hide the round trip. A runner that runs each chunk as it is submitted has 1.
    """

    capacity: int

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Start running ``task`` and return the future of its outcome.

        The future's result is what :func:`~conc_ml.backends.run_chunk` returns for the
        task (run it, in the worker, to get it: it captures the user's exception into the
        outcome). The future fails only for a failure of the backend itself (a dead worker,
        a task that cannot be sent), which :meth:`Backend.translate_error` then explains.

        :raises Exception: if the runner cannot take the task (a pool that broke): the
            engine asks :meth:`Backend.translate_error` what it means.
        """
        ...

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """End the call's use of the runner.

        :param abort: the call failed, was left (``break`` out of ``.stream()``) or was
            cancelled: chunks not started are to be dropped (the engine has cancelled
            their futures already).
        :param stop_running: running chunks are to be stopped too, where the backend can
            (a timeout, Ctrl-C): a backend that declares ``can_stop_running`` kills them.
        """
        ...


class EventLoopRunner(Protocol):
    """Runs chunks of an ``async def`` function in the caller's event loop, ``capacity`` at a time."""

    capacity: int

    async def run(self, task: ChunkTask) -> ChunkOutcome:
        """Await one chunk; the user's exception comes back in the outcome, cancellation propagates."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A place to run chunks, looked up by name (see :func:`conc_ml.register_backend`).

    Capabilities, declared as class attributes:

    - ``crosses_processes``: tasks and results are pickled on their way to and from the
      workers, so conc-ml refuses arguments that cannot travel (open files) before the
      call, and shows the worker's traceback under the re-raised exception.
    - ``can_stop_running``: chunks already running can be stopped (``close(...,
      stop_running=True)`` kills them) on a timeout or Ctrl-C.
    - ``runs_in_event_loop``: called from async code, chunks of an ``async def`` function
      run as tasks of the caller's event loop, through
      :meth:`EventLoopBackend.open_in_event_loop` (which the backend must then have).
    - ``settings``: the ``conc_ml.config()`` keywords this backend takes, by name, each
      with its check: ``config()`` accepts them, and a call on this backend refuses a bad
      value before any chunk runs.
    """

    # Read-only properties, so that class attributes (``ClassVar``), instance attributes
    # and properties all implement them.
    @property
    def crosses_processes(self) -> bool:
        """Tasks and results are pickled on their way to and from the workers."""
        ...

    @property
    def can_stop_running(self) -> bool:
        """Running chunks can be stopped (``close(..., stop_running=True)`` kills them)."""
        ...

    @property
    def runs_in_event_loop(self) -> bool:
        """From async code, chunks of an ``async def`` function run in the caller's event loop."""
        ...

    @property
    def settings(self) -> Mapping[str, BackendSetting]:
        """The ``conc_ml.config()`` settings this backend takes, by name."""
        ...

    def before_call(self, call: CallInfo) -> None:
        """Prepare for a call before its chunks are cut (backend-only work: preloading modules).

        :raises Exception: to refuse the call (raise a conc-ml error saying why).
        """
        ...

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> ChunkRunner:
        """The runner of one call.

        :param workers: the pool size the call asks for.
        :param settings: backend settings from ``conc_ml.config()``, already checked
            against :attr:`settings`.
        """
        ...

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        """A conc-ml error for a failure of the backend itself (not of the user's code).

        Called with what a chunk's future raised (or what ``submit`` raised); returns
        ``None`` when the error is not the backend's. Return a
        :class:`~conc_ml.errors.WorkerCrashedError` for a dead worker: ``retries=`` then
        runs the chunk again, on a fresh runner.
        """
        ...


@runtime_checkable
class EventLoopBackend(Backend, Protocol):
    """A backend that declares ``runs_in_event_loop``: it also opens runners for the caller's event loop."""

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> EventLoopRunner:
        """The runner of one call made from async code, running in the caller's event loop."""
        ...


@runtime_checkable
class ExecutorLendingBackend(Protocol):
    """The earlier form of a backend: it lends an :class:`~concurrent.futures.Executor` per call.

    The engine submits ``run_chunk(task)`` to the executor, ``max_in_flight_per_worker x
    workers`` chunks at a time, and gives it back with :meth:`release`. The registry wraps
    such a backend so that the engine sees a :class:`Backend`.
    """

    @property
    def crosses_processes(self) -> bool:
        """As :attr:`Backend.crosses_processes`."""
        ...

    @property
    def can_stop_running(self) -> bool:
        """As :attr:`Backend.can_stop_running`."""
        ...

    @property
    def max_in_flight_per_worker(self) -> int:
        """How many chunks the engine keeps submitted per worker."""
        ...

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        """An executor with ``workers`` workers for one call."""
        ...

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        """Give back the executor of one call (as :meth:`ChunkRunner.close`)."""
        ...

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        """As :meth:`Backend.translate_error`."""
        ...


class ExecutorRunner:
    """A runner over a :class:`concurrent.futures.Executor`: each task runs as ``run_chunk(task)``.

    :param executor: where the chunks run.
    :param capacity: chunks kept submitted at once (see :class:`ChunkRunner`).
    :param release: what :meth:`close` does with the executor; default: shut it down,
        dropping queued chunks on abort, and waiting for the running ones otherwise.
    """

    def __init__(
        self,
        executor: Executor,
        capacity: int,
        release: Callable[[Executor, bool, bool], None] | None = None,
    ):
        self.executor = executor
        self.capacity = capacity
        self._release = release

    def submit(self, task: ChunkTask) -> Future[ChunkOutcome]:
        """Submit ``run_chunk(task)`` to the executor."""
        return self.executor.submit(run_chunk, task)

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """Give the executor back (see :class:`ChunkRunner`)."""
        if self._release is not None:
            self._release(self.executor, abort, stop_running)
        else:
            self.executor.shutdown(wait=not abort, cancel_futures=True)


class AwaitedChunks:
    """An :class:`EventLoopRunner`: chunks awaited in the caller's event loop, ``capacity`` at a time."""

    def __init__(self, capacity: int):
        self.capacity = capacity

    async def run(self, task: ChunkTask) -> ChunkOutcome:
        """Await one chunk (the user's exception comes back in the outcome)."""
        return await run_chunk_async(task)


class LentExecutorBackend:
    """A :class:`Backend` made of an :class:`ExecutorLendingBackend` (the registry makes these)."""

    runs_in_event_loop: ClassVar[bool] = False
    settings: ClassVar[Mapping[str, BackendSetting]] = {}

    def __init__(self, lending: ExecutorLendingBackend):
        self.lending = lending
        self.crosses_processes: bool = lending.crosses_processes
        self.can_stop_running: bool = lending.can_stop_running

    def before_call(self, call: CallInfo) -> None:
        """Nothing: the earlier form had no hook."""

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> ExecutorRunner:
        """The lent executor, given back through the backend's ``release``."""
        lending = self.lending

        def release(executor: Executor, abort: bool, stop_running: bool) -> None:
            lending.release(executor, abort=abort, stop_running=stop_running)

        capacity = max(1, lending.max_in_flight_per_worker * workers)
        return ExecutorRunner(lending.open(workers, settings), capacity, release)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        """The backend's own translation."""
        return self.lending.translate_error(error, chunk)
