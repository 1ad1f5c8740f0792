"""The ``@io_bound`` decorator: many calls of a function that waits on I/O, run concurrently.

One decorated function, three ways to run many calls:

- ``async def``: ``await f.map(items)`` / ``async for i, r in f.stream(items)`` run anyio
  tasks in the caller's event loop (asyncio or trio), each call holding a token of the
  function's own :class:`anyio.CapacityLimiter` (one per event loop, shared by every
  caller, so ``await f(x)`` from many tasks is limited too).
- a sync function: ``f.map(items)`` / ``f.stream(items)`` run on a thread pool of
  ``concurrency`` threads owned by that call; ``await f.amap(items)`` runs the calls on a
  pool of its own under the function's limiter.

Every path shares one retry policy (:meth:`IOBoundOptions.retry_delays`, a generator of
backoff delays), one :class:`RateLimiter` and one meaning of ``timeout``: an attempt that
takes longer fails with :class:`TimeoutError`. A coroutine is cancelled then. A thread
cannot be stopped: its call is abandoned, on a daemon thread of an
:class:`~conc_ml.backends._thread.InterruptibleThreadPool` that neither the caller nor the
interpreter's exit waits for, and a fresh thread takes its slot. Ctrl-C (or a cancelled
caller) abandons the running calls the same way, so that the program is back at once
whatever the calls are blocked in.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import heapq
import inspect
import math
import operator
import queue
import random
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import RunVar

from ._interrupts import InterruptWatch
from ._methods import MethodKind, bind_target, unwrap_method
from ._validate import integer, number, optional_number
from .backends._thread import ABANDONED_THREADS_NOTE, InterruptibleThreadPool

__all__ = ["AsyncIOBoundFunction", "IOBoundFunction", "IOBoundOptions", "io_bound"]

P = ParamSpec("P")
R = TypeVar("R")
#: the parameters of a method after its instance
_Q = ParamSpec("_Q")

#: runs one call of an async map, given its positional and keyword arguments
CallRunner = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]

#: the default ``retry_on``: transport failures (see :func:`is_transport_failure`)
DEFAULT_RETRY_ON: tuple[type[Exception], ...] = (OSError, TimeoutError)

DEFAULT_CONCURRENCY = 16
DEFAULT_BACKOFF = 0.1

#: no backoff delay grows beyond this, however many retries are allowed
MAX_BACKOFF = 60.0

# Transport failures of HTTP clients that are not OSErrors, by module and class name: they
# are matched only when their module has been imported, so conc-ml never imports them.
_TRANSPORT_ERRORS = (("httpx", "TransportError"), ("aiohttp", "ClientConnectionError"))


def _http_status(error: BaseException) -> int | None:
    """The status of an HTTP answer carried by ``error`` (urllib, requests), if it is one."""
    for holder in (error, getattr(error, "response", None)):
        for name in ("code", "status", "status_code"):
            status = getattr(holder, name, None)
            if isinstance(status, int) and 100 <= status <= 599:
                return status
    return None


def is_transport_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failure to reach or hear from a server, worth another attempt.

    The default ``retry_on``. Yes: :class:`OSError` (connection refused or reset, DNS,
    urllib's ``URLError``, requests' ``ConnectionError``), :class:`TimeoutError` (read
    timeouts, aiohttp's ``ServerTimeoutError``), ``httpx.TransportError`` (``ConnectError``,
    ``ReadTimeout``, ...), and aiohttp's ``ClientConnectionError`` (``ServerDisconnectedError``,
    ...). No: an HTTP answer with a 4xx status, although urllib's ``HTTPError`` and requests'
    ``HTTPError`` are OSErrors (a 404 stays a 404); 5xx answers are retried.
    """
    if isinstance(error, DEFAULT_RETRY_ON):
        status = _http_status(error)
        return status is None or not 400 <= status < 500
    for module_name, class_name in _TRANSPORT_ERRORS:
        module = sys.modules.get(module_name)
        transport = getattr(module, class_name, None) if module is not None else None
        if isinstance(transport, type) and isinstance(error, transport):
            return True
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class IOBoundOptions:
    """The validated options of one ``@io_bound`` function.

    :ivar concurrency: calls in flight at most.
    :ivar timeout: seconds one attempt may take, or ``None``.
    :ivar retries: further attempts after a failure that ``retry_on`` matches.
    :ivar backoff: seconds before the first retry; doubles for each further one.
    :ivar retry_on: exception types that make an attempt worth repeating; the default
        stands for :func:`is_transport_failure`.
    :ivar rate: attempts started per second at most, or ``None``.
    """

    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float | None = None
    retries: int = 0
    backoff: float = DEFAULT_BACKOFF
    retry_on: tuple[type[Exception], ...] = DEFAULT_RETRY_ON
    rate: float | None = None

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt (if any are left)."""
        if self.retry_on == DEFAULT_RETRY_ON:
            return is_transport_failure(error)
        return isinstance(error, self.retry_on)

    def retry_delays(self) -> Iterator[float]:
        """The retry policy of one item: the seconds to wait before each retry it may make.

        One delay per allowed retry, exponential (``backoff x 2**(retry - 1)``, capped at
        :data:`MAX_BACKOFF`) with jitter: a uniform draw from the upper half, so that
        callers that failed together do not retry together, while the delay still grows.
        """
        for retry in range(1, self.retries + 1):
            ceiling = min(MAX_BACKOFF, self.backoff * 2 ** (retry - 1))
            yield random.uniform(ceiling / 2, ceiling)


class RetryState:
    """Where one item stands in its retries: attempts made, and the delays left to it."""

    __slots__ = ("_delays", "_options", "attempts")

    def __init__(self, options: IOBoundOptions):
        self._options = options
        self._delays = options.retry_delays()
        self.attempts = 1

    def after_failure(self, error: BaseException) -> float | None:
        """The backoff before the next attempt, or ``None`` when ``error`` ends the item."""
        if not self._options.is_retryable(error):
            return None
        delay = next(self._delays, None)
        if delay is not None:
            self.attempts += 1
        return delay


def _exception_types(value: object) -> tuple[type[Exception], ...]:
    types = value if isinstance(value, tuple | list) else (value,)
    for entry in types:
        if not (isinstance(entry, type) and issubclass(entry, Exception)):
            raise TypeError(
                "@io_bound: retry_on must be an exception class or a tuple of them (subclasses of Exception), "
                f"got {entry!r} in {value!r}"
            )
    return tuple(types)


def validate_options(
    *,
    concurrency: object = DEFAULT_CONCURRENCY,
    timeout: object = None,
    retries: object = 0,
    backoff: object = DEFAULT_BACKOFF,
    retry_on: object = DEFAULT_RETRY_ON,
    rate: object = None,
) -> IOBoundOptions:
    """Check the keywords of :func:`io_bound` and return them as options.

    :raises TypeError: on a value of the wrong type (a non-exception in ``retry_on``).
    :raises ValueError: on a value out of range (``concurrency=0``, a negative timeout).
    """
    return IOBoundOptions(
        concurrency=integer(concurrency, "@io_bound: concurrency", minimum=1),
        timeout=optional_number(timeout, "@io_bound: timeout", minimum=0, inclusive=False),
        retries=integer(retries, "@io_bound: retries", minimum=0),
        backoff=number(backoff, "@io_bound: backoff", minimum=0),
        retry_on=_exception_types(retry_on),
        rate=optional_number(rate, "@io_bound: rate", minimum=0, inclusive=False),
    )


class RateLimiter:
    """Spaces the starts of attempts at least ``1 / rate`` seconds apart, across all callers.

    There are no bursts: time spent idle earns no credit, so in any window of ``t``
    seconds at most ``floor(t x rate) + 1`` attempts start, from the first call on. One
    limiter serves every path of a function: threads and event loops reserve slots of it.
    """

    def __init__(self, rate: float):
        self._interval = 1.0 / rate
        self._next_start = -math.inf
        # A threading lock, not an anyio one: threads and event loops share one limiter,
        # and the critical section never waits.
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Claim the next free start slot and return its :func:`time.monotonic` time."""
        with self._lock:
            start = max(time.monotonic(), self._next_start)
            self._next_start = start + self._interval
            return start

    def wait(self) -> None:
        """Claim the next free start slot and sleep in this thread until it comes."""
        delay = self.reserve() - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    async def wait_async(self) -> None:
        """Claim the next free start slot and sleep in this task until it comes."""
        delay = self.reserve() - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


@dataclasses.dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The end of one item: its result or its final exception, and how many attempts it took."""

    index: int
    value: Any
    error: Exception | None
    attempts: int


@dataclasses.dataclass(slots=True)
class _ThreadAttempt:
    index: int
    deadline: float
    given_up: bool = False


class _ThreadScheduler:
    """The bookkeeping of one threaded map: which item starts next, and what each end means.

    It starts attempts when a thread is free (and the rate allows), reads items only as
    fast as threads free up, queues retries after their backoff, and gives up attempts
    past their deadline: a given-up attempt is left on its daemon thread and a fresh
    thread takes its slot. The caller's loop drives it and yields what it settles.
    """

    def __init__(
        self,
        executor: InterruptibleThreadPool,
        call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        items: Iterable[Any],
        *,
        options: IOBoundOptions,
        rate: RateLimiter | None,
        window: int,
        timeout_error: Callable[[], Exception],
    ):
        """:param call: the function, and the arguments that follow the item in every call.
        :param window: how many items may be read and not yet finished.
        :param timeout_error: what an attempt past its deadline fails with.
        """
        self.executor = executor
        self._func, self._args, self._kwargs = call
        self._source = enumerate(items)
        self._options = options
        self._rate = rate
        self._window = window
        self._timeout_error = timeout_error
        self._exhausted = False
        self._held: dict[int, tuple[Any, RetryState]] = {}  # items read and not yet finished
        self._ready: collections.deque[int] = collections.deque()
        self._backing_off: list[tuple[float, int]] = []  # heap of (due time, index)
        self.running: dict[concurrent.futures.Future[Any], _ThreadAttempt] = {}
        self._live = 0  # attempts running and not given up
        self._slot: float | None = None  # a reserved rate slot, not yet used
        self._completions: queue.SimpleQueue[concurrent.futures.Future[Any]] = queue.SimpleQueue()

    def start_attempts(self) -> None:
        """Start attempts while a thread is free: retries whose backoff is over first, then new items."""
        now = time.monotonic()
        while self._backing_off and self._backing_off[0][0] <= now:
            self._ready.append(heapq.heappop(self._backing_off)[1])
        # Items are read only when a thread is free for them, so that a slow or endless
        # iterator is consumed at the pace of the calls.
        while self._live < self._options.concurrency:
            if not self._ready and not self._read_item():
                break
            now = time.monotonic()
            if self._rate is not None:
                self._slot = self._rate.reserve() if self._slot is None else self._slot
                if self._slot > now:
                    break
                self._slot = None
            self._start(self._ready.popleft(), now)

    def _read_item(self) -> bool:
        """Read the next item if the window allows; whether one is ready now."""
        if self._exhausted or len(self._held) >= self._window:
            return False
        entry = next(self._source, None)
        if entry is None:
            self._exhausted = True
            return False
        self._held[entry[0]] = (entry[1], RetryState(self._options))
        self._ready.append(entry[0])
        return True

    def _start(self, index: int, now: float) -> None:
        deadline = math.inf if self._options.timeout is None else now + self._options.timeout
        future = self.executor.submit(self._func, self._held[index][0], *self._args, **self._kwargs)
        self.running[future] = _ThreadAttempt(index, deadline)
        self._live += 1
        future.add_done_callback(self._completions.put)

    def finished(self) -> bool:
        """Whether every item was read and has ended."""
        return self._exhausted and not self._held

    def wait_for_completions(self) -> list[concurrent.futures.Future[Any]]:
        """Wait until an attempt ends, a deadline or backoff passes, or the rate allows a start."""
        wake = min(
            [a.deadline for a in self.running.values() if not a.given_up]
            + [self._backing_off[0][0] if self._backing_off else math.inf]
            + [self._slot if self._slot is not None else math.inf]
        )
        wait = None if wake == math.inf else max(0.0, wake - time.monotonic())
        done: list[concurrent.futures.Future[Any]] = []
        if self.running:
            with contextlib.suppress(queue.Empty):
                done.append(self._completions.get(timeout=wait))
                while True:
                    done.append(self._completions.get_nowait())
        else:
            # Nothing in flight: only a backoff or the rate holds the next start.
            time.sleep(wait or 0.0)
        return done

    def settle(self, done: list[concurrent.futures.Future[Any]], now: float) -> Iterator[ItemOutcome]:
        """The outcomes of the items whose attempts in ``done`` ended them.

        :raises BaseException: what is not an ``Exception`` (``KeyboardInterrupt`` in a call).
        """
        for future in done:
            attempt = self.running.pop(future)
            if attempt.given_up:
                self.executor.add_threads(-1)  # its thread is free again
                continue
            self._live -= 1
            error = future.exception()
            if error is None:
                _, retry = self._held.pop(attempt.index)
                yield ItemOutcome(attempt.index, future.result(), None, retry.attempts)
            elif isinstance(error, Exception):
                outcome = self._failed(attempt, error, now)
                if outcome is not None:
                    yield outcome
            else:
                raise error

    def give_up_late(self, now: float) -> Iterator[ItemOutcome]:
        """Give up the attempts past their deadline: the outcomes of the items that ends."""
        expired = [a for a in self.running.values() if not a.given_up and a.deadline <= now]
        for attempt in expired:
            attempt.given_up = True
            self._live -= 1
            self.executor.add_threads(1)  # a fresh thread takes the abandoned one's slot
            outcome = self._failed(attempt, self._timeout_error(), now)
            if outcome is not None:
                yield outcome

    def _failed(self, attempt: _ThreadAttempt, error: Exception, now: float) -> ItemOutcome | None:
        retry = self._held[attempt.index][1]
        delay = retry.after_failure(error)
        if delay is not None:
            heapq.heappush(self._backing_off, (now + delay, attempt.index))
            return None
        del self._held[attempt.index]
        return ItemOutcome(attempt.index, None, error, retry.attempts)


@dataclasses.dataclass(slots=True)
class _LoopState:
    """Per event loop: the function's limiter."""

    limiter: anyio.CapacityLimiter


def _interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The :class:`KeyboardInterrupt` in ``error`` or in the exception group it is, if any."""
    if isinstance(error, KeyboardInterrupt):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _interrupt_in(inner)
            if found is not None:
                return found
    return None


def _raise_ungrouped(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise what a task group wrapped as the user would expect it: Ctrl-C as Ctrl-C.

    On trio, Ctrl-C arrives in one task and the task group wraps it; a caller must see
    :class:`KeyboardInterrupt`, as it does on asyncio.
    """
    interrupt = _interrupt_in(group)
    if interrupt is not None:
        raise interrupt.with_traceback(interrupt.__traceback__) from None
    if len(group.exceptions) == 1:
        raise group.exceptions[0] from None
    raise group


def _thread_safe_waker() -> Callable[[Callable[[], object]], None]:
    """A function that has the current event loop run a callback soon, from any thread.

    It never blocks (a pool thread must not wait on an event loop that may have stopped)
    and does nothing once the loop has ended.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio(callback: Callable[[], object]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(callback)

        return wake_trio

    def wake_asyncio(callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(callback)

    return wake_asyncio


async def _call_in_pool(
    pool: InterruptibleThreadPool, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``func`` on a thread of ``pool`` and await its result without holding a thread to wait.

    Given up (a timeout, a failure elsewhere, a cancelled caller, Ctrl-C), the call is
    abandoned on its daemon thread, and the pool grows by one thread until it returns, so
    that the next call does not queue behind it.
    """
    future = pool.submit(contextvars.copy_context().run, func, *args, **kwargs)
    finished = anyio.Event()
    wake = _thread_safe_waker()
    future.add_done_callback(lambda _: wake(finished.set))
    try:
        await finished.wait()
    except BaseException:
        if not future.done() and not future.cancel():
            pool.add_threads(1)
            future.add_done_callback(lambda _: pool.add_threads(-1))
        raise
    return future.result()


class _IOBoundBase(abc.ABC, Generic[P, R]):
    def __init__(self, func: Callable[P, Any], options: IOBoundOptions):
        # The base has no __call__ (each subclass defines its own), which typeshed expects here.
        functools.update_wrapper(self, func)  # type: ignore[arg-type]
        self._func: Callable[..., Any] = func
        self._options = options
        self._name: str = getattr(func, "__qualname__", repr(func))
        self._rate = None if options.rate is None else RateLimiter(options.rate)
        self._loop_state: RunVar[_LoopState] = RunVar(f"conc_ml_io_bound_{id(self)}")
        # Items a thread pool holds at once (running, ready or backing off): bounded, so that
        # many retries cannot make it read a long iterator all at once.
        self._window = 2 * options.concurrency

    def __reduce__(self) -> tuple[Any, ...]:
        # Locks and per-loop limiters stay behind: another process gets its own.
        return (type(self), (self._func, self._options))

    #: set by the decorator when it wraps a classmethod or staticmethod
    _method_kind = MethodKind.FUNCTION

    def _bind(self, instance: object, owner: type[Any] | None) -> Any:
        """Bind to the instance (or class) a method is looked up on, as a ``def`` would.

        The bound copy shares this function's limiter, rate and options: ``concurrency``
        and ``rate`` hold across all instances, as they do across all callers.
        """
        if instance is None and self._method_kind is not MethodKind.CLASS:
            return self
        target = bind_target(self._method_kind, instance, owner)
        if target is None:
            return self
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._func = bound.__wrapped__ = types.MethodType(self._func, target)  # type: ignore[attr-defined]
        return bound

    @property
    def io_options(self) -> IOBoundOptions:
        """The function's validated options."""
        return self._options

    def __repr__(self) -> str:
        return f"<io_bound function {self._name} {self._options}>"

    # -- shared pieces --------------------------------------------------------------

    def _timeout_error(self, *, in_thread: bool) -> TimeoutError:
        what = f"{self._name}() did not finish within timeout={self._options.timeout:g} s"
        if in_thread:
            return TimeoutError(f"{what}; {ABANDONED_THREADS_NOTE}")
        return TimeoutError(f"{what}; the call was cancelled")

    def _annotate(self, outcome: ItemOutcome, where: str) -> Exception:
        assert outcome.error is not None
        outcome.error.add_note(
            f"conc-ml: raised by item {outcome.index} of {self._name}.{where}() "
            f"after {outcome.attempts} attempt(s) (retries={self._options.retries})"
        )
        return outcome.error

    def _note_attempts(self, error: Exception, attempts: int) -> None:
        if attempts > 1:
            error.add_note(f"conc-ml: {self._name}() failed {attempts} times (retries={self._options.retries})")

    def _state(self) -> _LoopState:
        try:
            return self._loop_state.get()
        except LookupError:
            state = _LoopState(anyio.CapacityLimiter(self._options.concurrency))
            self._loop_state.set(state)
            return state

    @staticmethod
    async def _acquire(state: _LoopState) -> object:
        """Take a slot of the limiter for a new token, and return the token.

        A free slot is taken without a pause: the call that follows yields soon enough, and
        the limiter's two checkpoints were more than half of the per-call overhead. Waiting
        callers keep their place in the queue.
        """
        token = object()
        try:
            state.limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            await state.limiter.acquire_on_behalf_of(token)
        return token

    async def _attempt_async(self, run: Callable[[], Awaitable[Any]], state: _LoopState, *, in_thread: bool) -> Any:
        """One attempt: a slot of the function's limiter, the rate, then ``run()`` within the timeout."""
        token = await self._acquire(state)
        try:
            if self._rate is not None:
                await self._rate.wait_async()
            if self._options.timeout is None:
                return await run()
            with anyio.move_on_after(self._options.timeout):
                return await run()
            raise self._timeout_error(in_thread=in_thread)
        finally:
            state.limiter.release_on_behalf_of(token)

    async def _retrying(
        self, index: int, attempt_once: Callable[[], Awaitable[Any]], retry: RetryState, delay: float | None
    ) -> ItemOutcome:
        """Run attempts until one succeeds or a failure ends the item, first waiting ``delay`` if given."""
        while True:
            if delay is not None:
                await anyio.sleep(delay)
            try:
                value = await attempt_once()
            except Exception as failure:
                delay = retry.after_failure(failure)
                if delay is None:
                    return ItemOutcome(index, None, failure, retry.attempts)
            else:
                return ItemOutcome(index, value, None, retry.attempts)

    @abc.abstractmethod
    def _runner(self) -> contextlib.AbstractAsyncContextManager[CallRunner]:
        """What runs one call of an async map: in this event loop, or on a thread."""

    _runs_in_threads = False

    async def _drive(
        self,
        items: Iterable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deliver: Callable[[ItemOutcome], bool],
    ) -> None:
        """Run one call per item, at most ``concurrency`` at once, and deliver each outcome.

        ``concurrency`` worker tasks take items from one shared iterator, so that items are
        read only as fast as calls finish and no task is spawned per item. An item that
        must wait out a backoff moves to a task of its own and its worker moves on.
        ``deliver`` returns ``True`` to stop: the calls still running are then cancelled.
        """
        state = self._state()
        source = enumerate(items)
        iteration_error: list[Exception] = []

        async with self._runner() as run:

            def attempt(item: Any) -> Callable[[], Awaitable[Any]]:
                return lambda: self._attempt_async(
                    lambda: run((item, *args), kwargs), state, in_thread=self._runs_in_threads
                )

            async def finish_item(index: int, item: Any, retry: RetryState, delay: float, group: TaskGroup) -> None:
                if deliver(await self._retrying(index, attempt(item), retry, delay)):
                    group.cancel_scope.cancel()

            async def worker(group: TaskGroup) -> None:
                while True:
                    # One event loop thread: no other worker can be inside next() at the same time.
                    try:
                        entry = next(source, None)
                    except Exception as error:
                        # The caller's iterator failed: stop, and raise that error as it is.
                        iteration_error.append(error)
                        group.cancel_scope.cancel()
                        return
                    if entry is None:
                        return
                    index, item = entry
                    retry = RetryState(self._options)
                    try:
                        value = await attempt(item)()
                    except Exception as error:
                        delay = retry.after_failure(error)
                        if delay is not None:
                            group.start_soon(finish_item, index, item, retry, delay, group)
                            continue
                        outcome = ItemOutcome(index, None, error, retry.attempts)
                    else:
                        outcome = ItemOutcome(index, value, None, 1)
                    if deliver(outcome):
                        group.cancel_scope.cancel()
                        return

            workers = min(self._options.concurrency, max(1, operator.length_hint(items, self._options.concurrency)))
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(workers):
                        group.start_soon(worker, group)
            except BaseExceptionGroup as group_error:
                _raise_ungrouped(group_error)
        if iteration_error:
            raise iteration_error[0]

    async def _amap(
        self, items: Iterable[Any], args: tuple[Any, ...], kwargs: dict[str, Any], return_exceptions: bool, where: str
    ) -> list[Any]:
        results: dict[int, Any] = {}
        failure: ItemOutcome | None = None

        def deliver(outcome: ItemOutcome) -> bool:
            nonlocal failure
            if failure is not None:
                return True  # already stopping: what still arrives is not wanted
            if outcome.error is not None:
                self._annotate(outcome, where)
                if not return_exceptions:
                    failure = outcome
                    return True
            results[outcome.index] = outcome.value if outcome.error is None else outcome.error
            return False

        await self._drive(items, args, kwargs, deliver)
        # Raised here, outside the task group, so that it keeps its own type rather than
        # arriving inside an ExceptionGroup.
        if failure is not None:
            assert failure.error is not None
            raise failure.error
        return [results[index] for index in range(len(results))]


class AsyncIOBoundFunction(_IOBoundBase[P, R]):
    """An ``async def`` function whose calls are limited, timed out, retried and rate-limited.

    Created by :func:`io_bound`.
    """

    def __init__(self, func: Callable[P, Awaitable[R]], options: IOBoundOptions):
        super().__init__(func, options)
        self.__wrapped__: Callable[P, Awaitable[R]] = func

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(
        self: AsyncIOBoundFunction[Concatenate[Any, _Q], R], instance: object, owner: type[Any] | None = None
    ) -> AsyncIOBoundFunction[_Q, R]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        """A method looked up on an instance (or a classmethod on its class) binds to it."""
        return self._bind(instance, owner)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await one call under the function's limiter, timeout, retries and rate.

        :raises Exception: the call's own exception once retries are spent, as its own type;
            :class:`TimeoutError` if the last attempt took longer than ``timeout``.
        """
        state = self._state()
        outcome = await self._retrying(
            0,
            lambda: self._attempt_async(lambda: self.__wrapped__(*args, **kwargs), state, in_thread=False),
            RetryState(self._options),
            None,
        )
        if outcome.error is not None:
            self._note_attempts(outcome.error, outcome.attempts)
            raise outcome.error
        return outcome.value  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def _runner(self) -> AsyncIterator[CallRunner]:
        yield lambda args, kwargs: self.__wrapped__(*args, **kwargs)

    async def map(
        self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any
    ) -> list[Any]:
        """Await one call per item, concurrently; results in input order.

        Each item is passed as the first argument; ``args`` and ``kwargs`` go to every call.

        :param items: the first argument of each call (read lazily, as slots free up).
        :param return_exceptions: put each failed item's exception in its place in the
            result instead of raising.
        :raises Exception: without ``return_exceptions``, the first item that fails for
            good, as its own type with a note naming its index; the other calls are cancelled.
        :raises KeyboardInterrupt: on Ctrl-C, as itself on asyncio and trio alike.
        """
        return await self._amap(items, args, kwargs, return_exceptions, "map")

    amap = map

    async def stream(
        self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any
    ) -> AsyncIterator[tuple[int, Any]]:
        """Yield ``(index, result)`` for each item as its call finishes.

        Consume it fully, or close it (``contextlib.aclosing``) when leaving early: that
        cancels the calls still running.

        :param return_exceptions: yield ``(index, exception)`` for failed items instead of raising.
        :raises Exception: without ``return_exceptions``, the first item that fails for good.
        """
        failure: ItemOutcome | None = None
        send, receive = anyio.create_memory_object_stream[ItemOutcome](math.inf)

        def deliver(outcome: ItemOutcome) -> bool:
            # The receiver is gone only when the caller stopped early; the outcome is not wanted.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(outcome)
            return False

        async def drive() -> None:
            with send:
                await self._drive(items, args, kwargs, deliver)

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(drive)
                with receive:
                    try:
                        async for outcome in receive:
                            if outcome.error is not None:
                                self._annotate(outcome, "stream")
                                if not return_exceptions:
                                    failure = outcome
                                    group.cancel_scope.cancel()
                                    break
                                yield outcome.index, outcome.error
                            else:
                                yield outcome.index, outcome.value
                    except GeneratorExit:
                        # The caller closed the stream early: cancel the calls still running and
                        # end quietly (the task group would wrap GeneratorExit in a group).
                        group.cancel_scope.cancel()
        except BaseExceptionGroup as group_error:
            _raise_ungrouped(group_error)
        if failure is not None:
            assert failure.error is not None
            raise failure.error


class IOBoundFunction(_IOBoundBase[P, R]):
    """A sync function whose calls run concurrently on threads, with limits, timeouts and retries.

    Created by :func:`io_bound`.
    """

    _runs_in_threads = True

    def __init__(self, func: Callable[P, R], options: IOBoundOptions):
        super().__init__(func, options)
        self.__wrapped__: Callable[P, R] = func

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(
        self: IOBoundFunction[Concatenate[Any, _Q], R], instance: object, owner: type[Any] | None = None
    ) -> IOBoundFunction[_Q, R]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        """A method looked up on an instance (or a classmethod on its class) binds to it."""
        return self._bind(instance, owner)

    def _pool(self) -> InterruptibleThreadPool:
        return InterruptibleThreadPool(self._options.concurrency, thread_name_prefix=f"conc-ml {self._name}")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function once, with the rate, retries and timeout.

        Without ``timeout`` the call runs in this thread, as a plain call. With it, the call
        runs on a thread of its own (with this thread's context variables) that is
        abandoned when the timeout passes: a thread cannot be stopped, so a late call runs
        on in the background, on a daemon thread, until it returns.

        :raises Exception: the call's own exception once retries are spent, as its own type;
            :class:`TimeoutError` if the last attempt took longer than ``timeout``.
        """
        retry = RetryState(self._options)
        while True:
            if self._rate is not None:
                self._rate.wait()
            try:
                return self._call_once(args, kwargs)
            except Exception as error:
                delay = retry.after_failure(error)
                if delay is None:
                    self._note_attempts(error, retry.attempts)
                    raise
            time.sleep(delay)

    def _call_once(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        if self._options.timeout is None:
            return self.__wrapped__(*args, **kwargs)
        pool = InterruptibleThreadPool(1, thread_name_prefix=f"conc-ml {self._name}")
        future = pool.submit(contextvars.copy_context().run, self.__wrapped__, *args, **kwargs)
        interrupted = True
        try:
            concurrent.futures.wait([future], timeout=self._options.timeout)
            interrupted = False
        finally:
            # Ctrl-C interrupts the call too; a late call is abandoned, never waited for.
            if future.done():
                pool.shutdown(wait=True)
            else:
                pool.abandon(interrupt=interrupted)
        if not future.done():
            raise self._timeout_error(in_thread=True)
        return future.result()  # type: ignore[no-any-return]

    # -- threads ----------------------------------------------------------------------

    def _iter_in_threads(
        self, items: Iterable[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[ItemOutcome, None, None]:
        """Run one call per item on a pool of ``concurrency`` threads; yield outcomes as they end.

        This thread schedules: it starts attempts when a thread is free (and the rate
        allows), gives up attempts past their deadline, and queues retries after their
        backoff. A given-up attempt is abandoned on its daemon thread and a fresh thread
        takes its slot, so that a stuck call never holds the others past its timeout.
        """
        scheduler = _ThreadScheduler(
            self._pool(),
            (self.__wrapped__, args, kwargs),
            items,
            options=self._options,
            rate=self._rate,
            window=self._window,
            timeout_error=lambda: self._timeout_error(in_thread=True),
        )
        watch = InterruptWatch()
        interrupted = False
        try:
            while True:
                scheduler.start_attempts()
                if scheduler.finished():
                    return
                done = scheduler.wait_for_completions()
                now = time.monotonic()
                yield from scheduler.settle(done, now)  # in completion order
                yield from scheduler.give_up_late(now)
        except BaseException as error:
            if not isinstance(error, Exception | GeneratorExit) or (
                isinstance(error, GeneratorExit) and watch.interrupted()
            ):
                # Ctrl-C, here or in the body of the caller's loop over ``stream``: the
                # running calls get KeyboardInterrupt too (they stop at their next Python
                # instruction) and nobody waits for them.
                scheduler.executor.abandon(interrupt=True)
                interrupted = True
            raise
        finally:
            watch.close()
            if not interrupted:
                self._finish_threads(scheduler.executor, scheduler.running)

    def _finish_threads(
        self, executor: InterruptibleThreadPool, running: dict[concurrent.futures.Future[Any], _ThreadAttempt]
    ) -> None:
        """Drop what has not started; wait for running calls within their timeout, abandon the rest."""
        executor.shutdown(wait=False, cancel_futures=True)
        # A call cancelled in the queue never notifies waiters: wait only for those that started.
        live = [future for future, attempt in running.items() if not attempt.given_up and not future.cancelled()]
        try:
            if live:
                deadline = max(running[future].deadline for future in live)
                timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
                concurrent.futures.wait(live, timeout=timeout)
        except BaseException:
            executor.abandon(interrupt=True)  # Ctrl-C while waiting
            raise
        if all(future.done() for future in running):
            executor.shutdown(wait=True)  # joins idle threads only
        else:
            executor.abandon(interrupt=False)

    def map(self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Call the function once per item on a pool of ``concurrency`` threads; results in input order.

        Each item is passed as the first argument; ``args`` and ``kwargs`` go to every call.
        A call past its ``timeout`` fails with :class:`TimeoutError` and is abandoned on
        its daemon thread (a thread cannot be stopped); a fresh thread takes its slot.

        :param items: the first argument of each call (read lazily, as slots free up).
        :param return_exceptions: put each failed item's exception in its place in the
            result instead of raising.
        :raises Exception: without ``return_exceptions``, the first item that fails for
            good, as its own type with a note naming its index; calls not yet started are
            dropped, running ones are waited for within their timeout.
        :raises KeyboardInterrupt: on Ctrl-C, at once: the running calls are interrupted
            (at their next Python instruction) and abandoned, whatever they are blocked in.
        """
        results: dict[int, Any] = {}
        with contextlib.closing(self._iter_in_threads(items, args, kwargs)) as outcomes:
            for outcome in outcomes:
                if outcome.error is not None:
                    error = self._annotate(outcome, "map")
                    if not return_exceptions:
                        raise error
                results[outcome.index] = outcome.value if outcome.error is None else outcome.error
        return [results[index] for index in range(len(results))]

    def stream(
        self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` for each item as its call finishes, calls running on threads.

        Leaving the loop early drops the calls not yet started and waits for running ones
        within their timeout; Ctrl-C in the loop's body interrupts and abandons them.

        :param return_exceptions: yield ``(index, exception)`` for failed items instead of raising.
        :raises Exception: without ``return_exceptions``, the first item that fails for good.
        """
        with contextlib.closing(self._iter_in_threads(items, args, kwargs)) as outcomes:
            for outcome in outcomes:
                if outcome.error is not None:
                    error = self._annotate(outcome, "stream")
                    if not return_exceptions:
                        raise error
                    yield outcome.index, error
                else:
                    yield outcome.index, outcome.value

    # -- async callers --------------------------------------------------------------

    async def amap(
        self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any
    ) -> list[Any]:
        """From async code: one call per item on a thread pool of this call, under the function's limiter.

        Same arguments and results as :meth:`map`. Works on asyncio and trio. When the
        caller is cancelled (or on Ctrl-C), calls not yet started are dropped and running
        ones are abandoned on their daemon threads: nothing waits for a call blocked in C.

        :raises Exception: without ``return_exceptions``, the first item that fails for good.
        :raises KeyboardInterrupt: on Ctrl-C, as itself on asyncio and trio alike.
        """
        return await self._amap(items, args, kwargs, return_exceptions, "amap")

    @contextlib.asynccontextmanager
    async def _runner(self) -> AsyncIterator[CallRunner]:
        pool = self._pool()
        interrupted = False
        try:
            yield lambda args, kwargs: _call_in_pool(pool, self.__wrapped__, args, kwargs)
        except BaseException as error:
            interrupted = _interrupt_in(error) is not None
            raise
        finally:
            pool.close(interrupt=interrupted)


class _IOBoundDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /) -> AsyncIOBoundFunction[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, func: Callable[P, R], /) -> IOBoundFunction[P, R]: ...


@overload
def io_bound(func: Callable[P, Awaitable[R]], /) -> AsyncIOBoundFunction[P, R]: ...  # type: ignore[overload-overlap]
@overload
def io_bound(func: Callable[P, R], /) -> IOBoundFunction[P, R]: ...
@overload
def io_bound(
    *,
    concurrency: int = ...,
    timeout: float | None = ...,
    retries: int = ...,
    backoff: float = ...,
    retry_on: type[Exception] | tuple[type[Exception], ...] = ...,
    rate: float | None = ...,
) -> _IOBoundDecorator: ...


def io_bound(
    func: Callable[..., Any] | None = None,
    /,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    retry_on: type[Exception] | tuple[type[Exception], ...] = DEFAULT_RETRY_ON,
    rate: float | None = None,
) -> Any:
    """Make a function that waits on I/O callable for many items at once, safely.

    Usable bare (``@io_bound``) or with options; options are checked here, when the
    decorator is applied. ``async def`` functions get ``await f(x)``, ``await f.map(items)``
    and ``f.stream(items)``; sync functions keep plain calls and get ``f.map(items)`` (a
    thread pool), ``f.stream(items)`` and ``await f.amap(items)``.

    :param concurrency: calls in flight at most (per event loop for async calls, shared by
        every caller; per call of ``map``/``stream`` for threads).
    :param timeout: seconds one attempt may take; a late attempt fails with :class:`TimeoutError`
        (retried when ``retry_on`` matches it, as it does by default). A coroutine is
        cancelled then. A sync call (plain, ``map``, ``stream`` or ``amap``) runs on a
        daemon thread that is abandoned, since a thread cannot be stopped: it runs on
        until its call returns, a fresh thread takes its slot, and neither the caller nor
        the interpreter's exit waits for it.
    :param retries: further attempts after a failure matched by ``retry_on``.
    :param backoff: seconds before the first retry; doubled for each further one (up to
        :data:`MAX_BACKOFF`), with random jitter over the upper half.
    :param retry_on: exception class(es) worth retrying. The default, transport failures
        (:func:`is_transport_failure`): :class:`OSError` and :class:`TimeoutError`
        (connection refused or reset, DNS, read timeouts; urllib's ``URLError``, requests'
        ``ConnectionError`` and ``Timeout``), ``httpx.TransportError`` (``ConnectError``,
        ``ReadTimeout``, ...) and aiohttp's ``ClientConnectionError``, but never an HTTP
        answer with a 4xx status (urllib's and requests' ``HTTPError`` are OSErrors: a 404
        is not retried; a 5xx is). An explicit ``retry_on`` is used as given.
    :param rate: attempts started per second at most, across every caller of the function;
        starts are spaced ``1 / rate`` apart and idle time banks no burst.
    :raises KeyboardInterrupt: Ctrl-C during any call or map comes back at once: running
        calls are interrupted at their next Python instruction and abandoned, whatever
        they are blocked in.
    :raises TypeError: on an option of the wrong type, or if ``func`` is not a function.
    :raises ValueError: on an option out of range.
    """
    options = validate_options(
        concurrency=concurrency, timeout=timeout, retries=retries, backoff=backoff, retry_on=retry_on, rate=rate
    )

    def decorate(target: Callable[..., Any]) -> _IOBoundBase[..., Any]:
        target, method_kind = unwrap_method(target)
        if not callable(target):
            raise TypeError(f"@io_bound decorates a function, not {type(target).__name__}")
        if isinstance(target, _IOBoundBase):
            raise TypeError(f"{target._name}() is already decorated with @io_bound")
        wrapper: _IOBoundBase[..., Any]
        if inspect.iscoroutinefunction(target):
            wrapper = AsyncIOBoundFunction(target, options)
        else:
            wrapper = IOBoundFunction(target, options)
        wrapper._method_kind = method_kind
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
