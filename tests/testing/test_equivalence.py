"""``assert_equivalent``: what counts as equal, what does not, and what the message says."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict, namedtuple
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conc_ml import ConcMLError, ParityError
from conc_ml.testing import assert_equivalent


def differs(actual: Any, expected: Any, **tolerance: float) -> str:
    """The ParityError message for ``actual`` vs ``expected`` (fails if they are equivalent)."""
    with pytest.raises(ParityError) as info:
        assert_equivalent(actual, expected, **tolerance)
    return str(info.value)


def test_parity_error_is_an_assertion_error_and_a_conc_ml_error() -> None:
    with pytest.raises(AssertionError) as info:
        assert_equivalent(1, 2)
    assert isinstance(info.value, ConcMLError)


# -- numpy arrays --------------------------------------------------------------------


def test_equal_arrays_pass_and_a_copy_with_nan_in_the_same_place_is_equal() -> None:
    values = np.array([[1.0, np.nan], [np.inf, -np.inf]])
    assert_equivalent(values, values.copy())
    assert_equivalent(values.astype(np.float32), values.astype(np.float32))


def test_nan_payloads_do_not_matter() -> None:
    quiet = np.array([np.nan, 1.0])
    other_payload = np.array([0x7FF8_0000_0000_0001, 0x3FF0_0000_0000_0000], dtype=np.uint64).view(np.float64)
    assert quiet.view(np.uint64)[0] != other_payload.view(np.uint64)[0]
    assert_equivalent(other_payload, quiet)
    assert_equivalent(quiet.astype(np.float16), quiet.astype(np.float16))


def test_one_ulp_is_a_difference_without_tolerance() -> None:
    expected = np.array([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]])
    actual = expected.copy()
    actual[1, 2] = np.nextafter(actual[1, 2], np.inf)
    message = differs(actual, expected)
    assert message.startswith("result[1, 2]: actual 5.000000000000001, expected 5.0 (1 of 6 elements differ; ")
    assert "largest absolute difference 8.88178e-16 at [1, 2]" in message
    assert "largest relative difference 1.77636e-16 at [1, 2]" in message
    assert "rtol=0, atol=0" in message


def test_largest_difference_is_reported_where_it_is_not_the_first() -> None:
    message = differs(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 3.0, 10.0]))
    assert message.startswith("result[0]: actual 1.0, expected 1.5 (2 of 4 elements differ;")
    assert "largest absolute difference 6 at [3]" in message
    assert "largest relative difference 0.6 at [3]" in message


def test_shape_and_dtype_are_compared_before_values() -> None:
    assert "shapes differ: actual (2,), expected (1, 2)" in differs(np.zeros(2), np.zeros((1, 2)))
    assert "dtypes differ: actual float32, expected float64" in differs(np.zeros(2, np.float32), np.zeros(2))
    assert "dtypes differ" in differs(np.zeros(2, np.int32), np.zeros(2, np.int64))


def test_nan_against_a_number_differs_even_with_a_tolerance() -> None:
    message = differs(np.array([1.0, np.nan]), np.array([1.0, 2.0]), rtol=0.5, atol=10)
    assert message.startswith("result[1]: actual nan, expected 2.0")
    assert "no finite difference" in message


def test_infinities_of_opposite_sign_differ_even_with_a_tolerance() -> None:
    assert_equivalent(np.array([np.inf]), np.array([np.inf]), rtol=0.1)
    differs(np.array([np.inf]), np.array([-np.inf]), rtol=0.1, atol=1e300)
    differs(np.array([np.inf]), np.array([1e308]), rtol=0.5)


def test_signed_zero_policy_exact_tells_them_apart_a_tolerance_does_not() -> None:
    message = differs(np.array([0.0, 1.0]), np.array([-0.0, 1.0]))
    assert message.startswith("result[0]: actual 0.0, expected -0.0")
    assert "signed zeros differ" in message
    differs(0.0, -0.0)
    assert_equivalent(np.array([0.0]), np.array([-0.0]), atol=1e-12)
    assert_equivalent(np.array([0.0]), np.array([-0.0]), rtol=1e-12)


def test_tolerance_is_symmetric_as_math_isclose() -> None:
    # numpy.isclose(10, 9, rtol=0.1) is True but isclose(9, 10, rtol=0.1) is False;
    # here both directions use max(|a|, |b|).
    for a, b in ((10.0, 9.0), (9.0, 10.0), (1.0, 1.1), (1.1, 1.0)):
        expected_equal = math.isclose(a, b, rel_tol=0.1)
        try:
            assert_equivalent(np.array([a]), np.array([b]), rtol=0.1)
            found_equal = True
        except ParityError:
            found_equal = False
        assert found_equal is expected_equal


def test_absolute_tolerance_bounds_the_difference() -> None:
    assert_equivalent(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]), atol=1e-8)
    assert "largest absolute difference 1e-07" in differs(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-7]), atol=1e-8)


def test_complex_arrays_compare_both_parts_and_nan_in_either_part() -> None:
    values = np.array([1 + 2j, complex(np.nan, 1.0), complex(1.0, np.nan)])
    assert_equivalent(values, values.copy())
    changed = values.copy()
    changed[0] = 1 + np.nextafter(2.0, 3.0) * 1j
    assert differs(changed, values).startswith("result[0]: ")
    assert differs(np.array([complex(np.nan, 1.0)]), np.array([complex(np.nan, 2.0)])).startswith("result[0]")


def test_integer_arrays_are_exact_even_beyond_float_precision() -> None:
    big = np.array([2**60], dtype=np.int64)
    message = differs(big + 1, big, atol=0.5)
    assert "actual 1152921504606846977, expected 1152921504606846976" in message
    assert_equivalent(big + 1, big, atol=1)
    assert_equivalent(np.array([100], np.uint8), np.array([99], np.uint8), rtol=0.011)
    differs(np.array([0], np.uint8), np.array([255], np.uint8), rtol=0.5)


def test_boolean_string_and_datetime_arrays() -> None:
    assert differs(np.array([True, False]), np.array([True, True])).startswith("result[1]: actual False, expected True")
    assert differs(np.array(["a", "b"]), np.array(["a", "c"])).startswith("result[1]: actual np.str_('b')")
    dates = np.array(["2024-01-01", "NaT"], dtype="datetime64[D]")
    assert_equivalent(dates, dates.copy())
    differs(dates, np.array(["2024-01-02", "NaT"], dtype="datetime64[D]"))


def test_object_and_structured_arrays_compare_element_by_element() -> None:
    objects = np.array([{"a": 1.0}, [2.0, np.nan]], dtype=object)
    other = np.array([{"a": 1.0}, [2.0, np.nan]], dtype=object)
    assert_equivalent(objects, other)
    other[0] = {"a": 1.5}
    assert differs(objects, other).startswith("result[0]['a']: actual 1.0, expected 1.5")
    kind = np.dtype([("x", np.float64), ("n", np.int64)])
    rows = np.array([(1.0, 1), (2.0, 2)], dtype=kind)
    changed = rows.copy()
    changed["n"][1] = 3
    assert differs(changed, rows).startswith("result['n'][1]: actual 3, expected 2")


def test_masked_arrays_compare_masks_and_ignore_values_under_the_mask() -> None:
    a = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    b = np.ma.masked_array([1.0, 99.0, 3.0], mask=[False, True, False])
    assert_equivalent(a, b)
    c = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, False, False])
    assert differs(a, c).startswith("result.mask[1]")


def test_zero_dimensional_and_empty_arrays() -> None:
    assert_equivalent(np.array(1.5), np.array(1.5))
    assert differs(np.array(1.5), np.array(2.5)).startswith("result: actual 1.5, expected 2.5 (largest absolute")
    assert_equivalent(np.empty((0, 3)), np.empty((0, 3)))


def test_non_contiguous_views_compare_by_value() -> None:
    base = np.arange(12.0).reshape(3, 4)
    assert_equivalent(base.T, np.ascontiguousarray(base.T))
    assert_equivalent(base[::-1, ::2], base[::-1, ::2].copy())


@pytest.mark.parametrize("tolerance", [{}, {"rtol": 1e-12}])
@pytest.mark.parametrize("layout", [np.ascontiguousarray, np.asfortranarray, lambda a: a[::-1, ::-1]])
def test_a_difference_in_any_memory_layout_is_found_where_it_is(tolerance: dict[str, float], layout: Any) -> None:
    expected = np.arange(12.0).reshape(3, 4)
    actual = expected.copy()
    actual[0, 3] = 30.0
    actual, expected = layout(actual), layout(expected)
    row, column = np.argwhere(actual != expected)[0]
    message = differs(actual, expected, **tolerance)
    assert message.startswith(f"result[{row}, {column}]: actual 30.0, expected 3.0 (1 of 12")


# -- scalars -------------------------------------------------------------------------


def test_python_and_numpy_scalars() -> None:
    assert_equivalent(0.1 + 0.2, 0.1 + 0.2)
    assert differs(0.1 + 0.2, 0.3).startswith("result: actual 0.30000000000000004, expected 0.3")
    assert_equivalent(0.1 + 0.2, 0.3, rtol=1e-15)
    assert_equivalent(float("nan"), float("nan"))
    assert_equivalent(np.float32(0.1), np.float32(0.1))
    assert differs(np.float32(0.1), np.float32(0.2)).startswith("result: actual 0.1, expected 0.2")
    assert_equivalent(10**30, 10**30)
    assert "absolute difference 1" in differs(10**30 + 1, 10**30)
    assert_equivalent(10**30 + 1, 10**30, rtol=1e-20)
    assert_equivalent(1 + 2j, 1 + 2j)
    differs(True, False)
    assert "relative difference 0.2" in differs(np.int64(6), np.int64(5))
    assert_equivalent(np.int64(6), np.int64(5), atol=1)


def test_types_must_match() -> None:
    assert "types differ: actual is numpy.float64 (1.0), expected is float (1.0)" in differs(np.float64(1.0), 1.0)
    assert "actual is list" in differs([1], (1,))
    assert "actual is bool" in differs(True, 1)
    assert "actual is int" in differs(1, 1.0)
    differs(np.array(1.0), np.float64(1.0))


# -- containers ----------------------------------------------------------------------


def test_nested_containers_name_the_path() -> None:
    actual = {"models": [(1, {"w": np.array([1.0, 2.0])})]}
    expected = {"models": [(1, {"w": np.array([1.0, 2.5])})]}
    assert differs(actual, expected).startswith("result['models'][0][1]['w'][1]: actual 2.0, expected 2.5")


def test_sequences_of_different_length() -> None:
    message = differs([1, 2, 3], [1, 2])
    assert message == "result: lengths differ: actual has 3 items, expected 2; first extra item in actual at [2]: 3"
    assert "first extra item in expected at [0]: 'x'" in differs((), ("x",))


def test_named_tuples_compare_as_tuples_of_their_type() -> None:
    point = namedtuple("point", "x y")
    assert_equivalent(point(1, 2.0), point(1, 2.0))
    assert differs(point(1, 2.0), point(1, 3.0)).startswith("result[1]")
    differs(point(1, 2.0), (1, 2.0))


def test_mappings_compare_keys_then_values() -> None:
    assert_equivalent({"a": 1, "b": [1.0]}, {"b": [1.0], "a": 1})
    message = differs({"a": 1, "c": 2}, {"a": 1, "b": 2})
    assert "keys differ: missing from actual: ['b']; only in actual: ['c']" in message
    assert differs({1: 1.0}, {1: 2.0}).startswith("result[1]: ")
    assert "key order differs" in differs(OrderedDict(a=1, b=2), OrderedDict(b=2, a=1))
    message = differs({1.0: "a"}, {1: "a"})
    assert message == "result[1]: key types differ: actual key 1.0 is float, expected key 1 is int"


def test_sets_compare_members() -> None:
    assert_equivalent({1, 2, 3}, {3, 2, 1})
    assert_equivalent(frozenset({"a"}), frozenset({"a"}))
    message = differs({1, 2, 4}, {1, 2, 3})
    assert message == "result: set members differ (matched with ==): missing from actual: [3]; only in actual: [4]"
    assert "member types differ: actual has True (bool), expected 1 (int)" in differs({True, 2}, {1, 2})


@dataclasses.dataclass
class FitReport:
    weights: np.ndarray
    score: float
    elapsed: float = dataclasses.field(default=0.0, compare=False)


def test_dataclasses_compare_fields_and_skip_compare_false_ones() -> None:
    assert_equivalent(FitReport(np.ones(2), 0.5, elapsed=1.0), FitReport(np.ones(2), 0.5, elapsed=2.0))
    assert differs(FitReport(np.ones(2), 0.5), FitReport(np.array([1.0, 3.0]), 0.5)).startswith("result.weights[1]")
    assert differs([FitReport(np.ones(2), 0.5)], [FitReport(np.ones(2), 0.25)]).startswith("result[0].score:")


class Token:
    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Token({self.text!r})"


class Opaque:
    pass


def test_unknown_types_fall_back_to_eq_and_say_so() -> None:
    assert_equivalent(Token("a"), Token("a"))
    message = differs(Token("a"), Token("b"))
    assert message == (
        "result: actual Token('a'), expected Token('b') "
        f"(compared with == since conc_ml.testing does not know {__name__}.Token)"
    )


def test_objects_without_eq_differ_unless_identical_and_the_message_explains() -> None:
    thing = Opaque()
    assert_equivalent(thing, thing)
    message = differs(Opaque(), Opaque())
    assert "defines no __eq__, so == only tells whether both are the same object" in message


class Ambiguous:
    def __eq__(self, other: object) -> bool:
        raise ValueError("truth value is ambiguous")

    __hash__ = object.__hash__


def test_an_eq_that_raises_is_reported_as_a_difference() -> None:
    assert "== failed with ValueError: truth value is ambiguous" in differs(Ambiguous(), Ambiguous())


def test_cycles_do_not_recurse_forever() -> None:
    a: list[Any] = [1.0]
    a.append(a)
    b: list[Any] = [1.0]
    b.append(b)
    assert_equivalent(a, b)
    c: list[Any] = [2.0]
    c.append(c)
    assert differs(a, c).startswith("result[0]")


def test_random_generators_compare_by_state() -> None:
    assert_equivalent(np.random.default_rng(1), np.random.default_rng(1))
    assert differs(np.random.default_rng(1), np.random.default_rng(2)).startswith("result.bit_generator.state")
    assert_equivalent(np.random.RandomState(3), np.random.RandomState(3))
    differs(np.random.RandomState(3), np.random.RandomState(4))
    assert_equivalent(np.random.SeedSequence(5).spawn(2), np.random.SeedSequence(5).spawn(2))
    differs(np.random.SeedSequence(5, spawn_key=(1,)), np.random.SeedSequence(5, spawn_key=(2,)))


# -- pandas --------------------------------------------------------------------------


def frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, 2.0, np.nan], "b": ["x", "y", "z"], "c": pd.array([1, None, 3], dtype="Int64")})


def test_frames_equal_with_nan_and_missing_values() -> None:
    assert_equivalent(frame(), frame())


def test_frames_name_column_and_row() -> None:
    changed = frame()
    changed.loc[1, "a"] = 2.5
    assert differs(changed, frame()).startswith("result['a'].iloc[1]: actual 2.5, expected 2.0 (1 of 3 elements")
    changed = frame()
    changed.loc[2, "b"] = "w"
    assert differs(changed, frame()).startswith("result['b'].iloc[2]: actual 'w', expected 'z'")
    changed = frame()
    changed.loc[1, "c"] = 7
    assert differs(changed, frame()).startswith("result['c'].iloc[1]: types differ")


def test_frames_compare_labels_and_dtypes() -> None:
    assert differs(frame().rename(columns={"a": "A"}), frame()).startswith("result.columns[0]")
    assert differs(frame().set_axis([5, 6, 7]), frame()).startswith("result.index[0]")
    assert "dtypes differ" in differs(frame().astype({"a": np.float32}), frame())
    assert "shapes differ" in differs(frame().iloc[:2], frame())


def test_range_index_and_int_index_with_the_same_labels_are_equivalent() -> None:
    whole = frame()
    rebuilt = pd.concat([whole.iloc[:1], whole.iloc[1:]])
    assert type(rebuilt.index) is not type(whole.index) or isinstance(rebuilt.index, pd.RangeIndex)
    assert_equivalent(rebuilt, whole)


def test_series_compare_name_index_and_values() -> None:
    series = pd.Series([1.0, 2.0], index=["p", "q"], name="s")
    assert_equivalent(series, series.copy())
    assert differs(series.rename("t"), series).startswith("result.name: actual 't', expected 's'")
    assert differs(series * 2, series).startswith("result.iloc[0]: actual 2.0, expected 1.0")
    assert differs(pd.Series([1.0, 2.0], index=["p", "r"], name="s"), series).startswith("result.index[1]")


# -- scipy.sparse --------------------------------------------------------------------


def test_sparse_matrices_compare_by_value_and_name_the_entry() -> None:
    matrix = sp.random(6, 5, density=0.4, format="csr", random_state=0)
    assert_equivalent(matrix, matrix.copy())
    changed = matrix.tolil()
    changed[4, 3] = 7.0
    message = differs(changed.tocsr(), matrix)
    assert re.match(r"result\[4, 3\]: actual 7\.0, expected [0-9.]+ \(1 of \d+ stored entries differ", message)
    assert "types differ" in differs(matrix.tocsc(), matrix)
    assert "shapes differ" in differs(matrix[:5], matrix)


def test_sparse_explicit_zeros_and_duplicates_do_not_matter() -> None:
    stored_zero = sp.csr_matrix((np.array([0.0, 2.0]), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 2))
    duplicated = sp.csr_matrix((np.array([1.0, 1.0]), (np.array([1, 1]), np.array([1, 1]))), shape=(2, 2))
    assert_equivalent(stored_zero, duplicated)


# -- scikit-learn --------------------------------------------------------------------


def test_fitted_linear_models_name_the_coefficient() -> None:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    assert_equivalent(LinearRegression().fit(X, y), LinearRegression().fit(X, y))
    shifted = y.copy()
    shifted[:, 1] += X[:, 3] * 1e-3
    message = differs([LinearRegression().fit(X, shifted)], [LinearRegression().fit(X, y)])
    # Refitting moves the other coefficients of output 1 by rounding noise; the shift is largest at [1, 3].
    assert message.startswith("result[0].coef_[1, ")
    assert "largest absolute difference 0.001 at [1, 3]" in message


def test_estimators_compare_params_and_which_attributes_are_fitted() -> None:
    from sklearn.linear_model import Ridge

    X, y = np.eye(4), np.arange(4.0)
    assert differs(Ridge(alpha=2.0), Ridge(alpha=1.0)).startswith("result.alpha: actual 2.0, expected 1.0")
    assert "fitted attributes differ: only in actual ['coef_', " in differs(Ridge().fit(X, y), Ridge())


def test_forests_compare_every_tree() -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    first = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    assert_equivalent(first, RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y))
    other_data = X.copy()
    other_data[0, 1] += 1.0
    other = RandomForestClassifier(n_estimators=4, random_state=0).fit(other_data, y)
    assert differs(other, first).startswith("result.estimators_[")


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tolerance", "error"),
    [
        ({"rtol": -1}, ValueError),
        ({"atol": float("nan")}, ValueError),
        ({"atol": float("inf")}, ValueError),
        ({"rtol": "0.1"}, TypeError),
        ({"atol": True}, TypeError),
    ],
)
def test_bad_tolerances_are_rejected(tolerance: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="must be a"):
        assert_equivalent(1.0, 1.0, **tolerance)


def test_name_sets_the_root_of_the_path() -> None:
    with pytest.raises(ParityError, match=r"^fit\(\)\[0\]: "):
        assert_equivalent([1], [2], name="fit()")


@pytest.mark.parametrize("layout", [np.ascontiguousarray, np.asfortranarray, lambda a: a[::-1, ::-1]])
def test_a_tolerance_holds_in_any_memory_layout(layout: Any) -> None:
    expected = np.arange(1.0, 13.0).reshape(3, 4)
    actual = expected.copy()
    actual[1, 2] = np.nextafter(actual[1, 2], np.inf)
    assert_equivalent(layout(actual), layout(expected), rtol=1e-12)


def test_message_leads_with_a_nan_rather_than_an_earlier_rounding_difference() -> None:
    actual = [np.array([0.1 + 0.2, 1.0]), np.array([2.0, np.nan])]
    expected = [np.array([0.3, 1.0]), np.array([2.0, 5.0])]
    message = differs(actual, expected)
    assert message.startswith("result[1][1]: actual nan, expected 5.0"), message
    assert "NaN or infinite where the other is not" in message
    assert "first difference in walk order: result[0][0]" in message


def test_message_leads_with_a_type_or_shape_before_magnitude() -> None:
    assert differs({"a": 0.1 + 0.2, "b": 1}, {"a": 0.3, "b": 1.0}).startswith("result['b']: types differ")
    message = differs([np.array([0.1 + 0.2]), np.zeros(2)], [np.array([0.3]), np.zeros(3)])
    assert message.startswith("result[1]: shapes differ"), message


def test_message_leads_with_the_largest_relative_difference() -> None:
    message = differs({"fit": np.array([1.0 + 1e-15]), "score": 10.0}, {"fit": np.array([1.0]), "score": 20.0})
    assert message.startswith("result['score']: actual 10.0, expected 20.0"), message
    assert "first difference in walk order: result['fit'][0]" in message


class Point:
    """A user's class without __eq__."""

    def __init__(self, x: float, label: str) -> None:
        self.x = x
        self.label = label


class Slotted:
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def test_classes_without_eq_are_compared_by_their_attributes() -> None:
    assert_equivalent(Point(1.0, "a"), Point(1.0, "a"))
    assert_equivalent(Slotted(3), Slotted(3))
    assert differs(Point(1.0, "a"), Point(1.5, "a")).startswith("result.x: actual 1.0, expected 1.5")
    assert differs(Slotted(3), Slotted(4)).startswith("result.value: actual 3, expected 4")
    extra = Point(1.0, "a")
    extra.more = 1  # type: ignore[attr-defined]
    assert "attributes differ: only in actual ['more']" in differs(extra, Point(1.0, "a"))


def test_same_items_in_another_order_point_at_set_iteration_order() -> None:
    message = differs(["pear", "apple", "fig"], ["apple", "fig", "pear"])
    assert message.startswith("result: the same 3 items in a different order"), message
    assert "PYTHONHASHSEED" in message
    assert "sorted(" in message
    # Different items are not called a reordering.
    assert "different order" not in differs(["a", "b"], ["b", "c"])
