"""Options: validated at decoration time, layered with the documented precedence."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import numpy as np
import pytest

from conc_ml import BackendUnavailableError, config, parallel
from conc_ml.errors import ConcMLError


def identity(items: list[int]) -> list[int]:
    return items


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"chunks": 0}, ValueError, "chunks must be a positive int"),
        ({"chunks": 2.5}, TypeError, "chunks must be a positive int or None, not float"),
        ({"workers": -1}, ValueError, "workers must be a positive int"),
        ({"chunk_size": True}, TypeError, "chunk_size must be a positive int"),
        ({"chunks": 2, "chunk_size": 3}, ValueError, "chunks and chunk_size are exclusive"),
        ({"combine": "median"}, ValueError, "combine must be one of 'list', 'concat', 'sum', 'mean'"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0, .* got -1"),
        ({"seed": "7"}, TypeError, "seed must be an int >= 0, .* got str '7'"),
        ({"timeout": 0}, ValueError, "timeout must be a finite number of seconds > 0"),
        ({"timeout": "1"}, TypeError, "timeout must be a number"),
        ({"progress": 1}, TypeError, "progress must be True or False"),
        ({"split": "nope"}, ValueError, "not a parameter of identity"),
        ({"split": 3}, ValueError, "split=3 but identity\\(\\) has 1 positional"),
        ({"split": (1, 2)}, TypeError, "tuple of parameter names"),
        ({"chunkz": 3}, TypeError, "unexpected keyword argument\\(s\\) 'chunkz'; expected some of: backend"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration_time(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parallel(**options)(identity)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(
        BackendUnavailableError, match="unknown backend 'prcess'; expected one of: auto, async, dask"
    ) as info:
        parallel(backend="prcess")(identity)
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, ConcMLError)


def test_function_without_parameters_cannot_be_split() -> None:
    def nothing() -> int:
        return 1

    with pytest.raises(TypeError, match="needs a parameter to split"):
        parallel(nothing)


def test_rng_must_be_passable_by_keyword() -> None:
    def positional_rng(rng: np.random.Generator, /, items: list[int]) -> int:
        return 0

    with pytest.raises(TypeError, match="must be passable by keyword"):
        parallel(positional_rng)


def test_bare_and_called_decorator_are_equivalent() -> None:
    bare = parallel(identity)
    called = parallel()(identity)
    assert bare.__wrapped__ is identity
    assert called.__wrapped__ is identity
    assert bare.__name__ == "identity"
    assert bare.__doc__ == identity.__doc__


def test_decorating_twice_is_an_error() -> None:
    with pytest.raises(TypeError, match="already decorated"):
        parallel(parallel(identity))


def test_options_returns_a_new_wrapper_and_leaves_the_original_alone() -> None:
    original = parallel(backend="thread", chunks=2)(identity)
    changed = original.options(backend="sequential", workers=3)
    assert changed is not original
    assert changed.resolved_options().backend == "sequential"
    assert changed.resolved_options().workers == 3
    assert original.resolved_options().backend == "thread"
    assert original.resolved_options().workers is None


def test_options_validates_at_once() -> None:
    with pytest.raises(ValueError, match="workers must be a positive int"):
        parallel(identity).options(workers=0)


def test_chunk_size_in_a_higher_layer_replaces_chunks() -> None:
    func = parallel(chunks=4)(identity)
    assert func.options(chunk_size=10).resolved_options().chunks is None
    with config(chunk_size=5):
        assert func.resolved_options().chunks is None
        assert func.resolved_options().chunk_size == 5


def test_precedence_options_config_decorator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONC_ML_BACKEND", "thread")
    monkeypatch.setenv("CONC_ML_WORKERS", "3")
    plain = parallel(identity)
    assert (plain.resolved_options().backend, plain.resolved_options().workers) == ("thread", 3)

    decorated = parallel(backend="sequential")(identity)
    assert decorated.resolved_options().backend == "sequential"
    assert decorated.resolved_options().workers == 3

    with config(backend="async", workers=2):
        assert decorated.resolved_options().backend == "async"
        assert decorated.resolved_options().workers == 2
        overridden = decorated.options(backend="process")
        assert overridden.resolved_options().backend == "process"


def test_bad_environment_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONC_ML_WORKERS", "many")
    with pytest.raises(ValueError, match="CONC_ML_WORKERS must be a positive integer, got 'many'"):
        parallel(identity)([1, 2])
    monkeypatch.setenv("CONC_ML_WORKERS", "2")
    monkeypatch.setenv("CONC_ML_BACKEND", "nope")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'"):
        parallel(identity)([1, 2])


def test_config_rejects_unknown_keywords() -> None:
    with (
        pytest.raises(TypeError, match="config\\(\\) got unexpected keyword argument\\(s\\) 'worker'"),
        config(worker=2),
    ):
        pass


def test_config_nests_and_restores() -> None:
    func = parallel(identity)
    with config(workers=2):
        with config(chunks=5):
            assert (func.resolved_options().workers, func.resolved_options().chunks) == (2, 5)
        assert func.resolved_options().chunks is None
    assert func.resolved_options().workers is None


def test_config_is_local_to_a_thread() -> None:
    func = parallel(identity)
    seen: list[int | None] = []
    with config(workers=4):
        thread = threading.Thread(target=lambda: seen.append(func.resolved_options().workers))
        thread.start()
        thread.join(timeout=10)
    assert seen == [None]


def test_config_is_carried_by_copied_contexts() -> None:
    func = parallel(identity)
    with config(workers=4):
        context = contextvars.copy_context()
    assert context.run(lambda: func.resolved_options().workers) == 4


def test_config_takes_backend_settings() -> None:
    func = parallel(identity)
    with config(address="tcp://127.0.0.1:8786", allow_nested=True):
        settings = func.resolved_options().settings
    assert settings == {"address": "tcp://127.0.0.1:8786", "allow_nested": True}
