"""Deep comparison of results: the judge of "parallel == sequential".

A false "equal" is the worst bug conc-ml could have, so the comparison is strict by
default: types must match, arrays must match in shape and dtype, and without a tolerance
floating-point values must match bit for bit (up to NaN payloads). A difference is
reported with the path to the first differing element, both values, and the largest
absolute and relative difference among the differing elements.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import reprlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import ParityError

__all__ = ["Difference", "assert_equivalent", "check_tolerances", "find_difference"]

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = 8
_repr.maxtuple = 8
_repr.maxdict = 6
_repr.maxset = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    """Where two results first differ, and how.

    :ivar path: an expression that reaches the differing element (``result[2].coef_[0, 3]``).
    :ivar detail: what differs, with both values and the largest differences.
    """

    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def check_tolerances(rtol: object, atol: object) -> tuple[float, float]:
    """Validate ``rtol`` and ``atol``: finite, non-negative real numbers.

    :raises TypeError: if one is not a real number (or is a bool).
    :raises ValueError: if one is negative, NaN or infinite.
    """
    out = []
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a non-negative real number, not {type(value).__name__} {value!r}")
        number = float(value)
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        out.append(number)
    return out[0], out[1]


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

    @property
    def tolerance_text(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"

    # -- dispatch -------------------------------------------------------------------

    def compare(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if type(actual) is not type(expected) and not self._equivalent_types(actual, expected):
            return Difference(
                path,
                f"types differ: actual is {_type_name(actual)} ({_show(actual)}), "
                f"expected is {_type_name(expected)} ({_show(expected)})",
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
        if actual is None or isinstance(actual, str | bytes | bytearray | range):
            return self._compare_with_eq(actual, expected, path, known=True)
        if isinstance(actual, bool):
            return None if actual == expected else Difference(path, f"actual {actual!r}, expected {expected!r}")
        if isinstance(actual, int):
            return self._compare_ints(actual, expected, path)
        if isinstance(actual, float | complex | np.generic):
            return self._compare_arrays(np.asarray(actual), np.asarray(expected), path, _index_suffix)
        if isinstance(actual, np.ndarray):
            return self._compare_ndarray(actual, expected, path)
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
        return self._compare_with_eq(actual, expected, path, known=False)

    def _compare_library_object(self, actual: Any, expected: Any, path: str) -> object:  # noqa: PLR0911 (a dispatch)
        """Objects of optional libraries and of numpy.random; ``NotImplemented`` if none applies."""
        if isinstance(actual, np.random.Generator):
            return self.compare(actual.bit_generator.state, expected.bit_generator.state, f"{path}.bit_generator.state")
        if isinstance(actual, np.random.BitGenerator):
            return self.compare(actual.state, expected.state, f"{path}.state")
        if isinstance(actual, np.random.RandomState):
            return self.compare(actual.get_state(legacy=False), expected.get_state(legacy=False), f"{path}.get_state()")
        if isinstance(actual, np.random.SeedSequence):
            for name in ("entropy", "spawn_key", "pool_size", "n_children_spawned"):
                found = self.compare(getattr(actual, name), getattr(expected, name), f"{path}.{name}")
                if found is not None:
                    return found
            return None
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
            )
        if equal:
            return None
        if not known and not _defines_eq(type(actual)):
            how += (
                f"; {_type_name(actual)} defines no __eq__, so == only tells whether both are the same object. "
                "Define __eq__ or return plain data (a dataclass, a dict, arrays)"
            )
        return Difference(path, f"actual {_show(actual)}, expected {_show(expected)}{how}")

    def _compare_ints(self, actual: int, expected: int, path: str) -> Difference | None:
        if actual == expected:
            return None
        # Python ints are exact: compare in Python, never through a lossy float.
        difference = abs(actual - expected)
        if not self.exact and difference <= max(self.atol, self.rtol * max(abs(actual), abs(expected))):
            return None
        relative = difference / abs(expected) if expected else math.inf
        return Difference(
            path,
            f"actual {actual!r}, expected {expected!r}; absolute difference {_format(difference)}, "
            f"relative difference {_format(relative)} ({self.tolerance_text})",
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
        for i in range(common):
            found = self.compare(actual[i], expected[i], f"{path}[{i}]")
            if found is not None:
                return found
        if len(actual) != len(expected):
            longer, which = (actual, "actual") if len(actual) > len(expected) else (expected, "expected")
            return Difference(
                path,
                f"lengths differ: actual has {len(actual)} items, expected {len(expected)}; "
                f"first extra item in {which} at [{common}]: {_show(longer[common])}",
            )
        return None

    def _compare_mappings(self, actual: Mapping[Any, Any], expected: Mapping[Any, Any], path: str) -> Difference | None:
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing from actual: {_show(missing)}")
            if extra:
                parts.append(f"only in actual: {_show(extra)}")
            return Difference(path, f"keys differ: {'; '.join(parts)}")
        if isinstance(actual, OrderedDict) and list(actual) != list(expected):
            return Difference(
                path, f"key order differs: actual {_show(list(actual))}, expected {_show(list(expected))}"
            )
        # 1 and 1.0 (and True) are the same dict key: compare the keys' types too.
        stored = {key: key for key in actual}
        for key in expected:
            if type(stored[key]) is not type(key):
                return Difference(
                    f"{path}[{key!r}]",
                    f"key types differ: actual key {stored[key]!r} is {_type_name(stored[key])}, "
                    f"expected key {key!r} is {_type_name(key)}",
                )
            found = self.compare(actual[key], expected[key], f"{path}[{key!r}]")
            if found is not None:
                return found
        return None

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
                    )
            return None
        parts = []
        if expected - actual:
            parts.append(f"missing from actual: {_show(sorted(expected - actual, key=repr))}")
        if actual - expected:
            parts.append(f"only in actual: {_show(sorted(actual - expected, key=repr))}")
        return Difference(path, f"set members differ (matched with ==): {'; '.join(parts)}")

    def _compare_dataclasses(self, actual: Any, expected: Any, path: str) -> Difference | None:
        for field in dataclasses.fields(actual):
            if not field.compare:
                continue
            found = self.compare(getattr(actual, field.name), getattr(expected, field.name), f"{path}.{field.name}")
            if found is not None:
                return found
        return None

    def _compare_reduced(self, actual: Any, expected: Any, path: str) -> Difference | None:
        try:
            reduced_actual = actual.__reduce_ex__(4)
            reduced_expected = expected.__reduce_ex__(4)
        except Exception:
            return self._compare_with_eq(actual, expected, path, known=False)
        for position in (1, 2):
            found = self.compare(
                reduced_actual[position] if len(reduced_actual) > position else None,
                reduced_expected[position] if len(reduced_expected) > position else None,
                f"{path}.__reduce__()[{position}]",
            )
            if found is not None:
                return found
        return None

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
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}")
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}")
        dtype = actual.dtype
        if dtype.names is not None:
            for name in dtype.names:
                found = self._compare_arrays(actual[name], expected[name], f"{path}[{name!r}]", suffix)
                if found is not None:
                    return found
            return None
        if dtype.kind == "O":
            for index in np.ndindex(actual.shape):
                found = self.compare(actual[index], expected[index], path + suffix(index))
                if found is not None:
                    return found
            return None
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
        return self._report(actual, expected, mismatch, path, suffix, numeric=True, unit=unit)

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
        first = tuple(int(i) for i in np.unravel_index(flat[0], actual.shape))
        value_a, value_e = actual[first], expected[first]
        detail = f"actual {_show(value_a)}, expected {_show(value_e)}"
        notes = []
        if actual.ndim:
            notes.append(f"{flat.size} of {actual.size} {unit} differ")
        if numeric:
            notes.append(self._largest_differences(actual, expected, flat, suffix))
            if actual.dtype.kind == "f" and value_a == value_e and self.exact:
                notes.append("signed zeros differ; exact comparison tells 0.0 from -0.0, a tolerance does not")
        notes.append(self.tolerance_text)
        return Difference(path + suffix(first), f"{detail} ({'; '.join(notes)})")

    def _largest_differences(
        self, actual: np.ndarray, expected: np.ndarray, flat: np.ndarray, suffix: Callable[[tuple[int, ...]], str]
    ) -> str:
        a = actual.reshape(-1)[flat]
        e = expected.reshape(-1)[flat]
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
        if not finite.any():
            return "no finite difference (NaN or infinity where the other has a number)"
        texts = []
        for label, values in (("absolute", absolute), ("relative", relative)):
            candidates = np.where(finite, values, -np.inf)
            at = int(np.argmax(candidates))
            where = ""
            if actual.ndim:
                where = " at " + suffix(tuple(int(i) for i in np.unravel_index(flat[at], actual.shape)))
            texts.append(f"largest {label} difference {_format(float(values[at]))}{where}")
        return ", ".join(texts)

    # -- pandas ---------------------------------------------------------------------

    def _compare_pandas_values(
        self, actual: Any, expected: Any, path: str, suffix: Callable[[tuple[int, ...]], str]
    ) -> Difference | None:
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}")
        if isinstance(actual.dtype, np.dtype):
            return self._compare_arrays(actual.to_numpy(), expected.to_numpy(), path, suffix)
        # Extension dtypes (nullable ints, strings, categoricals): element by element, where
        # pd.NA matches pd.NA by identity.
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}")
        values_a = np.asarray(actual.to_numpy(dtype=object))
        values_e = np.asarray(expected.to_numpy(dtype=object))
        return self._compare_arrays(values_a, values_e, path, suffix)

    def _compare_index(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}")
        found = self.compare(list(actual.names), list(expected.names), f"{path}.names")
        if found is not None:
            return found
        return self._compare_pandas_values(actual, expected, path, _index_suffix)

    def _compare_series(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if len(actual) != len(expected):
            return Difference(path, f"lengths differ: actual {len(actual)}, expected {len(expected)}")
        return (
            self.compare(actual.name, expected.name, f"{path}.name")
            or self.compare(actual.index, expected.index, f"{path}.index")
            or self._compare_pandas_values(actual, expected, path, _iloc_suffix)
        )

    def _compare_frames(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if actual.shape != expected.shape:
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}")
        found = self.compare(actual.columns, expected.columns, f"{path}.columns") or self.compare(
            actual.index, expected.index, f"{path}.index"
        )
        if found is not None:
            return found
        unique = actual.columns.is_unique
        for position, label in enumerate(actual.columns):
            column = f"{path}[{label!r}]" if unique else f"{path}.iloc[:, {position}]"
            found = self._compare_pandas_values(
                actual.iloc[:, position], expected.iloc[:, position], column, _iloc_suffix
            )
            if found is not None:
                return found
        return None

    # -- scipy.sparse ---------------------------------------------------------------

    def _compare_sparse(self, actual: Any, expected: Any, path: str) -> Difference | None:
        if actual.shape != expected.shape:
            return Difference(path, f"shapes differ: actual {actual.shape}, expected {expected.shape}")
        if actual.dtype != expected.dtype:
            return Difference(path, f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}")
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
        for name in sorted(params_e):
            found = self.compare(params_a[name], params_e[name], f"{path}.{name}")
            if found is not None:
                return found
        fitted_a = _fitted_attributes(actual)
        fitted_e = _fitted_attributes(expected)
        found = self._compare_names(set(fitted_a), set(fitted_e), path, "fitted attributes")
        if found is not None:
            return found
        for name in sorted(fitted_e):
            found = self.compare(fitted_a[name], fitted_e[name], f"{path}.{name}")
            if found is not None:
                return found
        return None

    def _compare_names(self, actual: set[str], expected: set[str], path: str, what: str) -> Difference | None:
        if actual == expected:
            return None
        return Difference(
            path,
            f"{what} differ: only in actual {sorted(actual - expected)}, only in expected {sorted(expected - actual)}",
        )


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


def _fitted_attributes(estimator: Any) -> dict[str, Any]:
    # scikit-learn's own convention (check_is_fitted): public attributes ending in "_".
    return {k: v for k, v in vars(estimator).items() if k.endswith("_") and not k.startswith("_")}


def find_difference(
    actual: Any, expected: Any, *, rtol: float = 0.0, atol: float = 0.0, name: str = "result"
) -> Difference | None:
    """The first place where ``actual`` and ``expected`` differ, or ``None`` if they are equivalent.

    Same rules as :func:`assert_equivalent`, without raising.

    :raises TypeError, ValueError: if ``rtol`` or ``atol`` is not a finite number >= 0.
    """
    rtol, atol = check_tolerances(rtol, atol)
    return _Comparer(rtol, atol).compare(actual, expected, name)


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
    :raises ParityError: if they differ; the message names the path to the first difference
        (``result[2].coef_[0, 3]``), both values, and for numbers the count of differing
        elements and the largest absolute and relative difference.
    :raises TypeError, ValueError: if ``rtol`` or ``atol`` is not a finite number >= 0.
    """
    found = find_difference(actual, expected, rtol=rtol, atol=atol, name=name)
    if found is not None:
        raise ParityError(str(found))
