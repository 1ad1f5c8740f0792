"""The backend interface: runners, settings checked by each backend's schema, the hook before a call."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import anyio
import pytest

import conc_ml
import conc_ml.backends as registry
from conc_ml import WorkerCrashedError, parallel, register_backend
from conc_ml.backends import (
    AwaitedChunks,
    Backend,
    BackendSetting,
    CallInfo,
    ChunkOutcome,
    ChunkTask,
    available_backends,
    get_backend,
    run_chunk,
)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    saved = dict(registry._registry), dict(registry._instances), registry._entry_points_loaded
    yield
    registry._registry.clear()
    registry._registry.update(saved[0])
    registry._instances.clear()
    registry._instances.update(saved[1])
    registry._entry_points_loaded = saved[2]


class InlineRunner:
    capacity = 1

    def __init__(self, record: list[Any]):
        self.record = record

    def submit(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        future: concurrent.futures.Future[ChunkOutcome] = concurrent.futures.Future()
        future.set_result(run_chunk(task))
        return future

    def close(self, *, abort: bool, stop_running: bool) -> None:
        self.record.append(("close", abort, stop_running))


class RecordingBackend:
    """A backend of the runner form that records what the engine asks of it."""

    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    runs_in_event_loop: ClassVar[bool] = False
    settings: ClassVar[Mapping[str, BackendSetting]] = {
        "shelf": BackendSetting("a positive int", (int,), lambda value: value > 0),
    }

    def __init__(self) -> None:
        self.record: list[Any] = []

    def before_call(self, call: CallInfo) -> None:
        self.record.append(("before_call", call.function_name, dict(call.arguments), call.workers))

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> InlineRunner:
        self.record.append(("open", workers, dict(settings)))
        return InlineRunner(self.record)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None


def double(items: list[int]) -> list[int]:
    return [2 * item for item in items]


def test_every_builtin_backend_implements_the_interface() -> None:
    for name, installed in available_backends().items():
        if installed:
            assert isinstance(get_backend(name), Backend), name


def test_a_backend_gets_its_setting_the_hook_and_one_runner_per_call() -> None:
    register_backend("recording", RecordingBackend)
    func = parallel(backend="recording", chunks=2, workers=3, combine="concat")(double)
    with conc_ml.config(shelf=7):
        assert func([1, 2, 3]) == [2, 4, 6]
    record = get_backend("recording").record
    assert record == [
        ("before_call", "double", {"items": [1, 2, 3]}, 3),
        ("open", 3, {"shelf": 7}),
        ("close", False, False),
    ]


def test_a_call_checks_a_setting_with_the_schema_of_its_backend_before_any_chunk_runs() -> None:
    register_backend("recording", RecordingBackend)
    func = parallel(backend="recording", chunks=2)(double)
    with (
        conc_ml.config(shelf=0),
        pytest.raises(ValueError, match=r"config\(shelf=\.\.\.\) must be a positive int, got 0"),
    ):
        func([1, 2])
    with conc_ml.config(shelf="7"), pytest.raises(TypeError, match=r"must be a positive int, not str '7'"):
        func([1, 2])
    assert [entry for entry in get_backend("recording").record if entry[0] == "open"] == []
    # A setting of another backend is that backend's business.
    with conc_ml.config(shelf=0):
        assert parallel(backend="thread", chunks=2, combine="concat")(double)([1, 2]) == [2, 4]


def test_a_bad_builtin_setting_is_refused_before_the_call_runs() -> None:
    func = parallel(backend="async", chunks=2, combine="concat")(double)
    with (
        conc_ml.config(async_library="curio"),
        pytest.raises(ValueError, match=r"async_library=\.\.\.\) must be .*'asyncio' or 'trio', got 'curio'"),
    ):
        func([1, 2])


def test_an_unknown_setting_lists_the_settings_backends_declare() -> None:
    register_backend("recording", RecordingBackend)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'shelves'.*async_library.*shelf"):
        conc_ml.config(shelves=1).__enter__()


def test_an_object_that_is_no_backend_is_refused_with_what_it_lacks() -> None:
    register_backend("nothing", object)
    with pytest.raises(TypeError, match=r"does not implement conc_ml.backends.Backend: it lacks .*open_runner"):
        get_backend("nothing")


def test_a_broken_backend_does_not_break_the_settings_of_the_others() -> None:
    register_backend("nothing", object)
    register_backend("recording", RecordingBackend)
    with conc_ml.config(shelf=3):
        assert conc_ml._options.current_config()["shelf"] == 3
    with pytest.raises(TypeError, match=r"'shelves'.*shelf.*backends nothing are unknown: .*could not be loaded"):
        conc_ml.config(shelves=1).__enter__()


def test_running_in_the_event_loop_needs_a_way_to_open_a_runner_there() -> None:
    class Claims(RecordingBackend):
        runs_in_event_loop: ClassVar[bool] = True

    register_backend("claims", Claims)
    with pytest.raises(TypeError, match="declares runs_in_event_loop but has no open_in_event_loop"):
        get_backend("claims")


class LoopRunner(AwaitedChunks):
    def __init__(self, seen: list[int]):
        super().__init__(capacity=2)
        self.seen = seen

    async def run(self, task: ChunkTask) -> ChunkOutcome:
        self.seen.append(task.index)
        return await super().run(task)


class LoopBackend(RecordingBackend):
    runs_in_event_loop: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def open_in_event_loop(self, workers: int, settings: Mapping[str, Any]) -> LoopRunner:
        return LoopRunner(self.seen)


def test_async_chunks_in_the_callers_loop_go_through_the_backends_runner() -> None:
    register_backend("loop", LoopBackend)

    @parallel(backend="loop", chunks=3, combine="concat")
    async def halve(items: list[int]) -> list[float]:
        await anyio.sleep(0)
        return [item / 2 for item in items]

    assert anyio.run(halve, [2, 4, 6]) == [1.0, 2.0, 3.0]
    assert sorted(get_backend("loop").seen) == [0, 1, 2]


class PoolBrokenError(RuntimeError):
    pass


class BreakingRunner(InlineRunner):
    """The first runner: its first chunk's worker dies, and the pool refuses every chunk after."""

    def __init__(self, record: list[Any]):
        super().__init__(record)
        self.broken = False

    def submit(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        if self.broken:
            raise PoolBrokenError("the pool is broken")
        self.broken = True
        future: concurrent.futures.Future[ChunkOutcome] = concurrent.futures.Future()
        future.set_exception(PoolBrokenError("a worker died"))
        return future


class BreakingBackend(RecordingBackend):
    crosses_processes: ClassVar[bool] = True

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> InlineRunner:
        self.record.append(("open", workers, dict(settings)))
        first = not any(entry[0] == "open" for entry in self.record[:-1])
        return BreakingRunner(self.record) if first else InlineRunner(self.record)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        if isinstance(error, PoolBrokenError):
            return WorkerCrashedError(f"a worker died while chunk {chunk} ran", chunk=chunk)
        return None


def test_a_chunk_run_again_after_a_crash_goes_to_a_fresh_runner() -> None:
    register_backend("breaking", BreakingBackend)
    func = parallel(backend="breaking", chunks=2, workers=1, retries=1, combine="concat")(double)
    assert func([1, 2]) == [2, 4]
    opened_and_closed = [entry for entry in get_backend("breaking").record if entry[0] != "before_call"]
    assert opened_and_closed == [("open", 1, {}), ("close", True, False), ("open", 1, {}), ("close", False, False)]
