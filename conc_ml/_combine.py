"""Joining per-chunk results into the value a decorated call returns."""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Sequence
from typing import Any

from ._split import splitter_for

__all__ = ["combine_results"]


def combine_results(combine: Any, results: list[Any], sizes: Sequence[int]) -> Any:
    """Combine per-chunk ``results`` (in chunk order) as the ``combine`` option says.

    :param combine: ``"list"``, ``"concat"``, ``"sum"``, ``"mean"`` or a callable.
    :param results: one result per chunk, in chunk order.
    :param sizes: the number of items of each chunk (weights of ``"mean"``).
    :raises TypeError: if the results cannot be combined that way.
    """
    if callable(combine):
        return combine(results)
    if combine == "list":
        return results
    if combine == "concat":
        return _concat(results)
    if combine == "sum":
        # Left to right in chunk order, so that float sums do not depend on scheduling.
        return functools.reduce(_add, results)
    if combine == "mean":
        return _weighted_mean(results, sizes)
    raise ValueError(f"unknown combine {combine!r}")  # validated earlier; kept for safety


def _is_pandas_table(value: Any) -> bool:
    """A pandas ``Series`` or ``DataFrame`` (pandas is never imported to find out)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.Series | pd.DataFrame)


def _add(left: Any, right: Any) -> Any:
    """``left + right``, except that two pandas objects add as a map-reduce needs.

    pandas' ``+`` aligns on the labels and gives NaN for a label absent from one side: a
    group missing from one chunk would turn the whole group's sum into NaN. Here a label
    missing from one side counts as 0: both sides are reindexed on the union of the labels
    with ``fill_value=0`` before adding, so an integer column stays integer (which
    ``Series.add(other, fill_value=0)`` would not keep). Labels that repeat within one
    object have no such union; those keep pandas' own ``+``.
    """
    if not (_is_pandas_table(left) and _is_pandas_table(right)) or type(left) is not type(right):
        return left + right
    axes = ["index", "columns"] if left.ndim == 2 else ["index"]
    labels = {}
    for axis in axes:
        mine, theirs = getattr(left, axis), getattr(right, axis)
        if not (mine.is_unique and theirs.is_unique):
            return left + right
        labels[axis] = mine if mine.equals(theirs) else mine.union(theirs)
    return left.reindex(**labels, fill_value=0) + right.reindex(**labels, fill_value=0)


def _concat(results: list[Any]) -> Any:
    first = results[0]
    splitter = splitter_for(first)
    if splitter is None or splitter.concat is None:
        raise TypeError(
            f"combine='concat' cannot join results of type {type(first).__qualname__}; concat knows numpy "
            "arrays, lists, tuples, pandas objects and scipy.sparse matrices. Use combine='list' or a callable"
        )
    if len(results) == 1:
        return first
    kinds = {type(r) for r in results}
    if len(kinds) > 1:
        names = ", ".join(sorted(k.__qualname__ for k in kinds))
        raise TypeError(f"combine='concat' needs chunk results of one type, got {names}")
    return splitter.concat(results)


def _weighted_mean(results: list[Any], sizes: Sequence[int]) -> Any:
    """Mean of per-chunk means, weighted by chunk size: the mean over the whole input."""
    total = sum(sizes)
    if total == 0:
        return results[0]
    weighted = [r * (n / total) for r, n in zip(results, sizes, strict=True)]
    return functools.reduce(operator.add, weighted)
