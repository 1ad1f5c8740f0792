"""``assert_parallel_equivalent``: every backend against the sequential run."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest

from conc_ml import BackendUnavailableError, ParityError, SplitError, parallel
from conc_ml._intercept import InterceptedCall, intercept_calls
from conc_ml.testing import assert_parallel_equivalent

FAST = ("sequential", "thread")


@parallel(combine="concat")
def doubled(rows: np.ndarray) -> np.ndarray:
    return rows * 2.0


@parallel(combine="concat")
def centred(rows: np.ndarray) -> np.ndarray:
    return rows - rows.mean()


@parallel(combine="concat")
def noisy(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rows + rng.normal(size=rows.shape)


@parallel(combine="sum")
def total(values: np.ndarray) -> Any:
    return values.sum()


@parallel(combine="concat")
def thread_names(items: list[int]) -> list[str]:
    return [threading.current_thread().name] * len(items)


@parallel(combine="concat")
def process_ids(items: list[int]) -> list[int]:
    return [os.getpid()] * len(items)


@parallel(combine="concat")
def fails_with_key_error(items: list[int]) -> list[int]:
    raise KeyError("always")


@parallel(combine="concat")
def fails_away_from_home(items: list[int], home: int) -> list[int]:
    if os.getpid() != home:
        raise ValueError("not in the caller's process")
    return items


@parallel(combine="concat")
def error_type_depends_on_process(items: list[int], home: int) -> list[int]:
    raise (KeyError if os.getpid() == home else LookupError)("which")


@parallel(combine="concat")
def doubles_in_place(rows: np.ndarray) -> np.ndarray:
    rows *= 2
    return rows


@parallel(combine="concat")
async def async_doubled(rows: np.ndarray) -> np.ndarray:
    return rows * 2.0


def test_a_deterministic_function_passes_on_every_default_backend() -> None:
    assert_parallel_equivalent(doubled, np.arange(10.0).reshape(5, 2))


def test_seeded_streams_make_random_functions_comparable() -> None:
    both = ("thread", "process")
    assert_parallel_equivalent(noisy, np.zeros(7), backends=both, workers=(1, 2), chunks=(2, 7), seed=3)


def test_a_result_that_depends_on_the_thread_is_caught() -> None:
    with pytest.raises(ParityError) as info:
        assert_parallel_equivalent(thread_names, [1, 2, 3], backends="thread", workers=2, chunks=2)
    message = str(info.value)
    assert message.startswith("thread_names() on backend 'thread' with workers=2, chunks=2, seed=0 differs from ")
    assert "thread_names.sequential(): result[0]: actual '" in message


def test_a_result_that_depends_on_the_process_is_caught() -> None:
    assert_parallel_equivalent(process_ids, [1, 2, 3], backends=FAST)
    with pytest.raises(ParityError, match=r"backend 'process' with workers=2, chunks=None, seed=0 .*result\[0\]"):
        assert_parallel_equivalent(process_ids, [1, 2, 3], backends=("thread", "process"), chunks=None)


def test_whole_compares_with_the_undecorated_function() -> None:
    rows = np.arange(12.0).reshape(6, 2)
    assert_parallel_equivalent(doubled, rows, backends=FAST, whole=True)
    assert_parallel_equivalent(centred, rows, backends=FAST)
    with pytest.raises(ParityError, match=r"centred.sequential\(\) with .* differs from centred\(\) called on the"):
        assert_parallel_equivalent(centred, rows, backends=FAST, whole=True)


def test_whole_gives_a_random_function_a_generator_but_other_streams() -> None:
    assert_parallel_equivalent(noisy, np.zeros(4), backends=FAST, chunks=1, whole=True, seed=1)
    with pytest.raises(ParityError, match="whole=True"):
        assert_parallel_equivalent(noisy, np.zeros(4), backends=FAST, chunks=2, whole=True, seed=1)


def test_tolerances_reach_the_comparison() -> None:
    # Summed per chunk, 1.0 + 1e-16 + 1e-16 keeps the two small terms; summed whole it loses them.
    values = np.array([1.0, 0.0, 1e-16, 1e-16])
    with pytest.raises(ParityError, match=r"actual 1\.0000000000000002, expected 1\.0"):
        assert_parallel_equivalent(total, values, backends=FAST, chunks=2, whole=True)
    assert_parallel_equivalent(total, values, backends=FAST, chunks=2, whole=True, rtol=1e-15)


def test_errors_of_the_same_type_everywhere_are_equivalent() -> None:
    assert_parallel_equivalent(fails_with_key_error, [1, 2], backends=("thread", "process"), whole=True)


def test_a_call_conc_ml_refuses_is_raised_not_taken_as_equivalent() -> None:
    with pytest.raises(SplitError, match="cannot split argument 'rows' of type int"):
        assert_parallel_equivalent(doubled, 5, backends=FAST)


def test_an_error_only_in_workers_is_a_difference_and_is_chained() -> None:
    assert_parallel_equivalent(fails_away_from_home, [1, 2, 3], os.getpid(), backends=FAST)
    with pytest.raises(ParityError) as info:
        assert_parallel_equivalent(fails_away_from_home, [1, 2, 3], os.getpid(), backends="process")
    message = str(info.value)
    assert "it raised ValueError: not in the caller's process, but the reference returned [1, 2, 3]" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_a_different_error_type_is_a_difference() -> None:
    with pytest.raises(ParityError, match=r"raised LookupError: which, but the reference raised KeyError: 'which'"):
        assert_parallel_equivalent(error_type_depends_on_process, [1, 2], os.getpid(), backends="process")


def test_changing_the_input_in_place_is_reported() -> None:
    rows = np.ones(4)
    pattern = r"changed its input during doubles_in_place.sequential\(\) .*arguments\['rows'\]\[0\]"
    with pytest.raises(ParityError, match=pattern):
        assert_parallel_equivalent(doubles_in_place, rows, backends="thread")


def test_async_functions_are_awaited() -> None:
    assert_parallel_equivalent(async_doubled, np.arange(6.0), backends=("async", "thread"), whole=True)


def test_calls_are_not_intercepted_by_the_plugin_hook() -> None:
    seen: list[InterceptedCall] = []

    def interceptor(call: InterceptedCall) -> Any:
        seen.append(call)
        return call.run()

    with intercept_calls(interceptor):
        assert_parallel_equivalent(doubled, np.arange(4.0), backends=FAST)
    assert seen == []


def test_bad_arguments_fail_before_anything_runs() -> None:
    calls: list[int] = []

    @parallel
    def counted(items: list[int]) -> list[int]:
        calls.append(1)
        return items

    with pytest.raises(BackendUnavailableError, match="unknown backend 'thred'"):
        assert_parallel_equivalent(counted, [1, 2], backends=("thread", "thred"))
    with pytest.raises(ValueError, match="chunks must be a positive int"):
        assert_parallel_equivalent(counted, [1, 2], backends="thread", chunks=(2, 0))
    with pytest.raises(ValueError, match="backends must not be empty"):
        assert_parallel_equivalent(counted, [1, 2], backends=())
    with pytest.raises(TypeError, match="workers must be one value or an iterable"):
        assert_parallel_equivalent(counted, [1, 2], workers=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol must be a finite number"):
        assert_parallel_equivalent(counted, [1, 2], rtol=-1)
    assert calls == []


def test_refuses_undecorated_functions_iterators_and_seed_none_with_rng() -> None:
    with pytest.raises(TypeError, match=r"needs a function decorated with @conc_ml\.parallel"):
        assert_parallel_equivalent(len, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 'items' of process_ids\\(\\) is an iterator"):
        assert_parallel_equivalent(process_ids, iter([1, 2]))
    with pytest.raises(ValueError, match="seed=None would give every run fresh random streams"):
        assert_parallel_equivalent(noisy, np.zeros(3), seed=None)
