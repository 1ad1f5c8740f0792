"""``@io_bound`` without a network: options, ordering, retries, rate, cancellation, no leftovers.

The tests against a real HTTP server are in ``tests/io_bound/``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

import conc_ml
from conc_ml import AsyncIOBoundFunction, IOBoundFunction, io_bound
from conc_ml._io_bound import MAX_BACKOFF, IOBoundOptions, RateLimiter

#: a bound on every wait in these tests, so that a bug fails instead of hanging
WAIT = 10.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conc-ml ")]


# -- decoration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be an int >= 1, got 0"),
        ({"concurrency": 2.5}, TypeError, "concurrency must be an int >= 1, not float"),
        ({"concurrency": True}, TypeError, "concurrency must be an int >= 1"),
        ({"timeout": -1}, ValueError, "timeout must be a number > 0 or None, got -1"),
        ({"timeout": 0}, ValueError, "timeout must be a number > 0 or None"),
        ({"timeout": "5"}, TypeError, "timeout must be a number > 0 or None, not str"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a number > 0"),
        ({"retries": -1}, ValueError, "retries must be an int >= 0"),
        ({"backoff": -0.5}, ValueError, "backoff must be a number >= 0"),
        ({"rate": 0}, ValueError, "rate must be a number > 0 or None"),
        ({"retry_on": int}, TypeError, "retry_on must be an exception class or a tuple of them"),
        ({"retry_on": (OSError, "ValueError")}, TypeError, "got 'ValueError'"),
        ({"retry_on": KeyboardInterrupt}, TypeError, "subclasses of Exception"),
    ],
)
def test_bad_options_fail_at_decoration_time(options: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        io_bound(**options)  # type: ignore[arg-type]


def test_bare_and_called_forms_pick_the_wrapper_by_function_kind() -> None:
    def sync(x: int) -> int:
        return x

    async def coro(x: int) -> int:
        return x

    assert isinstance(io_bound(sync), IOBoundFunction)
    assert isinstance(io_bound(coro), AsyncIOBoundFunction)
    assert isinstance(io_bound(concurrency=2)(coro), AsyncIOBoundFunction)
    wrapped = io_bound(retries=2, retry_on=ValueError)(sync)
    assert wrapped.__wrapped__ is sync
    assert wrapped.__name__ == "sync"
    assert wrapped.io_options == IOBoundOptions(retries=2, retry_on=(ValueError,))


def test_decorating_twice_or_a_non_function_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="already decorated with @io_bound"):
        io_bound(io_bound(len))
    with pytest.raises(TypeError, match="decorates a function, not int"):
        io_bound(3)  # type: ignore[call-overload]


def test_io_bound_is_exported() -> None:
    assert {"io_bound", "IOBoundFunction", "AsyncIOBoundFunction"} <= set(conc_ml.__all__)


# -- backoff and rate ---------------------------------------------------------------------


def test_backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() -> None:
    options = IOBoundOptions(backoff=0.5, retries=40)
    draws = [list(options.retry_delays()) for _ in range(200)]
    assert all(len(delays) == 40 for delays in draws)
    for retry in range(1, 6):
        ceiling = 0.5 * 2 ** (retry - 1)
        delays = [d[retry - 1] for d in draws]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert max(d[-1] for d in draws) <= MAX_BACKOFF
    assert list(IOBoundOptions(retries=0).retry_delays()) == []


def test_rate_limiter_spaces_reserved_starts_and_banks_no_burst() -> None:
    limiter = RateLimiter(rate=50)
    starts = [limiter.reserve() for _ in range(20)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 1 / 50 - 1e-9 for gap in gaps)


def test_map_with_a_rate_takes_at_least_the_spacing_it_promises() -> None:
    calls: list[int] = []
    fetch = io_bound(concurrency=8, rate=40)(calls.append)

    begin = time.monotonic()
    fetch.map(range(9))
    elapsed = time.monotonic() - begin

    # 9 starts spaced 1/40 s apart span at least 8/40 s (a lower bound, not a speed claim).
    assert elapsed >= 8 / 40
    assert sorted(calls) == list(range(9))  # type: ignore[type-var]


# -- sync functions -------------------------------------------------------------------------


def test_a_plain_call_stays_a_plain_call_in_this_thread() -> None:
    seen: list[str] = []

    @io_bound(concurrency=2)
    def where(x: int) -> int:
        seen.append(threading.current_thread().name)
        return x + 1

    assert where(1) == 2
    assert seen == [threading.current_thread().name]


def test_a_plain_call_retries_what_retry_on_matches_and_notes_the_attempts() -> None:
    attempts: list[int] = []

    @io_bound(retries=2, backoff=0)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionResetError("reset")
        return x

    assert flaky(7) == 7
    assert attempts == [7, 7, 7]

    attempts.clear()

    @io_bound(retries=3, backoff=0)
    def broken(x: int) -> int:
        attempts.append(x)
        raise ConnectionResetError("always")

    with pytest.raises(ConnectionResetError) as caught:
        broken(1)
    assert len(attempts) == 4
    assert "failed 4 times" in caught.value.__notes__[-1]


def test_an_error_outside_retry_on_is_not_retried() -> None:
    attempts: list[int] = []

    @io_bound(retries=5, backoff=0)
    def wrong(x: int) -> int:
        attempts.append(x)
        raise KeyError(x)

    assert isinstance(wrong.map([1], return_exceptions=True)[0], KeyError)
    assert attempts == [1]


def test_map_returns_results_in_input_order_when_they_finish_in_reverse() -> None:
    n = 6
    finished = [threading.Event() for _ in range(n)]

    @io_bound(concurrency=n)
    def chained(i: int) -> int:
        # Item i returns only after item i + 1 did: completion order is the reverse of input order.
        if i + 1 < n:
            assert finished[i + 1].wait(WAIT)
        finished[i].set()
        return i * 10

    assert chained.map(range(n)) == [i * 10 for i in range(n)]


def test_stream_yields_in_completion_order() -> None:
    n = 6
    received = [threading.Event() for _ in range(n)]

    @io_bound(concurrency=n)
    def chained(i: int) -> int:
        # Item i returns only once the caller has received item i + 1.
        if i + 1 < n:
            assert received[i + 1].wait(WAIT)
        return i * 10

    order = []
    for index, result in chained.stream(range(n)):
        assert result == index * 10
        order.append(index)
        received[index].set()
    assert order == list(reversed(range(n)))


def test_the_first_failure_drops_the_items_not_started_and_keeps_its_type() -> None:
    started: list[int] = []

    @io_bound(concurrency=1)
    def fails_at_two(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError("bad item")
        return i

    with pytest.raises(ValueError, match="bad item") as caught:
        fails_at_two.map(range(10))
    assert started == [0, 1, 2]
    assert "item 2 of" in caught.value.__notes__[-1]
    assert not _pool_threads()


@pytest.mark.parametrize("retries", [0, 2])
def test_every_item_yields_exactly_one_outcome(retries: int) -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    @io_bound(concurrency=4, retries=retries, backoff=0)
    def maybe(i: int) -> int:
        with lock:
            calls[i] = calls.get(i, 0) + 1
        if i % 3 == 0:
            raise OSError(f"item {i}")
        return -i

    results = maybe.map(range(30), return_exceptions=True)

    assert len(results) == 30
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, OSError)
            assert str(result) == f"item {i}"
            assert calls[i] == 1 + retries
        else:
            assert result == -i
            assert calls[i] == 1


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


def test_a_timed_out_call_is_abandoned_and_a_fresh_thread_takes_its_slot() -> None:
    release = threading.Event()
    first_done = threading.Event()
    first_done_when_second_started: list[bool] = []

    @io_bound(concurrency=1, timeout=0.05)
    def stuck_then_fast(i: int) -> int:
        if i == 0:
            release.wait(WAIT)  # stuck until the test lets it go, after map has returned
            first_done.set()
        else:
            first_done_when_second_started.append(first_done.is_set())
        return i

    try:
        results = stuck_then_fast.map(range(3), return_exceptions=True)
        # map is back although item 0's call has not returned: it was abandoned.
        assert not first_done.is_set()
    finally:
        release.set()
    assert isinstance(results[0], TimeoutError)
    assert "abandoned on its daemon thread" in str(results[0])
    assert results[1:] == [1, 2]
    assert first_done_when_second_started == [False, False]
    assert all(t.daemon for t in _pool_threads())
    _wait_until(lambda: not _pool_threads())


def test_a_plain_call_with_a_timeout_is_abandoned_when_late() -> None:
    release = threading.Event()
    names: list[str] = []

    @io_bound(timeout=0.05)
    def stuck(x: int) -> int:
        names.append(threading.current_thread().name)
        release.wait(WAIT)
        return x

    begin = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"stuck\(\) did not finish within timeout=0.05 s"):
            stuck(1)
        assert time.monotonic() - begin < WAIT  # back before the call returned
    finally:
        release.set()
    assert names[0].startswith("conc-ml ")
    _wait_until(lambda: not _pool_threads())


def test_a_plain_call_with_a_timeout_keeps_its_result_exception_and_context() -> None:
    import contextvars

    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")

    @io_bound(timeout=WAIT)
    def read(fail: bool) -> str:
        if fail:
            raise TimeoutError("the call's own timeout")  # not to be taken for conc-ml's
        return variable.get()

    token = variable.set("caller's")
    try:
        assert read(False) == "caller's"
        with pytest.raises(TimeoutError, match="the call's own timeout"):
            read(True)
    finally:
        variable.reset(token)


def test_map_reads_a_long_iterator_lazily() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            read.append(i)
            yield i

    fetch = io_bound(concurrency=2)(lambda i: i)
    stream = fetch.stream(items())
    next(stream)
    stream.close()

    assert len(read) <= 2 * 2 + 1
    assert not _pool_threads()


def test_interrupting_map_interrupts_running_calls_and_does_not_wait_for_them() -> None:
    entered = threading.Event()
    release = threading.Event()
    interrupted: list[int] = []

    @io_bound(concurrency=3)
    def tracked(i: int) -> int:
        entered.set()
        try:
            # Blocked in C until released: the interrupt arrives only once it returns.
            release.wait(WAIT)
            time.sleep(WAIT)
        except KeyboardInterrupt:
            interrupted.append(i)
            raise
        return i

    def items() -> Iterator[int]:
        yield 0
        yield 1
        assert entered.wait(WAIT)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            tracked.map(items())
        assert not interrupted  # map did not wait for the blocked calls
    finally:
        release.set()
    _wait_until(lambda: sorted(interrupted) == [0, 1])
    _wait_until(lambda: not _pool_threads())


# -- async functions and amap ---------------------------------------------------------------


@pytest.mark.anyio
async def test_async_first_failure_cancels_the_others_and_is_not_a_group() -> None:
    cancelled: list[int] = []

    @io_bound(concurrency=5)
    async def hang_or_fail(i: int) -> int:
        if i == 3:
            await anyio.sleep(0.01)
            raise LookupError("item three")
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(i)
        return i

    with anyio.fail_after(WAIT), pytest.raises(LookupError, match="item three") as caught:
        await hang_or_fail.map(range(5))
    assert sorted(cancelled) == [0, 1, 2, 4]
    assert "item 3 of" in caught.value.__notes__[-1]


@pytest.mark.anyio
async def test_async_retries_with_timeouts_then_succeeds() -> None:
    attempts: list[int] = []

    @io_bound(timeout=0.05, retries=2, backoff=0)
    async def slow_twice(i: int) -> int:
        attempts.append(i)
        if len(attempts) <= 2:
            await anyio.sleep(WAIT)
        return i

    with anyio.fail_after(WAIT):
        assert await slow_twice(4) == 4
    assert attempts == [4, 4, 4]


@pytest.mark.anyio
async def test_async_map_limits_itself_to_concurrency() -> None:
    in_flight = 0
    peak = 0
    reached = anyio.Event()

    @io_bound(concurrency=3)
    async def tracked(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            reached.set()
        with anyio.fail_after(WAIT):
            await reached.wait()
        in_flight -= 1
        return i

    assert await tracked.map(range(10)) == list(range(10))
    assert peak == 3


@pytest.mark.anyio
async def test_cancelling_amap_abandons_its_blocked_threads_without_waiting() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[int] = []

    @io_bound(concurrency=4)
    def blocking(i: int) -> int:
        started.set()
        release.wait(WAIT)  # blocked until the test lets it go, after the cancel returned
        finished.append(i)
        return i

    try:
        with anyio.fail_after(WAIT), anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(blocking.amap, range(100))
                await anyio.to_thread.run_sync(started.wait, WAIT)
                scope.cancel()
        assert scope.cancelled_caught
        assert not finished
        assert blocking._state().limiter.borrowed_tokens == 0
    finally:
        release.set()
    with anyio.fail_after(WAIT):
        while _pool_threads():
            await anyio.sleep(0.01)
    assert 1 <= len(finished) <= 4  # the running calls ended on their own; nothing else started


@pytest.mark.anyio
async def test_cancelling_an_async_map_cancels_every_call() -> None:
    started = anyio.Event()
    active = 0

    @io_bound(concurrency=4)
    async def forever(i: int) -> int:
        nonlocal active
        active += 1
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            active -= 1
        return i

    with anyio.move_on_after(WAIT) as timeout_scope:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(forever.map, range(20))
                await started.wait()
                scope.cancel()
    assert not timeout_scope.cancelled_caught
    assert active == 0
    assert forever._state().limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_async_stream_with_return_exceptions_yields_every_index() -> None:
    @io_bound(concurrency=2)
    async def odd_fails(i: int) -> int:
        await anyio.sleep(0)
        if i % 2:
            raise OSError(i)
        return i

    pairs = [pair async for pair in odd_fails.stream(range(6), return_exceptions=True)]

    assert sorted(i for i, _ in pairs) == list(range(6))
    assert all(isinstance(r, OSError) == bool(i % 2) for i, r in pairs)


@pytest.mark.anyio
async def test_amap_abandons_a_late_thread_and_a_fresh_thread_takes_its_slot() -> None:
    release = threading.Event()
    first_done = threading.Event()
    first_done_when_second_started: list[bool] = []

    @io_bound(concurrency=1, timeout=0.05)
    def stuck_then_fast(i: int) -> int:
        if i == 0:
            release.wait(WAIT)
            first_done.set()
        else:
            first_done_when_second_started.append(first_done.is_set())
        return i

    try:
        with anyio.fail_after(WAIT):
            results = await stuck_then_fast.amap(range(3), return_exceptions=True)
        assert not first_done.is_set()
    finally:
        release.set()
    assert isinstance(results[0], TimeoutError)
    assert "abandoned on its daemon thread" in str(results[0])
    assert results[1:] == [1, 2]
    assert first_done_when_second_started == [False, False]
    with anyio.fail_after(WAIT):
        while _pool_threads():
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_an_async_timeout_says_the_call_was_cancelled() -> None:
    @io_bound(timeout=0.01)
    async def forever(i: int) -> int:
        await anyio.sleep_forever()
        return i

    with anyio.fail_after(WAIT), pytest.raises(TimeoutError, match="the call was cancelled"):
        await forever(1)


@pytest.mark.anyio
async def test_async_map_with_a_rate_spaces_the_starts() -> None:
    @io_bound(concurrency=10, rate=50)
    async def noop(i: int) -> int:
        return i

    begin = time.monotonic()
    assert await noop.map(range(6)) == list(range(6))
    # 6 starts spaced 1/50 s apart span at least 5/50 s (a lower bound, not a speed claim).
    assert time.monotonic() - begin >= 5 / 50


@pytest.mark.anyio
async def test_leaving_an_async_stream_early_cancels_the_rest() -> None:
    import contextlib

    active = 0

    @io_bound(concurrency=3)
    async def first_fast(i: int) -> int:
        nonlocal active
        active += 1
        try:
            if i:
                await anyio.sleep_forever()
            return i
        finally:
            active -= 1

    with anyio.fail_after(WAIT):
        async with contextlib.aclosing(first_fast.stream(range(10))) as pairs:
            async for pair in pairs:
                assert pair == (0, 0)
                break
    assert active == 0
    assert first_fast._state().limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_an_error_from_the_items_iterator_is_raised_as_it_is() -> None:
    @io_bound(concurrency=2)
    async def echo(i: int) -> int:
        return i

    def items() -> Iterator[int]:
        yield 1
        raise ValueError("bad iterator")

    with pytest.raises(ValueError, match="bad iterator"):
        await echo.map(items())
    assert echo._state().limiter.borrowed_tokens == 0


def test_a_wrapper_pickles_by_value_with_its_options() -> None:
    import cloudpickle

    @io_bound(concurrency=3, retries=1, rate=1000)
    def double(i: int) -> int:
        return 2 * i

    copy = cloudpickle.loads(cloudpickle.dumps(double))

    assert copy is not double
    assert copy.io_options == double.io_options
    assert copy.map([1, 2]) == [2, 4]


def test_no_items_give_an_empty_list_on_every_path() -> None:
    @io_bound
    def sync(i: int) -> int:
        return i

    @io_bound
    async def coro(i: int) -> int:
        return i

    assert sync.map([]) == []
    assert list(sync.stream(iter([]))) == []
    assert anyio.run(sync.amap, []) == []
    assert anyio.run(coro.map, []) == []
