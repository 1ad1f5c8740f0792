"""Properties of ``assert_equivalent``: reflexive, symmetric, and blind to no single ULP."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conc_ml import ParityError
from conc_ml.testing import assert_equivalent


@dataclasses.dataclass
class Box:
    value: Any


shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4)
contiguous_float_arrays = hnp.arrays(st.sampled_from([np.float64, np.float32, np.float16]), shapes)
#: C order, Fortran order and reversed views: flat positions must map to the right element
float_arrays = (
    contiguous_float_arrays
    | contiguous_float_arrays.map(np.asfortranarray)
    | contiguous_float_arrays.map(lambda a: a[::-1])
)
other_arrays = hnp.arrays(st.sampled_from([np.int64, np.uint8, np.bool_, np.complex128]), shapes)
leaves = (
    st.floats()
    | st.integers()
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
    | float_arrays
    | other_arrays
    | st.builds(np.float32, st.floats(width=32))
)
structures = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
        | st.builds(Box, children)
    ),
    max_leaves=10,
)
tolerances = st.sampled_from([{}, {"rtol": 1e-9}, {"atol": 1e-6}, {"rtol": 0.5, "atol": 1.0}])


def _bump(value: Any) -> Any:
    """The next representable value above ``value`` (a NaN becomes 0, an infinity finite)."""
    if isinstance(value, float) and not isinstance(value, np.floating):
        if math.isnan(value):
            return 0.0
        return math.nextafter(value, -math.inf if value == math.inf else math.inf)
    kind = type(value)
    if np.isnan(value):
        return kind(0)
    with np.errstate(over="ignore"):  # the largest finite value bumps to infinity
        return np.nextafter(value, kind(-np.inf) if value == np.inf else kind(np.inf))


def perturb(obj: Any, target: int) -> tuple[Any, str | None]:
    """A copy of ``obj`` with its ``target``-th floating-point number moved by one ULP, and its path."""
    remaining = [target]
    found: list[str] = []

    def walk(node: Any, path: str) -> Any:  # noqa: PLR0911 (one return per kind of node)
        if isinstance(node, float | np.floating):
            hit = remaining[0] == 0
            remaining[0] -= 1
            if hit:
                found.append(path)
                return type(node)(_bump(node))
            return node
        if isinstance(node, np.ndarray) and node.dtype.kind == "f":
            if 0 <= remaining[0] < node.size:
                index = np.unravel_index(remaining[0], node.shape)
                changed = node.copy()
                changed[index] = _bump(changed[index])
                found.append(path + "[" + ", ".join(str(int(i)) for i in index) + "]")
                remaining[0] = -1
                return changed
            remaining[0] -= node.size
            return node
        if isinstance(node, list):
            return [walk(item, f"{path}[{i}]") for i, item in enumerate(node)]
        if isinstance(node, tuple):
            return tuple(walk(item, f"{path}[{i}]") for i, item in enumerate(node))
        if isinstance(node, dict):
            return {key: walk(item, f"{path}[{key!r}]") for key, item in node.items()}
        if isinstance(node, Box):
            return Box(walk(node.value, f"{path}.value"))
        return node

    changed = walk(obj, "result")
    return changed, (found[0] if found else None)


def count_floats(node: Any) -> int:
    """How many floating-point numbers :func:`perturb` can reach in ``node``."""
    if isinstance(node, float | np.floating):
        return 1
    if isinstance(node, np.ndarray):
        return node.size if node.dtype.kind == "f" else 0
    if isinstance(node, list | tuple):
        return sum(count_floats(item) for item in node)
    if isinstance(node, dict):
        return sum(count_floats(item) for item in node.values())
    if isinstance(node, Box):
        return count_floats(node.value)
    return 0


def outcome(actual: Any, expected: Any, **tolerance: float) -> str | None:
    try:
        assert_equivalent(actual, expected, **tolerance)
    except ParityError as error:
        return str(error)
    return None


#: a busy machine (2 cores, shared) must not turn slow examples into a failure
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures, tolerances)
def test_reflexive_on_copies_and_on_itself(value: Any, tolerance: dict[str, float]) -> None:
    assert_equivalent(value, value, **tolerance)
    assert_equivalent(value, copy.deepcopy(value), **tolerance)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures, st.integers(0, 50), st.booleans(), tolerances)
def test_symmetric(value: Any, target: int, change: bool, tolerance: dict[str, float]) -> None:
    other = perturb(value, target)[0] if change else copy.deepcopy(value)
    forward = outcome(value, other, **tolerance)
    backward = outcome(other, value, **tolerance)
    assert (forward is None) == (backward is None)
    if forward is not None and backward is not None:
        # Same place, values swapped.
        assert forward.split(":")[0] == backward.split(":")[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures, st.data())
def test_one_ulp_anywhere_is_found_and_named(value: Any, data: st.DataObject) -> None:
    n_floats = count_floats(value)
    if n_floats == 0:
        value = [value, 1.5]
        n_floats = 1
    target = data.draw(st.integers(0, n_floats - 1), label="target")
    changed, path = perturb(value, target)
    assert path is not None
    with pytest.raises(ParityError) as forward:
        assert_equivalent(changed, value)
    with pytest.raises(ParityError) as backward:
        assert_equivalent(value, changed)
    assert str(forward.value).startswith(f"{path}: ")
    assert str(backward.value).startswith(f"{path}: ")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(st.sampled_from([np.float64, np.float32]), shapes, elements={"allow_nan": False}).map(np.asfortranarray),
    st.data(),
)
def test_a_tolerance_accepts_one_ulp_where_exact_comparison_does_not(values: np.ndarray, data: st.DataObject) -> None:
    if values.size == 0 or not np.isfinite(values).all():
        return
    target = data.draw(st.integers(0, values.size - 1))
    changed = np.asfortranarray(perturb(values, target)[0])
    if np.isinf(changed).any():
        return
    with pytest.raises(ParityError):
        assert_equivalent(changed, values)
    eps = float(np.finfo(values.dtype).eps)
    tiny = float(np.finfo(values.dtype).smallest_subnormal)
    assert_equivalent(changed, values, rtol=eps, atol=tiny)
