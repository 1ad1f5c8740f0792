"""A pool that breaks between two submissions is reported as the crash it is, not as a raw error."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar

import pytest

import conc_ml.backends as registry
from conc_ml import WorkerCrashedError, parallel, register_backend


class PoolBrokenError(RuntimeError):
    """What the stub pool raises, like loky's ``BrokenProcessPool``, once a worker died."""


class BreaksAfterFirstChunkPool(Executor):
    """Accepts one chunk (which never finishes), then refuses the next as a broken pool would."""

    def __init__(self) -> None:
        self.submitted: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self.submitted:
            raise PoolBrokenError("the pool is broken: a worker died")
        future: Future[Any] = Future()
        self.submitted.append(future)
        return future


class BreakingBackend:
    name: ClassVar[str] = "breaking"
    crosses_processes: ClassVar[bool] = True
    can_stop_running: ClassVar[bool] = True
    max_in_flight_per_worker: ClassVar[int] = 4
    released: ClassVar[list[tuple[bool, bool]]] = []

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        return BreaksAfterFirstChunkPool()

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        self.released.append((abort, stop_running))

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        if isinstance(error, PoolBrokenError):
            return WorkerCrashedError(f"a worker died while chunk {chunk} was in flight", chunk=chunk, exitcode=-9)
        return None


@pytest.fixture
def breaking_backend() -> Iterator[None]:
    saved = dict(registry._registry), dict(registry._instances)
    register_backend("breaking", BreakingBackend)
    yield
    registry._registry.clear()
    registry._registry.update(saved[0])
    registry._instances.clear()
    registry._instances.update(saved[1])


def identity(items: list[int]) -> list[int]:
    return items


@pytest.mark.usefixtures("breaking_backend")
def test_a_pool_that_breaks_between_submissions_is_a_worker_crashed_error_naming_the_chunk_in_flight() -> None:
    BreakingBackend.released.clear()
    func = parallel(backend="breaking", workers=1, chunks=3)(identity)
    with pytest.raises(WorkerCrashedError, match="chunk 0 was in flight") as info:
        func([1, 2, 3])
    assert info.value.chunk == 0
    assert isinstance(info.value.__cause__, PoolBrokenError)
    assert BreakingBackend.released == [(True, False)]
