"""Comparing a parallel result with the sequential one, for the report.

A thin use of :func:`conc_ml.testing`'s comparer: one walk over both results gives the
verdict (with ``rtol``/``atol``) and the largest numeric difference, which the report
and the JSON show even when the results agree within tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conc_ml.errors import ParityError

__all__ = ["ParityCheck", "check_parity", "compare", "max_difference"]


@dataclasses.dataclass(frozen=True, slots=True)
class ParityCheck:
    """The outcome of comparing one round's results.

    :ivar max_difference: the largest absolute difference between matching numbers
        (``0.0`` if all are equal), ``None`` if the results differ in anything else.
    :ivar error: the :class:`~conc_ml.errors.ParityError` to raise, or ``None`` if equivalent.
    """

    max_difference: float | None
    error: ParityError | None


def compare(actual: Any, expected: Any, *, rtol: float, atol: float) -> ParityCheck:
    """Compare ``actual`` (parallel) with ``expected`` (sequential), walking them once."""
    from conc_ml.errors import ParityError
    from conc_ml.testing._equivalence import compare_results

    comparison = compare_results(actual, expected, rtol=rtol, atol=atol)
    error = None if comparison.equivalent else ParityError(comparison.message())
    return ParityCheck(comparison.largest_difference, error)


def check_parity(actual: Any, expected: Any, *, rtol: float, atol: float) -> None:
    """Raise if ``actual`` is not equivalent to ``expected``.

    :raises conc_ml.errors.ParityError: naming where the results differ and by how much.
    """
    error = compare(actual, expected, rtol=rtol, atol=atol).error
    if error is not None:
        raise error


def max_difference(actual: Any, expected: Any) -> float | None:
    """The largest absolute difference between matching numbers of two results.

    NaN facing NaN counts as equal.

    :returns: ``0.0`` if every number is equal, ``None`` if the results differ in anything
        but numbers (types, shapes, keys, strings).
    """
    return compare(actual, expected, rtol=0.0, atol=0.0).max_difference
