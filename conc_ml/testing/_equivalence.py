"""Deep comparison of results: the judge of "parallel == sequential".

A false "equal" is the worst bug conc-ml could have, so the comparison is strict by
default: types must match, arrays must match in shape and dtype, and without a tolerance
floating-point values must match bit for bit (up to NaN payloads). One walk over both
results finds the first difference and the most significant one (a type, a shape, a NaN
before any rounding difference), and the largest difference between numbers, which the
pytest plugin reports even when results agree within tolerance. A difference is reported
with its path, both values, and the largest absolute and relative difference among the
differing elements.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import reprlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .. import _validate
from ..errors import ParityError

__all__ = ["Comparison", "Difference", "assert_equivalent", "check_tolerances", "compare_results", "find_difference"]

#: differences recorded before a walk stops looking for a more significant one
_MAX_DIFFERENCES = 1000
#: sequences up to this length are checked for "same items, another order"
_SEARCH_ORDER_UP_TO = 100_000
#: item types for which "same items, another order" is checked
_PLAIN = frozenset({str, bytes, int, float, bool, type(None), tuple, frozenset})

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = 8
_repr.maxtuple = 8
_repr.maxdict = 6
_repr.maxset = 8


#: kinds of difference, most significant first: a message leads with the lowest
TYPE, STRUCTURE, DTYPE, MISMATCH, MAGNITUDE = range(5)


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    """Where two results differ, and how.

    :ivar path: an expression that reaches the differing element (``result[2].coef_[0, 3]``).
    :ivar detail: what differs, with both values and the largest differences.
    :ivar significance: what kind of difference, most significant first: :data:`TYPE`,
        :data:`STRUCTURE` (shape, length, keys, order), :data:`DTYPE`, :data:`MISMATCH`
        (values that are not close to each other in any sense: NaN against a number,
        unequal strings), :data:`MAGNITUDE` (numbers apart by ``magnitude``).
    :ivar magnitude: for :data:`MAGNITUDE`, the largest relative difference (absolute where
        the expected value is 0); ranks differences of the same kind.
    """

    path: str
    detail: str
    significance: int = MAGNITUDE
    magnitude: float = 0.0

    def outranks(self, other: Difference) -> bool:
        """Whether this difference is more significant than ``other``."""
        return (self.significance, -self.magnitude) < (other.significance, -other.magnitude)

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def check_tolerances(rtol: object, atol: object) -> tuple[float, float]:
    """Validate ``rtol`` and ``atol``: finite, non-negative real numbers.

    :raises TypeError: if one is not a real number (or is a bool).
    :raises ValueError: if one is negative, NaN or infinite.
    """
    rtol, atol = (
        _validate.number(
            value, name, minimum=0, finite=True, rule="a finite number >= 0", type_rule="a non-negative real number"
        )
        for name, value in (("rtol", rtol), ("atol", atol))
    )
    return rtol, atol


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _show(value: object) -> str:
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        # str() of a numpy scalar is the shortest text that round-trips in its own precision.
        return str(value)
    return _repr.repr(value)


def _format(number: float) -> str:
    return f"{number:.6g}"


def _index_suffix(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


def _iloc_suffix(index: tuple[int, ...]) -> str:
    return f".iloc[{index[0]}]"


def _defines_eq(cls: type) -> bool:
    return cls.__eq__ is not object.__eq__  # type: ignore[comparison-overlap]


def _loaded(module: str) -> Any:
    """The module if the user's program imported it already, else ``None``.

    A result can only be a pandas object if pandas is imported, so nothing is imported here.
    """
    return sys.modules.get(module)


class _Comparer:
    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol = rtol
        self.atol = atol
        self.exact = rtol == 0 and atol == 0
        # (id(actual), id(expected)) pairs being compared: a cycle met again is taken as equal.
        self._active: set[tuple[int, int]] = set()
        #: the first difference met in walk order, and the most significant one
        self.first: Difference | None = None
        self.most_significant: Difference | None = None
        self.found = 0
        #: the largest absolute difference between numbers compared (within tolerance or
        #: not); ``None`` once a difference that is not between two numbers is found
        self.largest: float | None = 0.0

    def record(self, found: Difference | None) -> None:
        """Keep ``found`` if it is the first difference or the most significant so far."""
        if found is None:
            return
        self.found += 1
        if self.first is None:
            self.first = found
        if self.most_significant is None or found.outranks(self.most_significant):
            self.most_significant = found
        if found.significance != MAGNITUDE:
            self.largest = None

    def note_numbers(self, largest: float) -> None:
        """Count ``largest`` (an absolute difference between numbers) into :attr:`largest`."""
        if self.largest is not None:
            self.largest = max(self.largest, largest)

    @property
    def saw_enough(self) -> bool:
        """Whether the walk may stop: past the first difference, and past many of them."""
        return self.found >= _MAX_DIFFERENCES

    def each(self, pairs: Iterable[tuple[Any, Any, str]]) -> Difference | None:
        """Compare every pair (every difference is seen); the first difference, or ``None``."""
        first = None
        for actual, expected, path in pairs:
            found = self.compare(actual, expected, path)
            if first is None:
                first = found
            if self.saw_enough:
                break
        return first

    @property
    def tolerance_text(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"

    # -- dispatch -------------------------------------------------------------------

    def compare(self, actual: Any, expected: Any, path: str) -> Difference | None:
        found = self._compare(actual, expected, path)
        self.record(found)
        return found

    def _compare(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if type(actual) is not type(expected) and not self._equivalent_types(actual, expected):
            return Difference(
                path,
                f"types differ: actual is {_type_name(actual)} ({_show(actual)}), "
                f"expected is {_type_name(expected)} ({_show(expected)})",
                TYPE,
            )
        key = (id(actual), id(expected))
        if key in self._active:
            return None
        self._active.add(key)
        try:
            return self._compare_same_type(actual, expected, path)
        finally:
            self._active.discard(key)

    def _equivalent_types(self, actual: Any, expected: Any) -> bool:
        # pandas gives a RangeIndex or an Index of int64 for the same labels depending on
        # how a frame was built (concat of chunks vs. the whole): compare them by value.
        pd = _loaded("pandas")
        return (
            pd is not None
            and isinstance(actual, pd.Index)
            and isinstance(expected, pd.Index)
            and {type(actual), type(expected)} <= {pd.RangeIndex, pd.Index}
        )

    def _compare_same_type(self, actual: Any, expected: Any, path: str) -> Difference | None:  # noqa: PLR0911 (a dispatch)
        # The most specific kinds first: scalars and arrays, objects of the libraries
        # conc_ml.testing knows, containers; anything else by its attributes or by ==.
        special = self._compare_scalar_or_array(actual, expected, path)
        if special is NotImplemented:
            special = self._compare_library_object(actual, expected, path)
        if special is not NotImplemented:
            assert special is None or isinstance(special, Difference)
            return special
        if dataclasses.is_dataclass(actual) and not isinstance(actual, type):
            return self._compare_dataclasses(actual, expected, path)
        if isinstance(actual, list | tuple):
            return self._compare_sequences(actual, expected, path)
        if isinstance(actual, Mapping):
            return self._compare_mappings(actual, expected, path)
        if isinstance(actual, set | frozenset):
            return self._compare_sets(actual, expected, path)
        if not _defines_eq(type(actual)):
            state_a, state_e = _attributes(actual), _attributes(expected)
            if state_a is not None and state_e is not None:
                return self._compare_attributes(state_a, state_e, path)
        return self._compare_with_eq(actual, expected, path, known=False)

    def _compare_scalar_or_array(self, actual: Any, expected: Any, path: str) -> object:  # noqa: PLR0911 (a dispatch)
        """Strings, numbers and numpy arrays; ``NotImplemented`` for anything else."""
        if actual is None or isinstance(actual, str | bytes | bytearray | range):
            return self._compare_with_eq(actual, expected, path, known=True)
        if isinstance(actual, bool):
            if actual == expected:
                return None
            return Difference(path, f"actual {actual!r}, expected {expected!r}", MISMATCH)
        if isinstance(actual, int):
            return self._compare_ints(actual, expected, path)
        if isinstance(actual, float | complex | np.generic):
            return self._compare_arrays(np.asarray(actual), np.asarray(expected), path, _index_suffix)
        if isinstance(actual, np.ndarray):
            return self._compare_ndarray(actual, expected, path)
        return NotImplemented

    def _compare_library_object(self, actual: Any, expected: Any, path: str) -> object:  # noqa: PLR0911 (a dispatch)
        """Objects of optional libraries and of numpy.random; ``NotImplemented`` if none applies."""
        if isinstance(actual, np.random.Generator):
            return self.compare(actual.bit_generator.state, expected.bit_generator.state, f"{path}.bit_generator.state")
        if isinstance(actual, np.random.BitGenerator):
            return self.compare(actual.state, expected.state, f"{path}.state")
        if isinstance(actual, np.random.RandomState):
            return self.compare(actual.get_state(legacy=False), expected.get_state(legacy=False), f"{path}.get_state()")
        if isinstance(actual, np.random.SeedSequence):
            return self.each(
                (getattr(actual, name), getattr(expected, name), f"{path}.{name}")
                for name in ("entropy", "spawn_key", "pool_size", "n_children_spawned")
            )
        pd = _loaded("pandas")
        if pd is not None:
            if isinstance(actual, pd.DataFrame):
                return self._compare_frames(actual, expected, path)
            if isinstance(actual, pd.Series):
                return self._compare_series(actual, expected, path)
            if isinstance(actual, pd.Index):
                return self._compare_index(actual, expected, path)
            if isinstance(actual, pd.api.extensions.ExtensionArray):
                return self._compare_pandas_values(actual, expected, path, _index_suffix)
        sparse = _loaded("scipy.sparse")
        if sparse is not None and sparse.issparse(actual):
            return self._compare_sparse(actual, expected, path)
        sklearn_base = _loaded("sklearn.base")
        if sklearn_base is not None and isinstance(actual, sklearn_base.BaseEstimator):
            return self._compare_estimators(actual, expected, path)
        if type(actual).__module__.startswith("sklearn.") and not _defines_eq(type(actual)):
            # Fitted estimators hold compiled helpers without __eq__ (a tree's ``tree_``, a
            # loss object): compare what pickling them would keep.
            return self._compare_reduced(actual, expected, path)
        return NotImplemented

    # -- Python objects -------------------------------------------------------------

    def _compare_with_eq(self, actual: Any, expected: Any, path: str, *, known: bool) -> Difference | None:
        if actual is expected:
            return None
        how = "" if known else f" (compared with == since conc_ml.testing does not know {_type_name(actual)})"
        try:
            equal = bool(actual == expected)
        except Exception as error:
            return Difference(
                path,
                f"cannot compare {_type_name(actual)} objects: == failed with {type(error).__name__}: {error}; "
                "compare a plain representation of the result instead",
                MISMATCH,
            )
        if equal:
            return None
        if not known and not _defines_eq(type(actual)):
            how += (
                f"; {_type_name(actual)} defines no __eq__, so == only tells whether both are the same object. "
                "Define __eq__ or return plain data (a dataclass, a dict, arrays)"
            )
        return Difference(path, f"actual {_show(actual)}, expected {_show(expected)}{how}", MISMATCH)

    def _compare_ints(self, actual: int, expected: int, path: str) -> Difference | None:
        if actual == expected:
            return None
        # Python ints are exact: compare in Python, never through a lossy float.
        difference = abs(actual - expected)
        self.note_numbers(float(difference))
        if not self.exact and difference <= max(self.atol, self.rtol * max(abs(actual), abs(expected))):
            return None
        relative = difference / abs(expected) if expected else math.inf
        return Difference(
            path,
            f"actual {actual!r}, expected {expected!r}; absolute difference {_format(difference)}, "
            f"relative difference {_format(relative)} ({self.tolerance_text})",
            MAGNITUDE,
            _magnitude(float(difference), float(relative)),
        )

    def _compare_sequences(
        self, actual: list[Any] | tuple[Any, ...], expected: list[Any] | tuple[Any, ...], path: str
    ) -> Difference | None:
        common = min(len(actual), len(expected))
        if len(actual) == len(expected) and _all_floats(actual) and _all_floats(expected):
            # Python floats are float64: compare long lists of them as one array, not one by one.
            return self._compare_arrays(
                np.array(actual, np.float64), np.array(expected, np.float64), path, _index_suffix
            )
        found = self.each((actual[i], expected[i], f"{path}[{i}]") for i in range(common))
        if found is not None:
            return self._same_items_reordered(actual, expected, path) or found
        if len(actual) != len(expected):
            longer, which = (actual, "actual") if len(actual) > len(expected) else (expected, "expected")
            return Difference(
                path,
                f"lengths differ: actual has {len(actual)} items, expected {len(expected)}; "
                f"first extra item in {which} at [{common}]: {_show(longer[common])}",
                STRUCTURE,
            )
        return None

    def _same_items_reordered(
        self, actual: list[Any] | tuple[Any, ...], expected: list[Any] | tuple[Any, ...], path: str
    ) -> Difference | None:
        """A difference saying so, if the two hold the same items in another order."""
        if len(actual) != len(expected) or len(actual) > _SEARCH_ORDER_UP_TO:
            return None
        # Only plain hashable values: their == is exact, so equal counts mean the same items.
        if not all(type(item) in _PLAIN for item in (*actual, *expected)):
            return None
        try:
            if collections.Counter(actual) != collections.Counter(expected):
                return None
        except TypeError:  # a tuple holding something unhashable
            return None
        at = next(i for i in range(len(actual)) if actual[i] != expected[i])
        found = Difference(
            path,
            f"the same {len(actual)} items in a different order (first at [{at}]: actual {_show(actual[at])}, "
            f"expected {_show(expected[at])}). If they come from iterating a set or a dict keyed by str, "
            "bytes or objects hashed by id, the order depends on the process (PYTHONHASHSEED differs between "
            "the caller and process workers): return sorted(...) or a set instead",
            STRUCTURE,
        )
        self.record(found)
        return found

    def _compare_mappings(self, actual: Mapping[Any, Any], expected: Mapping[Any, Any], path: str) -> Difference | None:
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing from actual: {_show(missing)}")
            if extra:
                parts.append(f"only in actual: {_show(extra)}")
            return Difference(path, f"keys differ: {'; '.join(parts)}", STRUCTURE)
        if isinstance(actual, OrderedDict) and list(actual) != list(expected):
            return Difference(
                path,
                f"key order differs: actual {_show(list(actual))}, expected {_show(list(expected))}",
                STRUCTURE,
            )
        # 1 and 1.0 (and True) are the same dict key: compare the keys' types too.
        stored = {key: key for key in actual}
        for key in expected:
            if type(stored[key]) is not type(key):
                return Difference(
                    f"{path}[{key!r}]",
                    f"key types differ: actual key {stored[key]!r} is {_type_name(stored[key])}, "
                    f"expected key {key!r} is {_type_name(key)}",
                    TYPE,
                )
        return self.each((actual[key], expected[key], f"{path}[{key!r}]") for key in expected)

    def _compare_sets(self, actual: Any, expected: Any, path: str) -> Difference | None:
        # Members are matched by hash and ==: tolerances do not apply inside sets.
        if actual == expected:
            stored = {member: member for member in actual}
            for member in expected:
                if type(stored[member]) is not type(member):
                    return Difference(
                        path,
                        f"member types differ: actual has {stored[member]!r} ({_type_name(stored[member])}), "
                        f"expected {member!r} ({_type_name(member)})",
                        TYPE,
                    )
            return None
        parts = []
        if expected - actual:
            parts.append(f"missing from actual: {_show(sorted(expected - actual, key=repr))}")
        if actual - expected:
            parts.append(f"only in actual: {_show(sorted(actual - expected, key=repr))}")
        return Difference(path, f"set members differ (matched with ==): {'; '.join(parts)}", STRUCTURE)

    def _compare_dataclasses(self, actual: Any, expected: Any, path: str) -> Difference | None:
        return self.each(
            (getattr(actual, field.name), getattr(expected, field.name), f"{path}.{field.name}")
            for field in dataclasses.fields(actual)
            if field.compare
        )

    def _compare_attributes(self, actual: dict[str, Any], expected: dict[str, Any], path: str) -> Difference | None:
        # A class without __eq__ would compare by identity, which a result that crossed a
        # process boundary never keeps: compare what its instances hold instead.
        found = self._compare_names(set(actual), set(expected), path, "attributes")
        if found is not None:
            return found
        return self.each((actual[name], expected[name], f"{path}.{name}") for name in sorted(expected))

    def _compare_reduced(self, actual: Any, expected: Any, path: str) -> Difference | None:
        try:
            reduced_actual = actual.__reduce_ex__(4)
            reduced_expected = expected.__reduce_ex__(4)
        except Exception:
            return self._compare_with_eq(actual, expected, path, known=False)
        return self.each(
            (
                reduced_actual[position] if len(reduced_actual) > position else None,
                reduced_expected[position] if len(reduced_expected) > position else None,
                f"{path}.__reduce__()[{position}]",
            )
            for position in (1, 2)
        )

    # -- numpy ----------------------------------------------------------------------

    def _compare_ndarray(self, actual: np.ndarray, expected: np.ndarray, path: str) -> Difference | None:
        if isinstance(actual, np.ma.MaskedArray):
            mask_a, mask_e = np.ma.getmaskarray(actual), np.ma.getmaskarray(expected)
            found = self._compare_arrays(mask_a, mask_e, f"{path}.mask", _index_suffix)
            if found is not None:
                return found
            # Values under the mask are not part of the result: compare them as equal.
            data_a = np.ma.getdata(actual).copy()
            data_e = np.ma.getdata(expected)
            if data_a.shape == data_e.shape:
                data_a[mask_a] = data_e[mask_a]
            return self._compare_arrays(data_a, np.asarray(data_e), path, _index_suffix)
        return self._compare_arrays(actual, expected, path, _index_suffix)

    def _compare_arrays(  # noqa: PLR0911 (a dispatch on dtype)
        self,
        actual: np.ndarray,
        expected: np.ndarray,
        path: str,
        suffix: Callable[[tuple[int, ...]], str],
        unit: str = "elements",
    ) -> Difference | None:
        if actual.shape != expected.shape:
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}", STRUCTURE)
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}", DTYPE)
        dtype = actual.dtype
        if dtype.names is not None:
            first = None
            for name in dtype.names:
                found = self._compare_arrays(actual[name], expected[name], f"{path}[{name!r}]", suffix)
                self.record(found)
                first = first or found
            return first
        if dtype.kind == "O":
            pairs = ((actual[index], expected[index], path + suffix(index)) for index in np.ndindex(actual.shape))
            return self.each(pairs)
        if dtype.kind in "fc":
            return self._compare_inexact(actual, expected, path, suffix, unit)
        if dtype.kind in "iu":
            return self._compare_integer_arrays(actual, expected, path, suffix, unit)
        if dtype.kind in "mM":
            mismatch = (actual != expected) & ~(np.isnat(actual) & np.isnat(expected))
        else:
            mismatch = actual != expected
        return self._report(actual, expected, np.asarray(mismatch), path, suffix, numeric=False, unit=unit)

    def _compare_inexact(
        self,
        actual: np.ndarray,
        expected: np.ndarray,
        path: str,
        suffix: Callable[[tuple[int, ...]], str],
        unit: str,
    ) -> Difference | None:
        if actual.dtype.kind == "c":
            real = self._float_mismatch(actual.real, expected.real)
            mismatch = real | self._float_mismatch(actual.imag, expected.imag)
        else:
            mismatch = self._float_mismatch(actual, expected)
        self._note_array_difference(actual, expected, mismatch)
        return self._report(actual, expected, mismatch, path, suffix, numeric=True, unit=unit)

    def _note_array_difference(self, actual: np.ndarray, expected: np.ndarray, mismatch: np.ndarray) -> None:
        """Count the largest absolute difference of two numeric arrays, within tolerance or not."""
        if self.largest is None or (self.exact and not mismatch.any()):
            # Exact and equal: every difference is 0 (NaN facing NaN counts as equal).
            return
        differ = np.flatnonzero(np.asarray(actual != expected))
        if differ.size == 0:
            return
        wide = np.result_type(actual.dtype, np.float64)
        a = np.ravel(actual)[differ].astype(wide)
        e = np.ravel(expected)[differ].astype(wide)
        with np.errstate(all="ignore"):
            absolute = np.abs(a - e).astype(float)
        absolute = absolute[~(np.isnan(a) & np.isnan(e))]
        if absolute.size:
            # NaN facing a number is as far apart as numbers get.
            self.note_numbers(float(np.max(np.where(np.isnan(absolute), np.inf, absolute))))

    def _float_mismatch(self, actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
        if self.exact:
            if _same_bits(actual, expected):
                return np.zeros(actual.shape, dtype=bool)
            # Bit-for-bit up to NaN payloads: 0.0 and -0.0 differ, as 1/x would.
            same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
            return np.asarray(~(same | (np.isnan(actual) & np.isnan(expected))))
        # Results under test are mostly equal: apply the tolerance to the rest only.
        # C order, so that the flat positions below index a view of it, never a copy.
        mismatch = np.ascontiguousarray(actual != expected)
        candidates = np.flatnonzero(mismatch)
        if candidates.size == 0:
            return mismatch
        wide = np.result_type(actual.dtype, np.float64)
        a = actual.reshape(-1)[candidates].astype(wide)
        e = expected.reshape(-1)[candidates].astype(wide)
        with np.errstate(all="ignore"):
            bound = np.maximum(self.atol, self.rtol * np.maximum(np.abs(a), np.abs(e)))
            # inf - x is inf and rtol * inf is inf: without the finiteness test every
            # infinity would be "close" to everything.
            close = (np.abs(a - e) <= bound) & np.isfinite(a) & np.isfinite(e)
        mismatch.reshape(-1)[candidates] = ~(close | (np.isnan(a) & np.isnan(e)))
        return mismatch

    def _compare_integer_arrays(
        self,
        actual: np.ndarray,
        expected: np.ndarray,
        path: str,
        suffix: Callable[[tuple[int, ...]], str],
        unit: str,
    ) -> Difference | None:
        mismatch = np.ascontiguousarray(actual != expected)
        if not self.exact and mismatch.any():
            # Decide each differing pair with Python ints: a float64 detour would round
            # 2**60 + 1 to 2**60 and call them equal.
            for flat in np.flatnonzero(mismatch):
                index = np.unravel_index(flat, actual.shape)
                a, e = int(actual[index]), int(expected[index])
                if abs(a - e) <= max(self.atol, self.rtol * max(abs(a), abs(e))):
                    mismatch[index] = False
        self._note_array_difference(actual, expected, np.asarray(actual != expected))
        return self._report(actual, expected, mismatch, path, suffix, numeric=True, unit=unit)

    def _report(
        self,
        actual: np.ndarray,
        expected: np.ndarray,
        mismatch: np.ndarray,
        path: str,
        suffix: Callable[[tuple[int, ...]], str],
        *,
        numeric: bool,
        unit: str = "elements",
    ) -> Difference | None:
        flat = np.flatnonzero(mismatch)
        if flat.size == 0:
            return None
        significance, magnitude = MISMATCH, 0.0
        lead = flat[0]
        notes = []
        if actual.ndim:
            notes.append(f"{flat.size} of {actual.size} {unit} differ")
        if numeric:
            text, magnitude, not_close = self._largest_differences(actual, expected, flat, suffix)
            notes.append(text)
            if not_close.any():
                # NaN or infinity facing a number outweighs any rounding: lead with it.
                lead = flat[int(np.argmax(not_close))]
                notes.insert(0, f"{int(not_close.sum())} of them NaN or infinite where the other is not")
            else:
                significance = MAGNITUDE
        first = tuple(int(i) for i in np.unravel_index(lead, actual.shape))
        value_a, value_e = actual[first], expected[first]
        if numeric and actual.dtype.kind == "f" and value_a == value_e and self.exact:
            notes.append("signed zeros differ; exact comparison tells 0.0 from -0.0, a tolerance does not")
        notes.append(self.tolerance_text)
        detail = f"actual {_show(value_a)}, expected {_show(value_e)} ({'; '.join(notes)})"
        return Difference(path + suffix(first), detail, significance, magnitude)

    def _largest_differences(
        self, actual: np.ndarray, expected: np.ndarray, flat: np.ndarray, suffix: Callable[[tuple[int, ...]], str]
    ) -> tuple[str, float, np.ndarray]:
        """The text naming the largest differences, the magnitude, and which pairs are not close at all."""
        a = np.ravel(actual)[flat]
        e = np.ravel(expected)[flat]
        if a.dtype.kind in "iu":
            # Exact, however large the integers.
            absolute = np.array([abs(int(x) - int(y)) for x, y in zip(a, e, strict=True)], dtype=object).astype(float)
            scale = np.abs(e.astype(float))
        else:
            with np.errstate(all="ignore"):
                wide = np.result_type(a.dtype, np.float64)
                absolute = np.abs(a.astype(wide) - e.astype(wide)).astype(float)
                scale = np.abs(e.astype(wide)).astype(float)
        with np.errstate(all="ignore"):
            relative = np.where(absolute == 0, 0.0, absolute / scale)
        finite = np.isfinite(absolute)
        not_close = ~finite
        if not finite.any():
            return "no finite difference (NaN or infinity where the other has a number)", math.inf, not_close
        magnitude = float(np.max(np.where(finite, np.where(scale == 0, absolute, relative), 0.0)))
        texts = []
        for label, values in (("absolute", absolute), ("relative", relative)):
            candidates = np.where(finite, values, -np.inf)
            at = int(np.argmax(candidates))
            where = ""
            if actual.ndim:
                where = " at " + suffix(tuple(int(i) for i in np.unravel_index(flat[at], actual.shape)))
            texts.append(f"largest {label} difference {_format(float(values[at]))}{where}")
        return ", ".join(texts), magnitude, not_close

    # -- pandas ---------------------------------------------------------------------

    def _compare_pandas_values(
        self, actual: Any, expected: Any, path: str, suffix: Callable[[tuple[int, ...]], str]
    ) -> Difference | None:
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}", DTYPE)
        if isinstance(actual.dtype, np.dtype):
            return self._compare_arrays(actual.to_numpy(), expected.to_numpy(), path, suffix)
        # Extension dtypes (nullable ints, strings, categoricals): element by element, where
        # pd.NA matches pd.NA by identity.
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}", STRUCTURE)
        values_a = np.asarray(actual.to_numpy(dtype=object))
        values_e = np.asarray(expected.to_numpy(dtype=object))
        return self._compare_arrays(values_a, values_e, path, suffix)

    def _compare_index(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}", STRUCTURE)
        found = self.compare(list(actual.names), list(expected.names), f"{path}.names")
        if found is not None:
            return found
        return self._compare_pandas_values(actual, expected, path, _index_suffix)

    def _compare_series(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}", STRUCTURE)
        return (
            self.compare(actual.name, expected.name, f"{path}.name")
            or self.compare(actual.index, expected.index, f"{path}.index")
            or self._compare_pandas_values(actual, expected, path, _iloc_suffix)
        )

    def _compare_frames(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if actual.shape != expected.shape:
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}", STRUCTURE)
        found = self.compare(actual.columns, expected.columns, f"{path}.columns") or self.compare(
            actual.index, expected.index, f"{path}.index"
        )
        if found is not None:
            return found
        unique = actual.columns.is_unique
        first = None
        for position, label in enumerate(actual.columns):
            column = f"{path}[{label!r}]" if unique else f"{path}.iloc[:, {position}]"
            found = self._compare_pandas_values(
                actual.iloc[:, position], expected.iloc[:, position], column, _iloc_suffix
            )
            self.record(found)
            first = first or found
            if self.saw_enough:
                break
        return first

    # -- scipy.sparse ---------------------------------------------------------------

    def _compare_sparse(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if actual.shape != expected.shape:
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}", STRUCTURE)
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}", DTYPE)
        # Compared by value: duplicates summed, stored zeros dropped (so a stored -0.0
        # equals an absent entry), then the union of stored positions compared as arrays.
        keys_a, values_a = _sparse_entries(actual)
        keys_e, values_e = _sparse_entries(expected)
        keys = np.union1d(keys_a, keys_e)
        dense_a = np.zeros(keys.size, dtype=actual.dtype)
        dense_e = np.zeros(keys.size, dtype=expected.dtype)
        dense_a[np.searchsorted(keys, keys_a)] = values_a
        dense_e[np.searchsorted(keys, keys_e)] = values_e
        n_columns = int(actual.shape[1])

        def suffix(index: tuple[int, ...]) -> str:
            row, column = divmod(int(keys[index[0]]), n_columns)
            return f"[{row}, {column}]"

        return self._compare_arrays(dense_a, dense_e, path, suffix, "stored entries")

    # -- scikit-learn ---------------------------------------------------------------

    def _compare_estimators(self, actual: Any, expected: Any, path: str) -> Difference | None:
        params_a = actual.get_params(deep=False)
        params_e = expected.get_params(deep=False)
        found = self._compare_names(set(params_a), set(params_e), path, "parameters")
        if found is not None:
            return found
        first = self.each((params_a[name], params_e[name], f"{path}.{name}") for name in sorted(params_e))
        fitted_a = _fitted_attributes(actual)
        fitted_e = _fitted_attributes(expected)
        found = self._compare_names(set(fitted_a), set(fitted_e), path, "fitted attributes")
        if found is not None:
            self.record(found)
            return first or found
        found = self.each((fitted_a[name], fitted_e[name], f"{path}.{name}") for name in sorted(fitted_e))
        return first or found

    def _compare_names(self, actual: set[str], expected: set[str], path: str, what: str) -> Difference | None:
        if actual == expected:
            return None
        return Difference(
            path,
            f"{what} differ: only in actual {sorted(actual - expected)}, only in expected {sorted(expected - actual)}",
            STRUCTURE,
        )


def _magnitude(absolute: float, relative: float) -> float:
    """How far apart two numbers are, for ranking: relative, or absolute where that is infinite."""
    return relative if math.isfinite(relative) else absolute


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Whether two float arrays of one dtype hold identical bits (so identical values)."""
    size = actual.dtype.itemsize
    if actual.dtype.kind != "f" or size not in (2, 4, 8):
        return False  # long double carries padding bytes that need not match
    unsigned = np.dtype(f"u{size}")
    try:
        return bool(np.array_equal(actual.view(unsigned), expected.view(unsigned)))
    except ValueError:
        return False


def _all_floats(items: list[Any] | tuple[Any, ...]) -> bool:
    return bool(items) and all(type(item) is float for item in items)


def _sparse_entries(matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    coo = matrix.tocsr(copy=True)
    coo.sum_duplicates()
    coo.eliminate_zeros()
    coo = coo.tocoo()
    keys = coo.row.astype(np.int64) * np.int64(matrix.shape[1]) + coo.col.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], np.asarray(coo.data)[order]


def _attributes(obj: object) -> dict[str, Any] | None:
    """The attributes of an instance of a user's class (``__dict__`` and ``__slots__``).

    ``None`` for built-in and C types, and for objects holding no attribute at all: there
    is nothing to compare them by but ``==``.
    """
    cls = type(obj)
    if cls.__module__ == "builtins":
        return None
    state = dict(getattr(obj, "__dict__", None) or {})
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                state[name] = getattr(obj, name)
    return state or None


def _fitted_attributes(estimator: Any) -> dict[str, Any]:
    # scikit-learn's own convention (check_is_fitted): public attributes ending in "_".
    return {k: v for k, v in vars(estimator).items() if k.endswith("_") and not k.startswith("_")}


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """What one walk over two results found.

    :ivar first: the first difference in walk order, or ``None`` if the results are equivalent.
    :ivar most_significant: the difference a message should lead with (see
        :attr:`Difference.significance`): a NaN, a type or a shape before any rounding.
    :ivar largest_difference: the largest absolute difference between numbers compared,
        within tolerance or not (``0.0`` when all are equal); ``None`` when the results
        also differ in something other than numbers (types, shapes, keys, strings).
    """

    first: Difference | None
    most_significant: Difference | None
    largest_difference: float | None

    @property
    def equivalent(self) -> bool:
        """Whether no difference was found."""
        return self.first is None

    def message(self) -> str:
        """The most significant difference, then the first one if that is another."""
        if self.most_significant is None:
            return "equivalent"
        text = str(self.most_significant)
        if self.first is not None and self.first is not self.most_significant:
            text += f" (the first difference in walk order: {self.first})"
        return text


def compare_results(
    actual: Any, expected: Any, *, rtol: float = 0.0, atol: float = 0.0, name: str = "result"
) -> Comparison:
    """Walk ``actual`` and ``expected`` once, with the rules of :func:`assert_equivalent`.

    :raises TypeError, ValueError: if ``rtol`` or ``atol`` is not a finite number >= 0.
    """
    rtol, atol = check_tolerances(rtol, atol)
    comparer = _Comparer(rtol, atol)
    comparer.compare(actual, expected, name)
    return Comparison(comparer.first, comparer.most_significant, comparer.largest)


def find_difference(
    actual: Any, expected: Any, *, rtol: float = 0.0, atol: float = 0.0, name: str = "result"
) -> Difference | None:
    """The most significant difference between ``actual`` and ``expected``, or ``None`` if equivalent.

    Same rules as :func:`assert_equivalent`, without raising.

    :raises TypeError, ValueError: if ``rtol`` or ``atol`` is not a finite number >= 0.
    """
    return compare_results(actual, expected, rtol=rtol, atol=atol, name=name).most_significant


def assert_equivalent(actual: Any, expected: Any, *, rtol: float = 0, atol: float = 0, name: str = "result") -> None:
    """Assert that two results are the same, deeply: the check behind every parity claim.

    What is compared:

    - types always: ``[1]`` is not ``(1,)``, ``np.float64(1)`` is not ``1.0`` (a pandas
      ``RangeIndex`` and an ``Index`` of the same integers are the one exception);
    - numpy arrays and numpy scalars: shape, dtype, then values; NaN equals NaN in the same
      place (also inside complex numbers), NaT equals NaT; structured arrays field by field,
      object arrays element by element, masked arrays by mask and unmasked values;
    - Python ``int`` exactly (never through a float), ``float`` and ``complex`` as numpy does;
    - lists and tuples item by item, mappings by keys and values (``OrderedDict`` also by
      order), sets by members (with ``==``; tolerances do not apply inside sets), dataclasses
      field by field (fields declared with ``compare=False`` are skipped);
    - pandas ``DataFrame``, ``Series``, ``Index`` and extension arrays: shape, labels, names,
      dtypes and values (when pandas is installed);
    - scipy.sparse matrices and arrays: format, shape, dtype and values (stored zeros and
      duplicate entries do not matter);
    - fitted scikit-learn estimators: class, ``get_params(deep=False)``, every fitted
      attribute ending in ``_``, recursively (a forest's ``estimators_``, a tree's ``tree_``);
    - ``numpy.random`` generators and seed sequences by their state;
    - instances of classes that define no ``__eq__`` by their attributes (``__dict__`` and
      ``__slots__``), since identity never survives a trip to a worker process;
    - anything else with ``==``; when that says "different", the message says so.

    Tolerance: with ``rtol == atol == 0`` (the default) floating-point values must be
    identical bit for bit, up to NaN payloads: **0.0 and -0.0 differ**, since a flipped
    sign is a real divergence (``1 / x`` tells them apart). With a tolerance, two numbers
    ``a`` and ``b`` are equal when ``|a - b| <= max(atol, rtol * max(|a|, |b|))`` (the rule
    of :func:`math.isclose`, symmetric in ``a`` and ``b``); then 0.0 equals -0.0 and
    infinities equal only infinities of the same sign. Integers are held to the same rule,
    computed exactly. Tolerances apply to numbers only, never to shapes, types or labels.

    :param actual: the result under test (the parallel one).
    :param expected: the reference result (the sequential one).
    :param rtol: relative tolerance, >= 0.
    :param atol: absolute tolerance, >= 0.
    :param name: how the message names the root of the result.
    :raises ParityError: if they differ; the message leads with the most significant
        difference (a type, then a shape, length or key, then a dtype, then NaN or a
        non-numeric value, then the largest relative difference), naming its path
        (``result[2].coef_[0, 3]``), both values, and for numbers the count of differing
        elements and the largest absolute and relative difference; then the first
        difference in walk order if that is another. Two sequences with the same items in
        another order are said to be so (a set's order differs between processes).
    :raises TypeError, ValueError: if ``rtol`` or ``atol`` is not a finite number >= 0.
    """
    comparison = compare_results(actual, expected, rtol=rtol, atol=atol, name=name)
    if not comparison.equivalent:
        raise ParityError(comparison.message())
