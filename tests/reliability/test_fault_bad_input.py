"""Bad input gives a clear, typed error at once: never a hang, a crash or a lost chunk."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conc_ml import SerializationError, SplitError, parallel
from conc_ml.errors import UnpicklableRemoteError


def first_item(items: list[int], extra: Any = None) -> int:
    return items[0]


def return_a_lock(items: list[int]) -> Any:
    return threading.Lock()


def _refuse_to_rebuild() -> None:
    raise RuntimeError("this object cannot be rebuilt on the other side")


class PicklesButNeverUnpickles:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_rebuild, ())


def return_unloadable(items: list[int]) -> Any:
    # Pickles in the worker; fails when the caller loads it.
    return PicklesButNeverUnpickles()


class NeedsTwoArguments(Exception):
    def __init__(self, what: str, code: int):
        super().__init__(f"{what} (code {code})")


def raise_unpicklable(items: list[int]) -> None:
    # args == ("bad (code 3)",): rebuilding calls __init__ with one argument and fails
    raise NeedsTwoArguments("bad", 3)


def raise_worker_only_class(items: list[int], folder: str) -> None:
    sys.path.insert(0, folder)
    import worker_only_errors  # type: ignore[import-not-found]

    raise worker_only_errors.WorkerOnlyError(f"raised for {items}")


def add(items: list[int]) -> int:
    return sum(items)


@pytest.fixture
def recovers() -> Any:
    """Check, after a test, that the process pool still runs calls."""
    yield
    assert parallel(backend="process", chunks=2, workers=2)(add)([1, 2, 3]) == [3, 3]


@pytest.mark.usefixtures("recovers")
def test_an_argument_that_cannot_be_pickled_is_a_serialization_error() -> None:
    func = parallel(backend="process", chunks=2, workers=2)(first_item)
    with pytest.raises(SerializationError) as info:
        func([1, 2], threading.Lock())
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "argument 'extra'" in message
    assert "_thread.lock" in message
    assert "backend='thread'" in message


@pytest.mark.usefixtures("recovers")
def test_a_result_that_cannot_be_pickled_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"the result of chunk \d.*cannot be pickled.*return plain data"):
        parallel(backend="process", chunks=2, workers=2)(return_a_lock)([1, 2])


@pytest.mark.usefixtures("recovers")
def test_an_argument_the_worker_cannot_unpickle_is_a_serialization_error() -> None:
    func = parallel(backend="process", chunks=2, workers=2)(first_item)
    unpickled = r"^an argument of chunk \d .*cannot be unpickled in the worker"
    with pytest.raises(SerializationError, match=unpickled) as info:
        func([1, 2], PicklesButNeverUnpickles())
    assert "cannot be rebuilt" in str(info.value.__cause__.__cause__)  # loky's remote traceback


@pytest.mark.usefixtures("recovers")
def test_a_result_the_caller_cannot_unpickle_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot be unpickled in the caller"):
        parallel(backend="process", chunks=2, workers=2)(return_unloadable)([1, 2])


@pytest.mark.usefixtures("recovers")
def test_an_exception_that_cannot_be_pickled_still_surfaces_with_its_type_and_traceback() -> None:
    with pytest.raises(UnpicklableRemoteError) as info:
        parallel(backend="process", chunks=2, workers=2)(raise_unpicklable)([1, 2])
    error = info.value
    assert error.type_name.endswith("NeedsTwoArguments")
    assert "bad (code 3)" in str(error)
    assert "raise NeedsTwoArguments" in error.traceback_text


@pytest.mark.usefixtures("recovers")
def test_an_exception_whose_class_the_caller_cannot_import_still_surfaces(tmp_path: Path) -> None:
    (tmp_path / "worker_only_errors.py").write_text("class WorkerOnlyError(Exception):\n    pass\n")
    func = parallel(backend="process", chunks=2, workers=2)(raise_worker_only_class)
    with pytest.raises(UnpicklableRemoteError) as info:
        func([1, 2], str(tmp_path))
    error = info.value
    assert error.type_name == "worker_only_errors.WorkerOnlyError"
    assert "No module named 'worker_only_errors'" in str(error)
    assert "raise worker_only_errors.WorkerOnlyError" in error.traceback_text
    assert "worker_only_errors" not in sys.modules


@pytest.mark.parametrize("value", [{1, 2}, 5, {"a": 1}, "text", None], ids=type)
def test_a_type_that_cannot_be_split_is_a_split_error_naming_the_argument(backend: str, value: Any) -> None:
    func = parallel(backend=backend, chunks=2)(first_item)
    with pytest.raises(SplitError) as info:
        func(value)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"argument 'items' of type {type(value).__name__}" in message
    assert "register_splitter" in message


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"backend": "prcess"}, LookupError),
        ({"chunks": 0}, ValueError),
        ({"workers": -1}, ValueError),
        ({"chunks": 2, "chunk_size": 2}, ValueError),
        ({"combine": "bogus"}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"seed": "x"}, TypeError),
        ({"nope": 1}, TypeError),
        ({"split": "nope"}, ValueError),
    ],
)
def test_wrong_decorator_arguments_fail_when_the_decorator_is_applied(
    options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        parallel(**options)(first_item)
