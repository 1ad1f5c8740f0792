"""Comparing a parallel result with the sequential one, for the report.

The verdict comes from :func:`conc_ml.testing.assert_equivalent`; this module adds the
size of the largest numeric difference, which the report and the JSON show even when
the results agree within ``rtol``/``atol``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["check_parity", "max_difference"]


def check_parity(actual: Any, expected: Any, *, rtol: float, atol: float) -> None:
    """Raise if ``actual`` is not equivalent to ``expected``.

    :raises conc_ml.errors.ParityError: naming where the results differ and by how much.
    """
    from conc_ml.testing import assert_equivalent

    assert_equivalent(actual, expected, rtol=rtol, atol=atol)


def max_difference(actual: Any, expected: Any) -> float | None:
    """The largest absolute difference between matching numeric leaves of two results.

    Walks numbers, numpy arrays, sequences, mappings and dataclasses alike in shape.
    NaN in the same place in both counts as equal.

    :returns: ``0.0`` for equal non-numeric leaves, ``None`` if the shapes differ or a
        pair of leaves cannot be subtracted.
    """
    try:
        return _walk(actual, expected, depth=0)
    except (TypeError, ValueError, OverflowError):
        return None


_MAX_DEPTH = 50
#: children of two containers that differ in shape: a pair no subtraction can bridge
_MISMATCH: list[tuple[Any, Any]] = [(None, 1)]


def _walk(actual: Any, expected: Any, *, depth: int) -> float | None:
    import numpy as np

    if depth > _MAX_DEPTH:
        return None
    if isinstance(actual, np.ndarray) or isinstance(expected, np.ndarray):
        return _arrays(np.asarray(actual), np.asarray(expected))
    if isinstance(actual, numbers.Number) and isinstance(expected, numbers.Number):
        return _numbers(actual, expected)
    pairs = _children(actual, expected)
    if pairs is None:
        return _leaf(actual, expected)
    largest = 0.0
    for a, b in pairs:
        value = _walk(a, b, depth=depth + 1)
        if value is None:
            return None
        largest = max(largest, value)
    return largest


def _leaf(actual: Any, expected: Any) -> float | None:
    try:
        return 0.0 if bool(actual == expected) else None
    except Exception:
        return None


def _arrays(a: Any, b: Any) -> float | None:
    import numpy as np

    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    if a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
        a_c, b_c = a.astype(np.complex128), b.astype(np.complex128)
        # Equal infinities and NaN facing NaN count as no difference.
        same = (a_c == b_c) | (np.isnan(a_c) & np.isnan(b_c))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(a_c - b_c))
        return float(np.max(diff))
    return 0.0 if bool(np.array_equal(a, b)) else None


def _numbers(a: numbers.Number, b: numbers.Number) -> float | None:
    if not (isinstance(a, numbers.Complex) and isinstance(b, numbers.Complex)):
        return None
    a_c, b_c = complex(a), complex(b)
    if a_c == b_c or (_is_nan(a_c) and _is_nan(b_c)):
        return 0.0
    return abs(a_c - b_c)


def _children(actual: Any, expected: Any) -> list[tuple[Any, Any]] | None:
    """Matching parts of two containers, :data:`_MISMATCH` if they cannot match, ``None`` for leaves."""
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return [(actual[k], expected[k]) for k in actual] if set(actual) == set(expected) else _MISMATCH
    if dataclasses.is_dataclass(actual) and type(actual) is type(expected) and not isinstance(actual, type):
        return [(getattr(actual, f.name), getattr(expected, f.name)) for f in dataclasses.fields(actual)]
    strings = (str, bytes)
    if (
        isinstance(actual, Sequence)
        and isinstance(expected, Sequence)
        and not isinstance(actual, strings)
        and not isinstance(expected, strings)
    ):
        return list(zip(actual, expected, strict=True)) if len(actual) == len(expected) else _MISMATCH
    if hasattr(actual, "to_numpy") and hasattr(expected, "to_numpy"):
        # pandas objects: compare their values; labels are assert_equivalent's business
        return [(actual.to_numpy(), expected.to_numpy())]
    return None


def _is_nan(value: complex) -> bool:
    return math.isnan(value.real) or math.isnan(value.imag)
