"""What users' code brings: pandas map-reduce, masked arrays, methods, mistakes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conc_ml import SplitError, parallel


def group_sums(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby("key")["value"].sum()


def identity(values: object) -> object:
    return values


def rows_above(features: pd.DataFrame, target: pd.Series) -> int:
    return len(features[target > 0])


def test_sum_of_groupby_chunks_equals_the_whole_groupby(backend: str) -> None:
    frame = pd.DataFrame({"key": ["a", "b", "b", "b"], "value": [1, 2, 3, 4]})
    func = parallel(backend=backend, chunks=2, combine="sum")(group_sums)
    pd.testing.assert_series_equal(func(frame), group_sums(frame))
    pd.testing.assert_series_equal(func.sequential(frame), group_sums(frame))


def test_concat_keeps_masks_on_every_backend(backend: str) -> None:
    values = np.ma.masked_array(np.arange(6.0), mask=[1, 0, 1, 0, 1, 1])
    joined = parallel(backend=backend, chunks=3, combine="concat")(identity)(values)
    assert isinstance(joined, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(joined), np.ma.getmaskarray(values))
    assert joined.count() == 2


def test_pandas_arguments_with_different_indexes_are_refused(backend: str) -> None:
    features = pd.DataFrame({"a": range(4)}, index=[0, 1, 2, 3])
    target = pd.Series([1, -1, 1, -1], index=[3, 2, 1, 0])
    func = parallel(backend=backend, chunks=2, split=("features", "target"), combine="sum")(rows_above)
    with pytest.raises(SplitError, match="different indexes"):
        func(features, target)
    assert func(features, target.sort_index()) == rows_above(features, target.sort_index())
