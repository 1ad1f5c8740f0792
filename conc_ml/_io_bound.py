"""The ``@io_bound`` decorator: many calls of a function that waits on I/O, run concurrently.

One decorated function, three ways to run many calls:

- ``async def``: ``await f.map(items)`` / ``async for i, r in f.stream(items)`` run anyio
  tasks in the caller's event loop (asyncio or trio), each call holding a token of the
  function's own :class:`anyio.CapacityLimiter` (one per event loop, shared by every
  caller, so ``await f(x)`` from many tasks is limited too).
- a sync function: ``f.map(items)`` / ``f.stream(items)`` run on a thread pool of
  ``concurrency`` threads owned by that call; ``await f.amap(items)`` runs the calls in
  anyio worker threads under the function's limiter.

Retries, backoff, the per-call timeout and the rate apply to every attempt on every path.
A sync call cannot be interrupted: when its timeout passes it is given up (and retried if
allowed) but its thread runs on, holding its concurrency slot, until the function
returns; every path waits for such threads before it returns, so none outlives the call.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import heapq
import inspect
import math
import numbers
import operator
import queue
import random
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.lowlevel import RunVar

from ._methods import MethodKind, bind_target, unwrap_method
from .backends._thread import InterruptibleThreadPool

__all__ = ["AsyncIOBoundFunction", "IOBoundFunction", "IOBoundOptions", "io_bound"]

P = ParamSpec("P")
R = TypeVar("R")

#: what a failed attempt must be an instance of to be retried, unless ``retry_on`` says otherwise
DEFAULT_RETRY_ON: tuple[type[Exception], ...] = (OSError, TimeoutError)

DEFAULT_CONCURRENCY = 16
DEFAULT_BACKOFF = 0.1

#: no backoff delay grows beyond this, however many retries are allowed
MAX_BACKOFF = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class IOBoundOptions:
    """The validated options of one ``@io_bound`` function.

    :ivar concurrency: calls in flight at most.
    :ivar timeout: seconds one attempt may take, or ``None``.
    :ivar retries: further attempts after a failure that ``retry_on`` matches.
    :ivar backoff: seconds before the first retry; doubles for each further one.
    :ivar retry_on: exception types that make an attempt worth repeating.
    :ivar rate: attempts started per second at most, or ``None``.
    """

    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float | None = None
    retries: int = 0
    backoff: float = DEFAULT_BACKOFF
    retry_on: tuple[type[Exception], ...] = DEFAULT_RETRY_ON
    rate: float | None = None

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether ``error``, raised by attempt number ``attempt`` (from 1), earns another attempt."""
        return attempt <= self.retries and isinstance(error, self.retry_on)

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1).

        Exponential (``backoff x 2**(attempt - 1)``, capped at :data:`MAX_BACKOFF`) with
        jitter: a uniform draw from the upper half, so that callers that failed together
        do not retry together, while the delay still grows with each attempt.
        """
        ceiling = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def _number(name: str, value: object, *, minimum: float, inclusive: bool, allow_none: bool) -> float | None:
    allowed = f"a number {'>=' if inclusive else '>'} {minimum:g}" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"@io_bound: {name} must be {allowed}, not {type(value).__name__} {value!r}")
    if math.isnan(value) or value < minimum or (value == minimum and not inclusive):
        raise ValueError(f"@io_bound: {name} must be {allowed}, got {value!r}")
    return float(value)


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"@io_bound: {name} must be an int >= {minimum}, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"@io_bound: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


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
        concurrency=_count("concurrency", concurrency, minimum=1),
        timeout=_number("timeout", timeout, minimum=0, inclusive=False, allow_none=True),
        retries=_count("retries", retries, minimum=0),
        backoff=_number("backoff", backoff, minimum=0, inclusive=True, allow_none=False) or 0.0,
        retry_on=_exception_types(retry_on),
        rate=_number("rate", rate, minimum=0, inclusive=False, allow_none=True),
    )


class RateLimiter:
    """Spaces the starts of attempts at least ``1 / rate`` seconds apart, across all callers.

    There are no bursts: time spent idle earns no credit, so in any window of ``t``
    seconds at most ``floor(t x rate) + 1`` attempts start, from the first call on.
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
    number: int
    deadline: float
    given_up: bool = False


@dataclasses.dataclass(slots=True)
class _LoopState:
    """Per event loop: the function's limiter, and an unbounded one for its worker threads."""

    limiter: anyio.CapacityLimiter
    # anyio's default thread limiter (40 tokens) would cap a higher ``concurrency``; the
    # function's own limiter is already held by the task that starts the thread.
    thread_limiter: anyio.CapacityLimiter


class _IOBoundBase(Generic[P, R]):
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

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
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

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(f"{self._name}() did not finish within timeout={self._options.timeout:g} s")

    def _annotate(self, outcome: ItemOutcome, where: str) -> Exception:
        assert outcome.error is not None
        outcome.error.add_note(
            f"conc-ml: raised by item {outcome.index} of {self._name}.{where}() "
            f"after {outcome.attempts} attempt(s) (retries={self._options.retries})"
        )
        return outcome.error

    def _state(self) -> _LoopState:
        try:
            return self._loop_state.get()
        except LookupError:
            state = _LoopState(anyio.CapacityLimiter(self._options.concurrency), anyio.CapacityLimiter(math.inf))
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

    async def _wait_rate_async(self) -> None:
        if self._rate is not None:
            delay = self._rate.reserve() - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)

    async def _retrying(
        self, index: int, attempt_once: Callable[[], Awaitable[Any]], first: int = 1, error: Exception | None = None
    ) -> ItemOutcome:
        """Run attempts from number ``first`` until one succeeds, or a failure ends the item.

        ``error``, if given, is the failure of attempt ``first - 1``: its backoff comes first.
        """
        number = first
        while True:
            if error is not None:
                await anyio.sleep(self._options.retry_delay(number - 1))
            try:
                value = await attempt_once()
            except Exception as failure:
                if not self._options.should_retry(failure, number):
                    return ItemOutcome(index, None, failure, number)
                error = failure
                number += 1
            else:
                return ItemOutcome(index, value, None, number)

    async def _attempt_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], state: _LoopState, group: TaskGroup | None
    ) -> Any:
        """One attempt, holding a slot of the function's limiter while the call runs."""
        raise NotImplementedError

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

        def attempt(item: Any, group: TaskGroup) -> Callable[[], Awaitable[Any]]:
            return lambda: self._attempt_async((item, *args), kwargs, state, group)

        async def finish_item(index: int, item: Any, error: Exception, group: TaskGroup) -> None:
            outcome = await self._retrying(index, attempt(item, group), first=2, error=error)
            if deliver(outcome):
                group.cancel_scope.cancel()

        iteration_error: list[Exception] = []

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
                try:
                    value = await self._attempt_async((item, *args), kwargs, state, group)
                except Exception as error:
                    if self._options.should_retry(error, 1):
                        group.start_soon(finish_item, index, item, error, group)
                        continue
                    outcome = ItemOutcome(index, None, error, 1)
                else:
                    outcome = ItemOutcome(index, value, None, 1)
                if deliver(outcome):
                    group.cancel_scope.cancel()
                    return

        workers = min(self._options.concurrency, max(1, operator.length_hint(items, self._options.concurrency)))
        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker, group)
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

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await one call under the function's limiter, timeout, retries and rate.

        :raises Exception: the call's own exception once retries are spent, as its own type;
            :class:`TimeoutError` if the last attempt took longer than ``timeout``.
        """
        state = self._state()
        outcome = await self._retrying(0, lambda: self._attempt_async(args, kwargs, state, None))
        if outcome.error is not None:
            if outcome.attempts > 1:
                outcome.error.add_note(
                    f"conc-ml: {self._name}() failed {outcome.attempts} times (retries={self._options.retries})"
                )
            raise outcome.error
        return outcome.value  # type: ignore[no-any-return]

    async def _attempt_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], state: _LoopState, group: TaskGroup | None
    ) -> Any:
        token = await self._acquire(state)
        try:
            await self._wait_rate_async()
            if self._options.timeout is None:
                return await self.__wrapped__(*args, **kwargs)
            with anyio.move_on_after(self._options.timeout):
                return await self.__wrapped__(*args, **kwargs)
            raise self._timeout_error()
        finally:
            state.limiter.release_on_behalf_of(token)

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
        if failure is not None:
            assert failure.error is not None
            raise failure.error


class IOBoundFunction(_IOBoundBase[P, R]):
    """A sync function whose calls run concurrently on threads, with limits, timeouts and retries.

    Created by :func:`io_bound`.
    """

    def __init__(self, func: Callable[P, R], options: IOBoundOptions):
        super().__init__(func, options)
        self.__wrapped__: Callable[P, R] = func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function in this thread, with the rate and retries (not the timeout).

        A plain call cannot be interrupted, so ``timeout`` applies to ``map``, ``stream``
        and ``amap`` only.

        :raises Exception: the call's own exception once retries are spent, as its own type.
        """
        number = 1
        while True:
            if self._rate is not None:
                delay = self._rate.reserve() - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                return self.__wrapped__(*args, **kwargs)
            except Exception as error:
                if not self._options.should_retry(error, number):
                    if number > 1:
                        error.add_note(
                            f"conc-ml: {self._name}() failed {number} times (retries={self._options.retries})"
                        )
                    raise
            time.sleep(self._options.retry_delay(number))
            number += 1

    # -- threads ----------------------------------------------------------------------

    def _iter_in_threads(
        self, items: Iterable[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[ItemOutcome, None, None]:
        """Run one call per item on a pool of ``concurrency`` threads; yield outcomes as they end.

        This thread schedules: it starts attempts when a thread is free (and the rate
        allows), gives up attempts past their deadline, and queues retries after their
        backoff. A given-up attempt keeps its thread until it returns, so the number of
        calls in flight never exceeds ``concurrency``.
        """
        options = self._options
        func = self.__wrapped__
        source = enumerate(items)
        exhausted = False
        held: dict[int, Any] = {}  # items read and not yet finished
        ready: collections.deque[tuple[int, int]] = collections.deque()  # (index, attempt number)
        backing_off: list[tuple[float, int, int]] = []  # heap of (due time, index, attempt number)
        running: dict[concurrent.futures.Future[Any], _ThreadAttempt] = {}
        slot: float | None = None  # a reserved rate slot, not yet used
        completions: queue.SimpleQueue[concurrent.futures.Future[Any]] = queue.SimpleQueue()
        executor = InterruptibleThreadPool(options.concurrency, thread_name_prefix=f"conc-ml {self._name}")

        def failed(attempt: _ThreadAttempt, error: Exception, now: float) -> ItemOutcome | None:
            if options.should_retry(error, attempt.number):
                heapq.heappush(
                    backing_off, (now + options.retry_delay(attempt.number), attempt.index, attempt.number + 1)
                )
                return None
            del held[attempt.index]
            return ItemOutcome(attempt.index, None, error, attempt.number)

        try:
            while True:
                now = time.monotonic()
                while backing_off and backing_off[0][0] <= now:
                    _, index, number = heapq.heappop(backing_off)
                    ready.append((index, number))
                # Items are read only when a thread is free for them, so that a slow or
                # endless iterator is consumed at the pace of the calls.
                while len(running) < options.concurrency:
                    if not ready:
                        if exhausted or len(held) >= self._window:
                            break
                        entry = next(source, None)
                        if entry is None:
                            exhausted = True
                            break
                        held[entry[0]] = entry[1]
                        ready.append((entry[0], 1))
                    now = time.monotonic()
                    if self._rate is not None:
                        slot = self._rate.reserve() if slot is None else slot
                        if slot > now:
                            break
                        slot = None
                    index, number = ready.popleft()
                    deadline = math.inf if options.timeout is None else now + options.timeout
                    future = executor.submit(func, held[index], *args, **kwargs)
                    running[future] = _ThreadAttempt(index, number, deadline)
                    future.add_done_callback(completions.put)
                if exhausted and not held:
                    return
                wake = min(
                    [a.deadline for a in running.values() if not a.given_up]
                    + [backing_off[0][0] if backing_off else math.inf]
                    + [slot if slot is not None else math.inf]
                )
                wait = None if wake == math.inf else max(0.0, wake - time.monotonic())
                done: list[concurrent.futures.Future[Any]] = []
                if running:
                    with contextlib.suppress(queue.Empty):
                        done.append(completions.get(timeout=wait))
                        while True:
                            done.append(completions.get_nowait())
                else:
                    # Nothing in flight: only a backoff or the rate holds the next start.
                    time.sleep(wait or 0.0)
                now = time.monotonic()
                for future in done:  # in completion order
                    attempt = running.pop(future)
                    if attempt.given_up:
                        continue
                    error = future.exception()
                    if error is None:
                        del held[attempt.index]
                        yield ItemOutcome(attempt.index, future.result(), None, attempt.number)
                    elif isinstance(error, Exception):
                        outcome = failed(attempt, error, now)
                        if outcome is not None:
                            yield outcome
                    else:
                        raise error
                expired = [a for a in running.values() if not a.given_up and a.deadline <= now]
                for attempt in expired:
                    attempt.given_up = True
                    outcome = failed(attempt, self._timeout_error(), now)
                    if outcome is not None:
                        yield outcome
        except BaseException as error:
            if not isinstance(error, Exception | GeneratorExit):
                # Ctrl-C: the running calls get KeyboardInterrupt too, so that the wait
                # below ends and the process can exit.
                executor.interrupt_running()
            raise
        finally:
            # Threads cannot be killed: drop what has not started, wait for what has.
            executor.shutdown(wait=True, cancel_futures=True)

    def map(self, items: Iterable[Any], /, *args: Any, return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Call the function once per item on a pool of ``concurrency`` threads; results in input order.

        Each item is passed as the first argument; ``args`` and ``kwargs`` go to every call.

        :param items: the first argument of each call (read lazily, as slots free up).
        :param return_exceptions: put each failed item's exception in its place in the
            result instead of raising.
        :raises Exception: without ``return_exceptions``, the first item that fails for
            good, as its own type with a note naming its index; calls not yet started are
            dropped, running ones are waited for (threads cannot be stopped).
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

        Leaving the loop early drops the calls not yet started and waits for running ones.

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
        """From async code: one call per item in anyio worker threads, under the function's limiter.

        Same arguments and results as :meth:`map`. Works on asyncio and trio. When the
        caller is cancelled, calls not yet started are dropped and running ones are
        waited for.

        :raises Exception: without ``return_exceptions``, the first item that fails for good.
        """
        return await self._amap(items, args, kwargs, return_exceptions, "amap")

    async def _attempt_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], state: _LoopState, group: TaskGroup | None
    ) -> Any:
        def call() -> tuple[Any, Exception | None]:
            try:
                return self.__wrapped__(*args, **kwargs), None
            except Exception as error:
                return None, error

        if self._options.timeout is None:
            token = await self._acquire(state)
            try:
                await self._wait_rate_async()
                # Not abandoned on cancel: cancelling waits for the thread to return, so that
                # no thread outlives the call.
                value, error = await anyio.to_thread.run_sync(call, limiter=state.thread_limiter)
            finally:
                state.limiter.release_on_behalf_of(token)
        else:
            assert group is not None
            value, error = await self._attempt_in_thread_with_timeout(call, state, group)
        if error is not None:
            raise error
        return value

    async def _attempt_in_thread_with_timeout(
        self, call: Callable[[], tuple[Any, Exception | None]], state: _LoopState, group: TaskGroup
    ) -> tuple[Any, Exception | None]:
        token = await self._acquire(state)
        finished = anyio.Event()
        box: list[tuple[Any, Exception | None]] = []

        async def run_in_thread() -> None:
            try:
                # Not abandoned on cancel: the thread keeps its slot until it returns, and the
                # task group waits for it, so no thread outlives the call.
                box.append(await anyio.to_thread.run_sync(call, limiter=state.thread_limiter))
            finally:
                state.limiter.release_on_behalf_of(token)
                finished.set()

        try:
            await self._wait_rate_async()
            # The thread runs in a task of its own, so that the timeout can give the attempt
            # up without waiting for the thread to return.
            group.start_soon(run_in_thread)
        except BaseException:
            state.limiter.release_on_behalf_of(token)
            raise
        with anyio.move_on_after(self._options.timeout or math.inf):
            await finished.wait()
        if not box:
            raise self._timeout_error()
        return box[0]


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
        (retried when ``retry_on`` matches it, as it does by default).
    :param retries: further attempts after a failure matched by ``retry_on``.
    :param backoff: seconds before the first retry; doubled for each further one (up to
        :data:`MAX_BACKOFF`), with random jitter over the upper half.
    :param retry_on: exception class(es) worth retrying; default ``(OSError, TimeoutError)``.
    :param rate: attempts started per second at most, across every caller of the function;
        starts are spaced ``1 / rate`` apart and idle time banks no burst.
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
