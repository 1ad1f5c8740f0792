"""A property test a user would write: the parallel function equals its sequential self.

hypothesis draws the input (``splittable``) and how the call is run (``parallel_configs``);
``conc_ml.testing`` compares the results and, on a difference, names where it is::

    pytest examples/test_properties_example.py
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conc_ml import parallel
from conc_ml.testing import assert_equivalent, assert_parallel_equivalent
from conc_ml.testing.strategies import parallel_configs, splittable

#: one worker count throughout: the process pool then starts once and stays warm
WORKERS = 2

#: feature matrices of 0 to 12 rows, including non-contiguous views
feature_rows = splittable(np.float64, kinds=("array",), row_shape=(3,), elements=st.floats(-1e3, 1e3))


@parallel(backend="process", combine="concat")
def standardise_rows(features: np.ndarray) -> np.ndarray:
    """Scale each row to mean 0 and standard deviation 1 (row by row: chunking cannot matter)."""
    centred = features - features.mean(axis=1, keepdims=True)
    return centred / (features.std(axis=1, keepdims=True) + 1e-12)


@parallel(backend="process", combine="concat")
def bootstrap_row_means(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean of a bootstrap resample of each row's features (random: each chunk has its own stream)."""
    picks = rng.integers(0, features.shape[1], size=features.shape)
    return np.take_along_axis(features, picks, axis=1).mean(axis=1)


@pytest.fixture(scope="module", autouse=True)
def warm_process_pool() -> None:
    """Start the worker processes before hypothesis runs, so that no example pays for it."""
    standardise_rows.options(workers=WORKERS, chunks=WORKERS)(np.zeros((WORKERS, 3)))


@settings(max_examples=20, deadline=None)  # no deadline: worker processes make timing uneven
@given(features=feature_rows, config=parallel_configs(min_workers=WORKERS, max_workers=WORKERS))
def test_standardise_rows_is_parallel_safe(features: np.ndarray, config: dict[str, Any]) -> None:
    run = standardise_rows.options(**config)
    result = run(features)
    assert_equivalent(result, run.sequential(features))
    # Row by row, so one call on all rows must give the same, bit for bit.
    assert_equivalent(result, standardise_rows.__wrapped__(features))


@settings(max_examples=10, deadline=None)
@given(features=feature_rows, seed=st.integers(0, 2**32 - 1))
def test_bootstrap_is_reproducible_on_every_backend(features: np.ndarray, seed: int) -> None:
    # Every backend, with the function's own chunking and with 3 chunks, against .sequential.
    assert_parallel_equivalent(bootstrap_row_means, features, workers=WORKERS, chunks=(None, 3), seed=seed)
