"""``conc_ml.testing.strategies``: what they draw, and that they shrink to simple cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from conc_ml import BackendUnavailableError, parallel
from conc_ml.testing.strategies import SPLITTABLE_KINDS, parallel_configs, splittable

#: ``find`` generates max_examples inputs before it shrinks; few suffice for easy conditions
NO_DATABASE = settings(
    database=None, max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
#: a busy machine (2 cores, shared) must not turn slow examples into a failure
NO_DEADLINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@parallel
def rows_of(items: list[int]) -> list[int]:
    return items


@NO_DEADLINE
@given(parallel_configs(backends=("sequential", "thread"), max_chunks=5, max_workers=3, seeds=True))
def test_configs_are_options_within_bounds(config: dict[str, Any]) -> None:
    assert set(config) == {"backend", "chunks", "workers", "seed"}
    assert config["backend"] in ("sequential", "thread")
    assert config["chunks"] is None or 1 <= config["chunks"] <= 5
    assert 1 <= config["workers"] <= 3
    resolved = rows_of.options(**config).resolved_options()
    assert (resolved.backend, resolved.chunks, resolved.workers, resolved.seed) == (
        config["backend"],
        config["chunks"],
        config["workers"],
        config["seed"],
    )


def test_configs_shrink_to_the_first_backend_one_worker_and_default_chunks() -> None:
    assert find(parallel_configs(), lambda c: True, settings=NO_DATABASE) == {
        "backend": "thread",
        "chunks": None,
        "workers": 1,
    }
    assert "seed" not in find(parallel_configs(), lambda c: True, settings=NO_DATABASE)


def test_configs_refuse_bad_arguments() -> None:
    with pytest.raises(BackendUnavailableError, match="unknown backend 'threads'"):
        parallel_configs(backends=("threads",))
    with pytest.raises(ValueError, match="at least one backend"):
        parallel_configs(backends=())
    with pytest.raises(ValueError, match="max_chunks must be an int >= 1"):
        parallel_configs(max_chunks=0)
    with pytest.raises(TypeError, match="max_workers must be an int >= 1"):
        parallel_configs(max_workers=2.0)  # type: ignore[arg-type]


@NO_DEADLINE
@given(splittable(np.int32, kinds=("array",), min_rows=2, max_rows=5, row_shape=(3,)))
def test_arrays_have_the_dtype_rows_and_row_shape_asked_for(values: np.ndarray) -> None:
    assert isinstance(values, np.ndarray)
    assert values.dtype == np.int32
    assert 2 <= values.shape[0] <= 5
    assert values.shape[1:] == (3,)


@NO_DEADLINE
@given(splittable(st.sampled_from([np.float32, np.uint8, np.bool_]), kinds=SPLITTABLE_KINDS))
def test_every_kind_is_drawn_as_its_own_type(value: Any) -> None:
    assert isinstance(value, np.ndarray | list | tuple | pd.Series | pd.DataFrame) or sp.issparse(value)
    assert 0 <= (value.shape[0] if hasattr(value, "shape") else len(value)) <= 12


@pytest.mark.parametrize(
    ("kind", "kind_type"),
    [("array", np.ndarray), ("list", list), ("tuple", tuple), ("series", pd.Series), ("dataframe", pd.DataFrame)],
)
def test_only_the_kinds_asked_for(kind: str, kind_type: type) -> None:
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(splittable(kinds=(kind,)))
    def check(value: Any) -> None:
        assert type(value) is kind_type

    check()


def test_shrinks_to_the_empty_contiguous_input() -> None:
    smallest = find(splittable(), lambda v: True, settings=NO_DATABASE)
    assert isinstance(smallest, np.ndarray)
    assert smallest.shape == (0,)


def test_shrinks_to_few_rows_of_zeros() -> None:
    three = find(splittable(), lambda v: len(v) >= 3, settings=NO_DATABASE)
    assert isinstance(three, np.ndarray)
    assert three.tolist() == [0.0, 0.0, 0.0]
    assert three.flags.c_contiguous


def test_draws_one_row_and_non_contiguous_views() -> None:
    one = find(splittable(kinds=("list",)), lambda v: len(v) == 1, settings=NO_DATABASE)
    assert one == [0.0]
    view = find(
        splittable(row_shape=(2,)),
        lambda v: isinstance(v, np.ndarray) and len(v) > 1 and not v.flags.c_contiguous,
        settings=settings(NO_DATABASE, max_examples=300),
    )
    assert view.base is not None
    with pytest.raises(Exception, match="No examples found"):
        find(
            splittable(views=False),
            lambda v: isinstance(v, np.ndarray) and len(v) > 1 and not v.flags.c_contiguous,
            settings=settings(NO_DATABASE, max_examples=100),
        )


def test_sparse_inputs_are_sparse_two_dimensional_and_numeric() -> None:
    matrix = find(splittable(kinds=("sparse",)), lambda m: m.shape[0] >= 2, settings=NO_DATABASE)
    assert sp.issparse(matrix)
    assert matrix.ndim == 2
    with pytest.raises(TypeError, match="sparse inputs need a numeric dtype"):
        find(splittable("U3", kinds=("sparse",)), lambda m: True, settings=NO_DATABASE)


def test_splittable_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kinds must be a non-empty selection of array, list"):
        splittable(kinds=("matrix",))
    with pytest.raises(ValueError, match="max_rows must be an int >= 3"):
        splittable(min_rows=3, max_rows=2)
    with pytest.raises(TypeError, match="row_shape must be a tuple"):
        splittable(row_shape=[2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data type"):
        splittable("not a dtype")
