"""``@parallel`` behaviour, run once per backend through the ``backend`` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import anyio
import numpy as np
import pytest

from conc_ml import ConcMLError, SerializationError, WorkerCrashedError, config, parallel
from conc_ml.errors import ChunkTimeoutError, RemoteTraceback


def square_each(items: list[int]) -> list[int]:
    return [i * i for i in items]


def chunk_summary(items: Any, offset: int = 0) -> tuple[int, int]:
    return (len(items), int(sum(items)) + offset)


def scaled(rows: np.ndarray, labels: np.ndarray, factor: float) -> np.ndarray:
    return rows[:, 0] * factor + labels


def noisy(items: list[int], rng: np.random.Generator) -> np.ndarray:
    return np.asarray(items) + rng.normal(size=len(items))


def fail_on_three(items: list[int]) -> list[int]:
    if 3 in items:
        raise KeyError(f"bad item in {items}")
    return items


def thread_names(items: list[int]) -> list[int]:
    # Identities, not names: pools of different calls reuse the same thread names.
    return [threading.get_ident()]


def where_am_i(items: list[int]) -> list[str]:
    from conc_ml._system import inside_worker

    inner = parallel(backend="thread", chunks=2, combine="concat")(thread_names)
    names = inner(list(items))
    here = threading.get_ident()
    return [f"inside={inside_worker()}", f"inner_ran_here={all(name == here for name in names)}"]


def blas_threads(items: list[int]) -> int:
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return max((pool["num_threads"] for pool in threadpool_info()), default=1)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle 'Unpicklable' object")


def touch(items: list[int], thing: object) -> int:
    return len(items)


def die(items: list[int]) -> int:
    os._exit(3)


def wait_forever(items: list[int], event: Any) -> None:
    event.wait(60)


def test_results_come_back_in_chunk_order(backend: str) -> None:
    func = parallel(backend=backend, chunks=4, workers=2)(chunk_summary)
    assert func(list(range(10))) == [(3, 3), (3, 12), (2, 13), (2, 17)]


def test_concat_reproduces_the_whole_computation(backend: str) -> None:
    func = parallel(backend=backend, chunks=3, combine="concat")(square_each)
    assert func(list(range(11))) == [i * i for i in range(11)]


def test_unsplit_arguments_are_broadcast_to_every_chunk(backend: str) -> None:
    func = parallel(backend=backend, chunks=3)(chunk_summary)
    assert func([1, 2, 3], offset=100) == [(1, 101), (1, 102), (1, 103)]
    assert func([1, 2, 3], 100) == [(1, 101), (1, 102), (1, 103)]


def test_split_by_names_cuts_arguments_together(backend: str) -> None:
    rows = np.arange(12.0).reshape(6, 2)
    labels = np.arange(6.0)
    func = parallel(backend=backend, chunks=3, split=("rows", "labels"), combine="concat")(scaled)
    np.testing.assert_array_equal(func(rows, labels, 2.0), rows[:, 0] * 2.0 + labels)


def test_split_by_position(backend: str) -> None:
    def pair(prefix: str, items: list[int]) -> list[str]:
        return [f"{prefix}{i}" for i in items]

    func = parallel(backend=backend, chunks=2, split=1, combine="concat")(pair)
    assert func("x", [1, 2, 3]) == ["x1", "x2", "x3"]


def test_empty_input_calls_the_function_once(backend: str) -> None:
    func = parallel(backend=backend, chunks=4, combine="concat")(square_each)
    assert func([]) == []
    assert parallel(backend=backend, chunks=4)(chunk_summary)(np.empty(0)) == [(0, 0)]


def test_seeded_streams_match_sequential_whatever_the_workers(backend: str) -> None:
    func = parallel(backend=backend, chunks=5, seed=42, combine="concat")(noisy)
    expected = func.sequential(list(range(23)))
    for workers in (1, 2, 3):
        np.testing.assert_array_equal(func.options(workers=workers)(list(range(23))), expected)


def test_streams_depend_on_the_seed_and_differ_between_chunks() -> None:
    func = parallel(backend="sequential", chunks=2, seed=1)(noisy)
    first, second = func([0, 0, 0, 0])
    assert not np.array_equal(first, second)
    assert not np.array_equal(func.options(seed=2)([0, 0, 0, 0])[0], first)
    reference = np.random.SeedSequence(1).spawn(2)
    np.testing.assert_array_equal(first, np.random.default_rng(reference[0]).normal(size=2))


def test_explicit_rng_argument_is_refused() -> None:
    func = parallel(backend="sequential")(noisy)
    with pytest.raises(TypeError, match="explicit 'rng'"):
        func([1, 2], rng=np.random.default_rng(0))


def test_stream_yields_every_chunk_once(backend: str) -> None:
    func = parallel(backend=backend, chunks=4)(chunk_summary)
    seen = dict(func.stream(list(range(8))))
    assert seen == {0: (2, 1), 1: (2, 5), 2: (2, 9), 3: (2, 13)}


def test_user_exception_keeps_its_type_and_says_where(backend: str) -> None:
    func = parallel(backend=backend, chunks=5, workers=2)(fail_on_three)
    with pytest.raises(KeyError, match="bad item") as info:
        func([1, 2, 3, 4, 5])
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "chunk 2 of 5" in notes
    assert f"backend {backend!r}" in notes
    assert "worker pid" in notes
    if backend == "process":
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fail_on_three" in str(info.value.__cause__)


def test_sequential_stops_at_the_first_failure() -> None:
    calls: list[list[int]] = []

    def record(items: list[int]) -> None:
        calls.append(items)
        if items == [2]:
            raise ValueError("stop")

    with pytest.raises(ValueError, match="stop"):
        parallel(backend="sequential", chunks=4)(record)([1, 2, 3, 4])
    assert calls == [[1], [2]]


def test_process_backend_runs_lambdas_and_closures() -> None:
    factor = 3
    func = parallel(backend="process", chunks=2, combine="concat")(lambda items: [i * factor for i in items])
    assert func([1, 2, 3]) == [3, 6, 9]


def test_unpicklable_argument_is_a_serialization_error() -> None:
    func = parallel(backend="process", chunks=2)(touch)
    with pytest.raises(SerializationError, match=r"argument 'thing' .*Unpicklable.* cannot be pickled") as info:
        func([1, 2], Unpicklable())
    assert isinstance(info.value, TypeError)
    assert "backend='thread'" in str(info.value)


def test_worker_death_is_a_worker_crashed_error_and_the_pool_recovers() -> None:
    with pytest.raises(WorkerCrashedError, match="exit code 3") as info:
        parallel(backend="process", chunks=2, workers=2)(die)([1, 2])
    assert isinstance(info.value, RuntimeError)
    assert info.value.exitcode == 3
    assert parallel(backend="process", chunks=2, combine="concat")(square_each)([1, 2]) == [1, 4]


@pytest.mark.parametrize("backend", ["process", "async"])
def test_timeout_stops_a_stuck_call(backend: str) -> None:
    import multiprocessing

    event = multiprocessing.Manager().Event() if backend == "process" else threading.Event()
    func = parallel(backend=backend, chunks=2, timeout=0.5)(wait_forever)
    with pytest.raises(ChunkTimeoutError, match=r"timed out after 0\.5 s") as info:
        func([1, 2], event)
    assert isinstance(info.value, TimeoutError)
    event.set()
    assert parallel(backend=backend, chunks=2, combine="concat")(square_each)([3]) == [9]


def test_thread_timeout_raises_and_the_thread_ends_with_its_chunk() -> None:
    event = threading.Event()
    func = parallel(backend="thread", chunks=2, timeout=0.2)(wait_forever)
    with pytest.raises(ChunkTimeoutError, match="cannot be stopped on backend 'thread'"):
        func([1, 2], event)
    event.set()


def test_nested_calls_inside_workers_run_sequentially(backend: str) -> None:
    func = parallel(backend=backend, chunks=2, combine="concat")(where_am_i)
    assert func([1, 2]) == ["inside=True", "inner_ran_here=True"] * 2


def test_nested_calls_may_be_allowed_explicitly() -> None:
    def outer(items: list[int]) -> list[str]:
        with config(allow_nested=True):
            return where_am_i(items)

    result = parallel(backend="sequential", chunks=1)(outer)([1, 2])
    assert result == [["inside=True", "inner_ran_here=False"]]


def test_blas_threads_are_capped_in_process_workers() -> None:
    func = parallel(backend="process", chunks=2, workers=2)(blas_threads)
    cap = max(1, (len(os.sched_getaffinity(0))) // 2)
    assert all(n <= cap for n in func([1, 2]))


def test_progress_counts_items(capsys: pytest.CaptureFixture[str], backend: str) -> None:
    func = parallel(backend=backend, chunks=3, progress=True, combine="concat")(square_each)
    assert func(list(range(7))) == [i * i for i in range(7)]
    err = capsys.readouterr().err
    assert "7/7" in err
    assert "item" in err


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_async_functions_stay_async(library: str) -> None:
    async def fetch_sizes(items: list[int], rng: np.random.Generator) -> list[float]:
        await anyio.sleep(0)
        return [i + rng.random() for i in items]

    func = parallel(chunks=3, seed=7, combine="concat")(fetch_sizes)
    result = anyio.run(func, list(range(6)), backend=library)
    reference = anyio.run(func.sequential, list(range(6)), backend=library)
    assert result == reference
    assert len(result) == 6
    on_threads = anyio.run(func.options(backend="thread"), list(range(6)), backend=library)
    assert on_threads == reference


def test_async_failure_is_raised_as_its_own_type() -> None:
    async def explode(items: list[int]) -> None:
        await anyio.sleep(0)
        if 2 in items:
            raise LookupError("missing")

    func = parallel(chunks=3)(explode)
    with pytest.raises(LookupError, match="missing") as info:
        anyio.run(func, [1, 2, 3])
    assert "backend 'async'" in "\n".join(info.value.__notes__)


def test_async_timeout_is_a_chunk_timeout_error() -> None:
    async def slow(items: list[int]) -> None:
        await anyio.sleep(30)

    with pytest.raises(ChunkTimeoutError):
        anyio.run(parallel(chunks=2, timeout=0.2)(slow), [1, 2])


def test_async_stream_yields_every_chunk() -> None:
    async def double(items: list[int]) -> list[int]:
        await anyio.sleep(0)
        return [2 * i for i in items]

    func = parallel(chunks=3)(double)

    async def collect() -> dict[int, list[int]]:
        return {i: r async for i, r in func.stream([1, 2, 3])}

    assert anyio.run(collect) == {0: [2], 1: [4], 2: [6]}


def test_sync_function_on_the_async_backend_runs_in_worker_threads() -> None:
    def thread_name(items: list[int]) -> str:
        return threading.current_thread().name

    names = parallel(backend="async", chunks=2)(thread_name)([1, 2])
    assert all("AnyIO" in name for name in names)


def test_errors_share_a_root() -> None:
    assert issubclass(WorkerCrashedError, ConcMLError)
    assert issubclass(SerializationError, ConcMLError)


def test_info_command_lists_cpus_and_backends() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conc_ml", "info"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "usable" in result.stdout
    for name in ("sequential", "thread", "process", "async"):
        assert f"{name}" in result.stdout


@pytest.mark.parametrize("backend", ["sequential", "thread"])
def test_chunk_size_on_a_generator_reads_it_only_a_little_ahead(backend: str) -> None:
    produced = 0
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def source() -> Any:
        nonlocal produced
        for i in range(100):
            with lock:
                produced += 1
            yield i

    def record(items: list[int]) -> int:
        with lock:
            seen.append((items[0] // 5, produced))
        return len(items)

    workers = 2
    func = parallel(backend=backend, chunk_size=5, workers=workers, combine="sum")(record)
    assert func(source()) == 100
    window = 1 if backend == "sequential" else 2 * workers
    for index, produced_then in seen:
        assert produced_then <= (index + window + 1) * 5


def test_leaving_a_stream_early_runs_no_further_chunks() -> None:
    calls: list[int] = []

    def record(items: list[int]) -> int:
        calls.append(items[0])
        return items[0]

    func = parallel(backend="sequential", chunks=5)(record)
    for index, _ in func.stream([0, 1, 2, 3, 4]):
        if index == 1:
            break
    assert calls == [0, 1]


def test_closing_an_async_stream_early_cancels_the_rest() -> None:
    import contextlib

    started: list[int] = []

    async def slow_after_first(items: list[int]) -> list[int]:
        started.append(items[0])
        if items[0] != 0:
            await anyio.sleep(30)
        return items

    func = parallel(backend="async", chunks=4)(slow_after_first)

    async def first_only() -> list[tuple[int, list[int]]]:
        seen = []
        async with contextlib.aclosing(func.stream(list(range(8)))) as stream:
            async for item in stream:
                seen.append(item)
                break
        return seen

    assert anyio.run(first_only) == [(0, [0, 1])]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_async_function_streams_from_a_pool_backend(backend: str) -> None:
    import contextlib

    async def double(items: list[int]) -> list[int]:
        await anyio.sleep(0)
        return [2 * i for i in items]

    func = parallel(backend=backend, chunks=3, workers=2)(double)

    async def collect() -> dict[int, list[int]]:
        return {i: r async for i, r in func.stream([1, 2, 3])}

    async def first_only() -> int:
        async with contextlib.aclosing(func.stream(list(range(9)))) as stream:
            async for index, _ in stream:
                return index
        raise AssertionError("the stream yielded nothing")

    assert anyio.run(collect) == {0: [2], 1: [4], 2: [6]}
    assert anyio.run(first_only) in range(3)


def test_async_stream_from_a_pool_backend_raises_the_users_error() -> None:
    async def explode(items: list[int]) -> list[int]:
        raise ArithmeticError("no")

    func = parallel(backend="thread", chunks=2)(explode)

    async def collect() -> list[tuple[int, list[int]]]:
        return [item async for item in func.stream([1, 2])]

    with pytest.raises(ArithmeticError, match="no"):
        anyio.run(collect)


def test_leaving_async_streams_early_lets_the_interpreter_exit() -> None:
    # A thread left waiting on a finished event loop keeps Python from exiting: run the
    # scenario in its own interpreter and require that it ends.
    script = """
import contextlib
import anyio
from conc_ml import parallel

async def double(items):
    # Later chunks finish after the consumer has left and its event loop has ended.
    await anyio.sleep(0.05 * items[0])
    return [2 * i for i in items]

async def first(func):
    async with contextlib.aclosing(func.stream(list(range(12)))) as stream:
        async for index, _ in stream:
            return index

for backend in ("thread", "process", "async", "sequential"):
    anyio.run(first, parallel(backend=backend, chunks=6, workers=2)(double))
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_rng_with_a_default_still_receives_the_chunk_stream() -> None:
    def draw(items: list[int], rng: np.random.Generator | None = None) -> float:
        assert rng is not None
        return float(rng.random())

    func = parallel(backend="sequential", chunks=2, seed=3)(draw)
    expected = [float(np.random.default_rng(child).random()) for child in np.random.SeedSequence(3).spawn(2)]
    assert func([1, 2]) == expected


def test_overlapping_thread_calls_restore_the_blas_threads_they_found() -> None:
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info()]

    first_running, release_first = threading.Event(), threading.Event()

    def hold(items: list[int], started: threading.Event, release: threading.Event) -> None:
        started.set()
        assert release.wait(10)

    func = parallel(backend="thread", workers=2, chunks=1)(hold)
    before = blas()
    first = threading.Thread(target=func, args=([1], first_running, release_first))
    first.start()
    assert first_running.wait(10)
    # The second call starts while the first holds the cap, and ends after it.
    second_started, release_second = threading.Event(), threading.Event()
    second = threading.Thread(target=func, args=([1], second_started, release_second))
    second.start()
    assert second_started.wait(10)
    release_first.set()
    first.join(10)
    release_second.set()
    second.join(10)
    assert not first.is_alive()
    assert not second.is_alive()
    assert blas() == before


def test_infinite_timeout_is_refused_at_decoration() -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        parallel(timeout=float("inf"))(square_each)


def test_rng_after_var_positional_arguments() -> None:
    def f(data: list[int], *extra: int, rng: np.random.Generator) -> list[int]:
        return [len(data), *extra]

    assert parallel(backend="sequential", chunks=2, seed=0)(f)([1, 2, 3, 4], 5) == [[2, 5], [2, 5]]


def outer_allowing_nested(items: list[int]) -> list[str]:
    return where_am_i(items)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_allow_nested_around_the_outer_call_reaches_the_workers(backend: str) -> None:
    func = parallel(backend=backend, chunks=2, workers=2, combine="concat")(outer_allowing_nested)
    with config(allow_nested=True):
        result = func([1, 2, 3, 4])
    assert result == ["inside=True", "inner_ran_here=False"] * 2


def test_async_stream_timeout_is_a_chunk_timeout_error_even_while_the_consumer_works() -> None:
    import contextlib

    async def quick(items: list[int]) -> list[int]:
        await anyio.sleep(0)
        return items

    async def never(items: list[int]) -> list[int]:
        if items[0] == 0:
            return items
        await anyio.sleep(30)
        return items

    async def slow_consumer(func: Any) -> list[int]:
        seen = []
        async with contextlib.aclosing(func.stream([0, 1, 2, 3])) as stream:
            async for index, _ in stream:
                seen.append(index)
                await anyio.sleep(0.3)  # the call's deadline passes here, in the consumer
        return sorted(seen)

    # Chunks that finished in time are delivered, however slow the consumer.
    assert anyio.run(slow_consumer, parallel(backend="async", chunks=4, workers=4, timeout=0.2)(quick)) == [0, 1, 2, 3]
    with pytest.raises(ChunkTimeoutError):
        anyio.run(slow_consumer, parallel(backend="async", chunks=4, workers=4, timeout=0.2)(never))


def test_a_users_own_timeout_error_in_an_async_chunk_keeps_its_type() -> None:
    async def own_timeout(items: list[int]) -> None:
        raise TimeoutError("the user's own")

    with pytest.raises(TimeoutError, match="the user's own") as info:
        anyio.run(parallel(chunks=2, timeout=10)(own_timeout), [1, 2])
    assert not isinstance(info.value, ChunkTimeoutError)
