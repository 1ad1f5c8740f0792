"""The backend registry: names, install hints, run-time and entry-point registration."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, ClassVar

import pytest

import conc_ml.backends as registry
from conc_ml import BackendUnavailableError, available_backends, parallel, register_backend
from conc_ml.backends import Backend, get_backend
from conc_ml.backends._sequential import InlineExecutor


class RecordingBackend:
    """A third-party backend: runs inline and records the chunks it was given."""

    name: ClassVar[str] = "recording"
    crosses_processes: ClassVar[bool] = False
    can_stop_running: ClassVar[bool] = False
    max_in_flight_per_worker: ClassVar[int] = 1
    opened: ClassVar[list[int]] = []

    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        self.opened.append(workers)
        return InlineExecutor()

    def release(self, executor: Executor, *, abort: bool, stop_running: bool) -> None:
        executor.shutdown()

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        return None


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._registry), dict(registry._instances), registry._entry_points_loaded
    yield
    registry._registry.clear()
    registry._registry.update(saved[0])
    registry._instances.clear()
    registry._instances.update(saved[1])
    registry._entry_points_loaded = saved[2]


def test_builtin_backends_implement_the_protocol() -> None:
    for name in ("sequential", "thread", "process", "async"):
        assert isinstance(get_backend(name), Backend)


@pytest.mark.usefixtures("clean_registry")
def test_register_backend_makes_a_name_usable() -> None:
    register_backend("recording", RecordingBackend)
    func = parallel(backend="recording", chunks=3, workers=5, combine="concat")(lambda xs: [x + 1 for x in xs])
    assert func([1, 2, 3]) == [2, 3, 4]
    assert RecordingBackend.opened[-1] == 5
    assert available_backends()["recording"] is True


@pytest.mark.usefixtures("clean_registry")
def test_register_backend_refuses_to_replace_silently() -> None:
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_backend("thread", RecordingBackend)
    with pytest.raises(ValueError, match="other than 'auto'"):
        register_backend("auto", RecordingBackend)


@pytest.mark.usefixtures("clean_registry")
def test_missing_dependency_names_the_install_hint() -> None:
    registry._registry["needs-missing"] = registry._BackendEntry(
        lambda: RecordingBackend, ("a_module_that_is_not_installed",), "pip install conc-ml[missing]"
    )
    with pytest.raises(BackendUnavailableError, match=r"needs a_module_that_is_not_installed.*pip install conc-ml"):
        parallel(backend="needs-missing")(lambda xs: xs)
    assert available_backends()["needs-missing"] is False


@pytest.mark.usefixtures("clean_registry")
def test_entry_point_backends_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thirdparty_backend.py").write_text(
        textwrap.dedent(
            """
            from conc_ml.backends._sequential import SequentialBackend

            class ThirdParty(SequentialBackend):
                name = "thirdparty"
            """
        )
    )
    dist = tmp_path / "thirdparty_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[conc_ml.backends]\nthirdparty = thirdparty_backend:ThirdParty\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "thirdparty_backend", raising=False)
    registry._entry_points_loaded = False

    def total(xs: list[int]) -> int:
        return sum(xs)

    func = parallel(backend="thirdparty", chunks=2)(total)
    assert func([1, 2, 3]) == [3, 3]
    assert type(get_backend("thirdparty")).__name__ == "ThirdParty"


class CancellingExecutor(Executor):
    """An executor that gives up on every chunk, as a cluster that drops tasks might."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        future.cancel()
        future.set_running_or_notify_cancel()  # what an executor does when it drops a call
        return future


class CancellingBackend(RecordingBackend):
    def open(self, workers: int, settings: Mapping[str, Any]) -> Executor:
        return CancellingExecutor()


@pytest.mark.usefixtures("clean_registry")
def test_a_chunk_cancelled_by_the_backend_is_an_error_not_a_gap() -> None:
    from conc_ml import WorkerCrashedError

    register_backend("cancelling", CancellingBackend)

    def total(xs: list[int]) -> int:
        return sum(xs)

    with pytest.raises(WorkerCrashedError, match="cancelled by backend 'cancelling'"):
        parallel(backend="cancelling", chunks=2)(total)([1, 2, 3])
