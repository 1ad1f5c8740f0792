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


def test_sum_of_pandas_counts_a_label_missing_from_a_chunk_as_zero() -> None:
    # Per-chunk groupby sums: group "a" exists in the first chunk only.
    first = pd.Series([1, 2], index=pd.Index(["a", "b"], name="k"), name="v")
    second = pd.Series([7], index=pd.Index(["b"], name="k"), name="v")
    total = combine_results("sum", [first, second], [2, 1])
    pd.testing.assert_series_equal(total, pd.Series([1, 9], index=pd.Index(["a", "b"], name="k"), name="v"))


def test_sum_of_pandas_frames_fills_missing_rows_and_columns_keeping_dtypes() -> None:
    first = pd.DataFrame({"n": [1]}, index=["a"])
    second = pd.DataFrame({"n": [2, 3], "x": [0.5, 1.5]}, index=["a", "b"])
    total = combine_results("sum", [first, second], [1, 2])
    expected = pd.DataFrame({"n": [3, 3], "x": [0.5, 1.5]}, index=["a", "b"])
    pd.testing.assert_frame_equal(total, expected)
    assert total["n"].dtype == np.int64


def test_sum_of_pandas_with_the_same_labels_is_plain_addition() -> None:
    parts = [pd.Series([1.5, 2.0], index=["a", "b"]), pd.Series([1.0, 0.5], index=["a", "b"])]
    pd.testing.assert_series_equal(combine_results("sum", parts, [1, 1]), parts[0] + parts[1])


def test_concat_keeps_the_masks_of_masked_arrays() -> None:
    parts = [np.ma.masked_array([1.0, 2.0], mask=[True, False]), np.ma.masked_array([3.0], mask=[True])]
    joined = combine_results("concat", parts, [2, 1])
    assert isinstance(joined, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(joined), [True, False, True])
    np.testing.assert_array_equal(joined.compressed(), [2.0])


def test_concat_of_categoricals_unites_the_categories_each_chunk_saw() -> None:
    values = pd.Series(["b", "a", "c", "b", "d", "d"])
    parts = [values.iloc[start : start + 2].astype("category") for start in (0, 2, 4)]
    pd.testing.assert_series_equal(combine_results("concat", parts, [2, 2, 2]), values.astype("category"))
    frame = pd.DataFrame({"key": values, "n": pd.array(range(6), dtype="Int64")})
    pieces = [frame.iloc[start : start + 3].astype({"key": "category"}) for start in (0, 3)]
    pd.testing.assert_frame_equal(combine_results("concat", pieces, [3, 3]), frame.astype({"key": "category"}))


def test_concat_of_categoricals_keeps_an_unsorted_order_of_appearance_and_ordered_ones() -> None:
    parts = [pd.Series(pd.Categorical(["z"], categories=["z", "y"])), pd.Series(pd.Categorical(["x"]))]
    joined = combine_results("concat", parts, [1, 1])
    assert list(joined.cat.categories) == ["z", "y", "x"]
    ordered = [pd.Series(pd.Categorical(["a"], ordered=True)), pd.Series(pd.Categorical(["b"], ordered=True))]
    # Two orders cannot be merged: pandas' own result, an object column.
    pd.testing.assert_series_equal(combine_results("concat", ordered, [1, 1]), pd.concat(ordered))
