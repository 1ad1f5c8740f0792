"""Splitting: views not copies, no empty chunks, lazy iterators, clear errors."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conc_ml import SplitError, register_splitter
from conc_ml._split import chunk_bounds, plan_chunks


def _pieces(
    value: object, *, chunks: int | None = None, chunk_size: int | None = None, workers: int = 2
) -> list[object]:
    plan = plan_chunks([value], ["x"], chunks=chunks, chunk_size=chunk_size, workers=workers)
    return [chunk.values[0] for chunk in plan.chunks]


@pytest.mark.parametrize(("n_items", "n_chunks"), [(10, 3), (3, 3), (7, 1), (0, 1), (100, 7)])
def test_chunk_bounds_cover_everything_in_order_with_nearly_equal_sizes(n_items: int, n_chunks: int) -> None:
    bounds = chunk_bounds(n_items, n_chunks)
    assert len(bounds) == n_chunks
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n_items
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_numpy_chunks_are_views_of_the_input() -> None:
    data = np.arange(20.0).reshape(10, 2)
    pieces = _pieces(data, chunks=3)
    assert [p.shape[0] for p in pieces] == [4, 3, 3]  # type: ignore[attr-defined]
    assert all(np.shares_memory(p, data) for p in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces), data)  # type: ignore[arg-type]


def test_non_contiguous_view_is_split_along_its_first_axis() -> None:
    data = np.arange(40).reshape(10, 4)[::2, 1::2]
    pieces = _pieces(data, chunks=2)
    np.testing.assert_array_equal(np.concatenate(pieces), data)  # type: ignore[arg-type]


def test_chunks_never_exceed_items_and_are_never_empty() -> None:
    pieces = _pieces([1, 2, 3], chunks=10)
    assert pieces == [[1], [2], [3]]


def test_default_is_one_chunk_per_worker() -> None:
    assert len(_pieces(list(range(10)), workers=4)) == 4


def test_chunk_size_sets_items_per_chunk() -> None:
    assert _pieces(list(range(7)), chunk_size=3) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("value", [[], (), np.empty((0, 3)), range(0)])
def test_empty_input_gives_one_chunk_holding_it(value: object) -> None:
    plan = plan_chunks([value], ["x"], chunks=4, chunk_size=None, workers=2)
    chunks = list(plan.chunks)
    assert plan.n_chunks == 1
    assert len(chunks) == 1
    assert chunks[0].n_items == 0
    assert type(chunks[0].values[0]) is type(value)


def test_tuples_and_ranges_keep_their_type() -> None:
    assert _pieces((1, 2, 3, 4), chunks=2) == [(1, 2), (3, 4)]
    assert _pieces(range(5), chunks=2) == [range(0, 3), range(3, 5)]


def test_pandas_objects_are_cut_by_rows() -> None:
    frame = pd.DataFrame({"a": range(5), "b": list("vwxyz")}, index=list("ABCDE"))
    pieces = _pieces(frame, chunks=2)
    assert [list(p.index) for p in pieces] == [["A", "B", "C"], ["D", "E"]]  # type: ignore[attr-defined]
    series_pieces = _pieces(frame["a"], chunks=5)
    assert [len(p) for p in series_pieces] == [1] * 5  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_matrices_are_cut_by_rows(fmt: str) -> None:
    dense = np.arange(24).reshape(6, 4) % 3
    matrix = sp.random(6, 4, density=0.5, format=fmt, random_state=0) + sp.csr_matrix(dense)
    matrix = matrix.asformat(fmt)
    pieces = _pieces(matrix, chunks=4)
    assert [p.shape for p in pieces] == [(2, 4), (2, 4), (1, 4), (1, 4)]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(sp.vstack(pieces).toarray(), matrix.toarray())  # type: ignore[arg-type]


def test_several_arguments_are_cut_together() -> None:
    plan = plan_chunks([np.arange(6), list("abcdef")], ["x", "y"], chunks=3, chunk_size=None, workers=1)
    assert [(list(c.values[0]), c.values[1]) for c in plan.chunks] == [
        ([0, 1], ["a", "b"]),
        ([2, 3], ["c", "d"]),
        ([4, 5], ["e", "f"]),
    ]


def test_arguments_of_different_lengths_are_a_split_error() -> None:
    with pytest.raises(SplitError, match="same length, got x=3, y=2") as info:
        plan_chunks([[1, 2, 3], [1, 2]], ["x", "y"], chunks=2, chunk_size=None, workers=1)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", ["text", {"a": 1}, {1, 2}, 3.5, np.float64(2.0), np.array(3)])
def test_unsplittable_types_name_the_argument_and_the_way_out(value: object) -> None:
    with pytest.raises(SplitError, match="'x'"):
        plan_chunks([value], ["x"], chunks=2, chunk_size=None, workers=1)


class _CountingIterator(Iterator[int]):
    """An iterator that records how many items were read from it."""

    def __init__(self, n: int):
        self.n = n
        self.read = 0

    def __next__(self) -> int:
        if self.read >= self.n:
            raise StopIteration
        self.read += 1
        return self.read - 1


def test_chunk_size_reads_iterators_lazily() -> None:
    source = _CountingIterator(100)
    plan = plan_chunks([source], ["x"], chunks=None, chunk_size=10, workers=2)
    chunks = iter(plan.chunks)
    assert source.read == 0
    first = next(chunks)
    assert first.values[0] == list(range(10))
    assert source.read == 10
    assert plan.n_chunks is None
    assert sum(c.n_items for c in chunks) == 90


def test_chunks_on_an_iterator_reads_it_once() -> None:
    pieces = _pieces(iter(range(5)), chunks=2)
    assert pieces == [[0, 1, 2], [3, 4]]


def test_lazy_plan_of_mismatched_iterators_is_a_split_error() -> None:
    plan = plan_chunks([iter(range(5)), iter(range(4))], ["x", "y"], chunks=None, chunk_size=2, workers=1)
    with pytest.raises(SplitError, match="different lengths"):
        list(plan.chunks)


def test_empty_iterator_gives_one_empty_chunk() -> None:
    assert _pieces(iter([]), chunk_size=3) == [[]]


class Ledger:
    """A user type: rows of a ledger."""

    def __init__(self, rows: list[int]):
        self.rows = rows


def test_registered_types_are_split_and_subclasses_follow() -> None:
    register_splitter(
        Ledger,
        length=lambda ledger: len(ledger.rows),
        take=lambda ledger, a, b: Ledger(ledger.rows[a:b]),
        concat=lambda parts: Ledger([r for p in parts for r in p.rows]),
    )

    class SubLedger(Ledger):
        pass

    pieces = _pieces(SubLedger([1, 2, 3, 4, 5]), chunks=2)
    assert [p.rows for p in pieces] == [[1, 2, 3], [4, 5]]  # type: ignore[attr-defined]


def test_register_splitter_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="needs a type"):
        register_splitter("Ledger", length=len, take=lambda s, a, b: s)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="take must be callable"):
        register_splitter(Ledger, length=len, take=3)  # type: ignore[arg-type]


def test_pandas_objects_with_different_indexes_are_refused_not_paired_by_position() -> None:
    features = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[10, 11, 12])
    target = pd.Series([1, 0, 1], index=[12, 11, 10])
    message = r"'X' and 'y' are pandas objects with different indexes.*y.reindex\(X.index\)"
    with pytest.raises(SplitError, match=message):
        plan_chunks([features, target], ["X", "y"], chunks=2, chunk_size=None, workers=1)


def test_pandas_objects_with_the_same_index_and_arrays_beside_them_are_cut_together() -> None:
    features = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[10, 11, 12])
    target = pd.Series([1, 0, 1], index=[10, 11, 12])
    weights = np.arange(3)
    plan = plan_chunks([features, target, weights], ["X", "y", "w"], chunks=2, chunk_size=None, workers=1)
    assert [list(c.values[1].index) for c in plan.chunks] == [[10, 11], [12]]
