"""Combining per-chunk results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conc_ml._combine import combine_results


def test_list_keeps_chunk_order() -> None:
    assert combine_results("list", [3, 1, 2], [1, 1, 1]) == [3, 1, 2]


def test_concat_joins_arrays_lists_tuples() -> None:
    np.testing.assert_array_equal(combine_results("concat", [np.arange(2), np.arange(2, 5)], [2, 3]), np.arange(5))
    assert combine_results("concat", [[1], [2, 3]], [1, 2]) == [1, 2, 3]
    assert combine_results("concat", [(1,), (2, 3)], [1, 2]) == (1, 2, 3)


def test_concat_joins_pandas_and_sparse() -> None:
    frames = [pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]}, index=[2])]
    pd.testing.assert_frame_equal(combine_results("concat", frames, [2, 1]), pd.DataFrame({"a": [1, 2, 3]}))
    parts = [sp.csr_matrix(np.eye(2)), sp.csr_matrix(np.ones((1, 2)))]
    joined = combine_results("concat", parts, [2, 1])
    assert joined.format == "csr"
    np.testing.assert_array_equal(joined.toarray(), np.vstack([np.eye(2), np.ones((1, 2))]))


def test_concat_of_scalars_says_what_to_use_instead() -> None:
    with pytest.raises(TypeError, match=r"cannot join results of type float; .*combine='list'"):
        combine_results("concat", [1.0, 2.0], [1, 1])
    with pytest.raises(TypeError, match="0-d arrays"):
        combine_results("concat", [np.array(1.0), np.array(2.0)], [1, 1])


def test_concat_of_mixed_types_is_an_error() -> None:
    with pytest.raises(TypeError, match="one type"):
        combine_results("concat", [[1], (2,)], [1, 1])


def test_sum_adds_in_chunk_order() -> None:
    assert combine_results("sum", [1, 2, 3], [1, 1, 1]) == 6
    np.testing.assert_array_equal(combine_results("sum", [np.ones(2), np.ones(2)], [1, 1]), [2.0, 2.0])


def test_mean_is_weighted_by_chunk_size() -> None:
    data = np.arange(10.0)
    means = [data[:7].mean(), data[7:].mean()]
    assert combine_results("mean", means, [7, 3]) == pytest.approx(data.mean())


def test_callable_receives_the_list() -> None:
    assert combine_results(max, [3, 9, 4], [1, 1, 1]) == 9
