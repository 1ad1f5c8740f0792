"""Cutting arguments into chunks, and the registry of types that can be cut.

A type is splittable when conc-ml knows three things about it: its length, how to take
the items ``[start, stop)`` (a view where the type has views), and how to join pieces
back together. numpy arrays, lists, tuples and ranges are built in; pandas objects and
scipy.sparse matrices are registered the first time one is seen (so importing conc-ml
never imports pandas); users add their own with :func:`register_splitter`.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from .errors import SplitError

__all__ = [
    "Chunk",
    "ChunkPlan",
    "Splitter",
    "chunk_bounds",
    "in_index_order",
    "plan_chunks",
    "register_splitter",
    "splitter_for",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Splitter:
    """How conc-ml cuts and joins one type.

    :ivar length: number of items.
    :ivar take: the items ``[start, stop)``, of the same type.
    :ivar concat: joins pieces in order; used by ``combine="concat"``.
    :ivar prepare: run once on the whole value before cutting (e.g. COO -> CSR).
    """

    length: Callable[[Any], int]
    take: Callable[[Any, int, int], Any]
    concat: Callable[[list[Any]], Any] | None = None
    prepare: Callable[[Any], Any] | None = None


_registry: dict[type, Splitter] = {}


def register_splitter(
    cls: type[T],
    *,
    length: Callable[[T], int],
    take: Callable[[T, int, int], T],
    concat: Callable[[list[T]], T] | None = None,
    prepare: Callable[[T], T] | None = None,
) -> None:
    """Teach conc-ml to split (and, with ``concat``, combine) instances of ``cls``.

    Subclasses of ``cls`` are covered too, unless they have a registration of their own.

    :param cls: the type.
    :param length: returns the number of items of an instance.
    :param take: returns the items ``[start, stop)`` of an instance.
    :param concat: joins a list of pieces, in order, into one instance.
    :param prepare: converts an instance once before it is cut (optional).
    :raises TypeError: if ``cls`` is not a type or a hook is not callable.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_splitter needs a type, got {cls!r}")
    for name, hook in (("length", length), ("take", take), ("concat", concat), ("prepare", prepare)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable, got {hook!r}")
    _registry[cls] = Splitter(length=length, take=take, concat=concat, prepare=prepare)


def _concat_arrays(parts: list[np.ndarray]) -> np.ndarray:
    if any(p.ndim == 0 for p in parts):
        raise TypeError("cannot concat 0-d arrays; use combine='list', 'sum', 'mean' or a callable")
    return np.concatenate(parts, axis=0)


def _take_array(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    return arr[start:stop]


def _length_array(arr: np.ndarray) -> int:
    if arr.ndim == 0:
        raise SplitError("cannot split a 0-d numpy array; pass an array with at least one dimension")
    return int(arr.shape[0])


def _concat_masked_arrays(parts: list[Any]) -> Any:
    # np.concatenate returns a MaskedArray whose mask is all False: masked values would
    # come back as valid data.
    if any(p.ndim == 0 for p in parts):
        raise TypeError("cannot concat 0-d arrays; use combine='list', 'sum', 'mean' or a callable")
    return np.ma.concatenate(parts, axis=0)  # type: ignore[no-untyped-call]


register_splitter(np.ndarray, length=_length_array, take=_take_array, concat=_concat_arrays)
register_splitter(
    np.ma.MaskedArray,
    length=_length_array,
    take=lambda arr, start, stop: arr[start:stop],
    concat=_concat_masked_arrays,
)
register_splitter(
    list, length=len, take=lambda s, a, b: s[a:b], concat=lambda ps: list(itertools.chain.from_iterable(ps))
)
register_splitter(
    tuple, length=len, take=lambda s, a, b: s[a:b], concat=lambda ps: tuple(itertools.chain.from_iterable(ps))
)
register_splitter(range, length=len, take=lambda s, a, b: s[a:b])

_lazy_registered: set[str] = set()


def _len(obj: Any) -> int:
    return len(obj)


def _register_pandas() -> None:
    import pandas as pd

    def take(obj: Any, start: int, stop: int) -> Any:
        return obj.iloc[start:stop]

    def concat(parts: list[Any]) -> Any:
        return pd.concat(_with_united_categories(parts))

    for cls in (pd.DataFrame, pd.Series, pd.Index):
        if cls is pd.Index:
            register_splitter(cls, length=_len, take=lambda o, a, b: o[a:b], concat=lambda ps: ps[0].append(ps[1:]))
        else:
            register_splitter(cls, length=_len, take=take, concat=concat)


def _with_united_categories(parts: list[Any]) -> list[Any]:
    """pandas pieces whose categorical columns share the union of their categories.

    A chunk that makes a column categorical from its own rows (``astype("category")``)
    gets the categories it saw, and ``pandas.concat`` of categoricals whose categories
    differ falls back to ``object``: the combined column would not be categorical, unlike
    the whole input's. Unordered categories are united (sorted when each piece's were, as
    categories taken from data are); ordered ones are left as pandas has them, since their
    order cannot be merged.
    """
    import pandas as pd

    first = parts[0]
    if isinstance(first, pd.Series):
        columns: list[Any] = [None] if isinstance(first.dtype, pd.CategoricalDtype) else []
    elif isinstance(first, pd.DataFrame) and first.columns.is_unique:
        columns = [name for name, dtype in first.dtypes.items() if isinstance(dtype, pd.CategoricalDtype)]
    else:
        columns = []
    for column in columns:
        try:
            dtypes = [(part if column is None else part[column]).dtype for part in parts]
        except KeyError:  # a piece without the column: pandas' own concat decides
            continue
        if not all(isinstance(d, pd.CategoricalDtype) and not d.ordered for d in dtypes) or all(
            d == dtypes[0] for d in dtypes
        ):
            continue
        united = dtypes[0].categories
        for dtype in dtypes[1:]:
            united = united.append(dtype.categories[~dtype.categories.isin(united)])
        if all(d.categories.is_monotonic_increasing for d in dtypes):
            united = united.sort_values()
        shared = pd.CategoricalDtype(united)
        parts = [part.astype(shared) if column is None else part.astype({column: shared}) for part in parts]
    return parts


def _register_scipy_sparse() -> None:
    import scipy.sparse as sp

    def prepare(m: Any) -> Any:
        # COO, DIA and BSR cannot be row-sliced; convert once rather than per chunk.
        return m if m.format in ("csr", "csc", "lil") else m.tocsr()

    def concat(parts: list[Any]) -> Any:
        return sp.vstack(parts, format=parts[0].format)

    for cls in (sp.spmatrix, sp.sparray):
        register_splitter(
            cls, length=lambda m: int(m.shape[0]), take=lambda m, a, b: m[a:b], concat=concat, prepare=prepare
        )


_LAZY = {"pandas": _register_pandas, "scipy.sparse": _register_scipy_sparse}


def splitter_for(obj: object) -> Splitter | None:
    """The splitter registered for ``obj``'s type (or a base class), or ``None``."""
    for cls in type(obj).__mro__:
        found = _registry.get(cls)
        if found is not None:
            return found
    # Register third-party types only once their library is imported by the user.
    module = type(obj).__module__.split(".")[0]
    for name, register in _LAZY.items():
        if name not in _lazy_registered and name.split(".")[0] == module and name in sys.modules:
            _lazy_registered.add(name)
            register()
            return splitter_for(obj)
    return None


def chunk_bounds(n_items: int, n_chunks: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``n_chunks`` nearly equal chunks (as ``numpy.array_split``)."""
    if n_chunks < 1:
        raise ValueError("n_chunks must be >= 1")
    q, r = divmod(n_items, n_chunks)
    bounds = []
    start = 0
    for i in range(n_chunks):
        stop = start + q + (1 if i < r else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of the split arguments.

    :ivar index: position of the chunk; results are combined in this order.
    :ivar values: the piece of each split argument, in the order of the split names.
    :ivar n_items: number of items in the piece.
    :ivar start: position of the piece's first item in the whole input.
    """

    index: int
    values: tuple[Any, ...]
    n_items: int
    start: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The chunks of one call.

    :ivar chunks: the chunks, in order; lazy when an iterator is cut by ``chunk_size``.
    :ivar n_chunks: how many chunks, or ``None`` while the input is a lazy iterator.
    :ivar n_items: how many items in all, or ``None`` while unknown.
    """

    chunks: Iterator[Chunk]
    n_chunks: int | None
    n_items: int | None


def _describe(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def is_lazy_iterable(obj: object) -> bool:
    """Whether ``obj`` is an iterator or an iterable without a length (read once, lazily)."""
    return isinstance(obj, Iterator) or (
        isinstance(obj, Iterable)
        and not isinstance(obj, Sequence | str | bytes | dict | set | frozenset)
        and not hasattr(obj, "__len__")
    )


def in_index_order(pairs: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """``(index, value)`` pairs that arrive in any order, yielded in index order.

    Each pair is yielded as soon as every lower index has been; an index that never
    comes holds back the rest, which are yielded in order at the end.
    """
    waiting: dict[int, Any] = {}
    expected = 0
    for index, value in pairs:
        waiting[index] = value
        while expected in waiting:
            yield expected, waiting.pop(expected)
            expected += 1
    for index in sorted(waiting):
        yield index, waiting.pop(index)


def _check_pandas_labels(values: Sequence[object], names: Sequence[str]) -> None:
    """Refuse pandas objects cut together whose row labels differ.

    Chunks are cut by position, while pandas matches rows by label: ``X[y > 0]`` or
    ``X["a"] + y`` on two chunks whose labels differ would align (and fill with NaN, or
    drop rows) where the undecorated call on the whole input would not. Aligning them
    here instead would silently reorder or drop rows of the user's input.
    """
    pd = sys.modules.get("pandas")
    if pd is None or len(values) < 2:
        return
    labelled = [(n, v) for n, v in zip(names, values, strict=True) if isinstance(v, pd.Series | pd.DataFrame)]
    for name, value in labelled[1:]:
        first_name, first = labelled[0]
        # Different lengths are reported by the length check, with both lengths.
        if len(value) == len(first) and not value.index.equals(first.index):
            raise SplitError(
                f"split arguments {first_name!r} and {name!r} are pandas objects with different indexes; "
                "conc-ml cuts them by position, but pandas matches rows by label, so each chunk would pair "
                "rows that the undecorated call would not. Give them the same index first, e.g. "
                f"{name} = {name}.reindex({first_name}.index), or reset both with .reset_index(drop=True)"
            )


def plan_chunks(
    values: Sequence[object],
    names: Sequence[str],
    *,
    chunks: int | None,
    chunk_size: int | None,
    workers: int,
) -> ChunkPlan:
    """Cut the split arguments ``values`` (named ``names``) into chunks.

    The number of chunks is ``chunks``, else ``ceil(n / chunk_size)``, else ``workers``;
    never more than the number of items, never an empty chunk. Empty input gives one
    chunk holding the empty input, so that the function is called once on it.

    :raises SplitError: if a value cannot be split or the values differ in length.
    """
    _check_pandas_labels(values, names)
    splitters: list[Splitter | None] = []
    prepared: list[object] = []
    lazy = False
    for name, value in zip(names, values, strict=True):
        splitter = splitter_for(value)
        if splitter is None:
            if is_lazy_iterable(value):
                lazy = True
                splitters.append(None)
                prepared.append(value)
                continue
            raise SplitError(
                f"cannot split argument {name!r} of type {_describe(value)}; splittable types are numpy arrays, "
                "lists, tuples, ranges, iterators, pandas objects and scipy.sparse matrices. Pass a list, or "
                "teach conc-ml the type with conc_ml.register_splitter()"
            )
        splitters.append(splitter)
        prepared.append(splitter.prepare(value) if splitter.prepare else value)

    if lazy:
        if chunk_size is not None:
            return _plan_lazy(prepared, names, chunk_size)
        # Counting chunks needs the length: materialise iterators once, as lists.
        prepared = [list(v) if s is None else v for v, s in zip(prepared, splitters, strict=True)]  # type: ignore[call-overload]
        splitters = [s if s is not None else splitter_for(v) for v, s in zip(prepared, splitters, strict=True)]

    lengths = []
    for name, splitter, value in zip(names, splitters, prepared, strict=True):
        assert splitter is not None
        try:
            lengths.append(splitter.length(value))
        except SplitError as error:
            raise SplitError(f"cannot split argument {name!r}: {error}") from None
    if len(set(lengths)) > 1:
        detail = ", ".join(f"{n}={n_}" for n, n_ in zip(names, lengths, strict=True))
        raise SplitError(f"split arguments must have the same length, got {detail}")
    n_items = lengths[0]
    if chunk_size is not None and n_items > 0:
        # chunk_size is a promise about every chunk but the last.
        bounds = [(start, min(start + chunk_size, n_items)) for start in range(0, n_items, chunk_size)]
    else:
        wanted = chunks if chunks is not None else workers
        bounds = chunk_bounds(n_items, max(1, min(wanted, n_items)))
    n_chunks = len(bounds)

    def generate() -> Iterator[Chunk]:
        for index, (start, stop) in enumerate(bounds):
            pieces = tuple(s.take(v, start, stop) for s, v in zip(splitters, prepared, strict=True))  # type: ignore[union-attr]
            yield Chunk(index=index, values=pieces, n_items=stop - start, start=start)

    return ChunkPlan(chunks=generate(), n_chunks=n_chunks, n_items=n_items)


def _plan_lazy(values: list[object], names: Sequence[str], chunk_size: int) -> ChunkPlan:
    # Sized values cut alongside an iterator are walked item by item too; every piece
    # of a lazy plan is a list.
    sources: list[Iterator[Any]] = [iter(value) for value in values]  # type: ignore[call-overload]

    def generate() -> Iterator[Chunk]:
        rows = zip(*sources, strict=True)
        index = start = 0
        try:
            while True:
                batch = list(itertools.islice(rows, chunk_size))
                if not batch:
                    break
                pieces = tuple(list(col) for col in zip(*batch, strict=True))
                yield Chunk(index=index, values=pieces, n_items=len(batch), start=start)
                index += 1
                start += len(batch)
        except ValueError as exc:
            if "zip()" not in str(exc):
                raise
            raise SplitError(f"split arguments {', '.join(map(repr, names))} have different lengths") from None
        if index == 0:
            yield Chunk(index=0, values=tuple([] for _ in names), n_items=0)

    return ChunkPlan(chunks=generate(), n_chunks=None, n_items=None)
