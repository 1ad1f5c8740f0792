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

from conc_ml import ParityError, parallel
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
    # .stream() runs the chunks without being timed under ``pytest --conc-bench``.
    list(standardise_rows.options(workers=WORKERS, chunks=WORKERS).stream(np.zeros((WORKERS, 3))))


@settings(max_examples=20, deadline=None)  # no deadline: worker processes make timing uneven
@given(features=feature_rows, config=parallel_configs(min_workers=WORKERS, max_workers=WORKERS))
def test_standardise_rows_is_parallel_safe(features: np.ndarray, config: dict[str, Any]) -> None:
    # The drawn run against .sequential(); whole=True also against one call on all rows,
    # which must agree bit for bit since the function works row by row.
    assert_parallel_equivalent(
        standardise_rows,
        features,
        backends=config["backend"],
        workers=config["workers"],
        chunks=config["chunks"],
        whole=True,
    )


def test_a_chunk_dependent_function_is_caught() -> None:
    # Centring each chunk on its own mean is not row by row: whole=True says where it breaks.
    @parallel(backend="thread", combine="concat")
    def centre_columns(features: np.ndarray) -> np.ndarray:
        return features - features.mean(axis=0)

    with pytest.raises(ParityError, match=r"differs from .*centre_columns\(\) called on the whole input"):
        assert_parallel_equivalent(centre_columns, np.arange(12.0).reshape(4, 3), chunks=2, whole=True)


@settings(max_examples=10, deadline=None)
@given(features=feature_rows, seed=st.integers(0, 2**32 - 1))
def test_bootstrap_is_reproducible_on_every_backend(features: np.ndarray, seed: int) -> None:
    # Every backend, with the function's own chunking and with 3 chunks, against .sequential.
    assert_parallel_equivalent(bootstrap_row_means, features, workers=WORKERS, chunks=(None, 3), seed=seed)


def test_results_compare_deeply() -> None:
    # assert_equivalent is the comparison behind all of the above, usable on its own.
    fitted = {"coef": np.array([[0.5, 1.0]]), "classes": ["a", "b"]}
    assert_equivalent(fitted, {"coef": np.array([[0.5, 1.0]]), "classes": ["a", "b"]})
    with pytest.raises(ParityError, match=r"^result\['coef'\]\[0, 1\]: actual 1.0, expected 1.5"):
        assert_equivalent(fitted, {"coef": np.array([[0.5, 1.5]]), "classes": ["a", "b"]})
