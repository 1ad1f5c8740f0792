"""What users' code brings: pandas map-reduce, masked arrays, methods, mistakes."""

from __future__ import annotations

import anyio
import numpy as np
import pandas as pd
import pytest

from conc_ml import SplitError, io_bound, parallel


def group_sums(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby("key")["value"].sum()


def identity(values: object) -> object:
    return values


def rows_above(features: pd.DataFrame, target: pd.Series) -> int:
    return len(features[target > 0])


def test_sum_of_groupby_chunks_equals_the_whole_groupby(backend: str) -> None:
    frame = pd.DataFrame({"key": ["a", "b", "b", "b"], "value": [1, 2, 3, 4]})
    func = parallel(backend=backend, chunks=2, combine="sum")(group_sums)
    pd.testing.assert_series_equal(func(frame), group_sums(frame))
    pd.testing.assert_series_equal(func.sequential(frame), group_sums(frame))


def test_concat_keeps_masks_on_every_backend(backend: str) -> None:
    values = np.ma.masked_array(np.arange(6.0), mask=[1, 0, 1, 0, 1, 1])
    joined = parallel(backend=backend, chunks=3, combine="concat")(identity)(values)
    assert isinstance(joined, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(joined), np.ma.getmaskarray(values))
    assert joined.count() == 2


def test_pandas_arguments_with_different_indexes_are_refused(backend: str) -> None:
    features = pd.DataFrame({"a": range(4)}, index=[0, 1, 2, 3])
    target = pd.Series([1, -1, 1, -1], index=[3, 2, 1, 0])
    func = parallel(backend=backend, chunks=2, split=("features", "target"), combine="sum")(rows_above)
    with pytest.raises(SplitError, match="different indexes"):
        func(features, target)
    assert func(features, target.sort_index()) == rows_above(features, target.sort_index())


class Scaler:
    """A user's class whose methods are decorated in every way Python allows."""

    unit = 10

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @parallel(chunks=2, combine="concat")
    def scale(self, rows: list[int], offset: int = 0) -> list[int]:
        return [row * self.factor + offset for row in rows]

    @parallel(chunks=2, combine="concat")
    async def scale_async(self, rows: list[int]) -> list[int]:
        return [row * self.factor for row in rows]

    @parallel(chunks=2, combine="concat")
    @classmethod
    def in_units(cls, rows: list[int]) -> list[int]:
        return [row * cls.unit for row in rows]

    @classmethod
    @parallel(chunks=2, combine="concat")
    def in_units_outer(cls, rows: list[int]) -> list[int]:
        return [row * cls.unit for row in rows]

    @parallel(chunks=2, combine="concat")
    @staticmethod
    def doubled(rows: list[int]) -> list[int]:
        return [row * 2 for row in rows]

    @staticmethod
    @parallel(chunks=2, combine="concat")
    def doubled_outer(rows: list[int]) -> list[int]:
        return [row * 2 for row in rows]

    @parallel(chunks=2, split="rows", combine="concat")
    def weighted(self, weight: int, rows: list[int]) -> list[int]:
        return [row * weight * self.factor for row in rows]

    @io_bound(concurrency=2)
    def fetch(self, item: int, *, suffix: str = "") -> str:
        return f"{item * self.factor}{suffix}"

    @io_bound(concurrency=2)
    async def fetch_async(self, item: int) -> int:
        await anyio.sleep(0)
        return item * self.factor

    @io_bound
    @classmethod
    def fetch_unit(cls, item: int) -> int:
        return item * cls.unit

    @io_bound
    @staticmethod
    def fetch_static(item: int) -> int:
        return -item


def test_instance_methods_run_on_every_backend_with_the_instance_sent_whole(backend: str) -> None:
    scaler = Scaler(3)
    method = scaler.scale.options(backend=backend)
    assert method([1, 2, 3], offset=1) == [4, 7, 10]
    assert scaler.scale.sequential([1, 2, 3]) == [3, 6, 9]
    assert sorted(method.stream([1, 2, 3])) == [(0, [3, 6]), (1, [9])]
    assert scaler.weighted.options(backend=backend)(2, [1, 2]) == [6, 12]
    assert Scaler.scale.options(backend=backend)(scaler, [1, 2]) == [3, 6]
    assert scaler.scale.__wrapped__([5]) == [15]


def test_classmethods_and_staticmethods_in_either_order(backend: str) -> None:
    scaler = Scaler(3)
    for method in (Scaler.in_units, scaler.in_units, Scaler.in_units_outer, scaler.in_units_outer):
        assert method.options(backend=backend)([1, 2, 3]) == [10, 20, 30]
    for method in (Scaler.doubled, scaler.doubled, Scaler.doubled_outer, scaler.doubled_outer):
        assert method.options(backend=backend)([1, 2, 3]) == [2, 4, 6]
        assert method.sequential([4]) == [8]


def test_async_methods_are_awaited() -> None:
    scaler = Scaler(2)

    async def main() -> tuple[list[int], list[tuple[int, list[int]]]]:
        whole = await scaler.scale_async([1, 2, 3])
        streamed = [item async for item in scaler.scale_async.stream([1, 2, 3])]
        return whole, streamed

    whole, streamed = anyio.run(main)
    assert whole == [2, 4, 6]
    assert sorted(streamed) == [(0, [2, 4]), (1, [6])]


def test_default_split_skips_self_and_cls() -> None:
    with pytest.raises(SplitError, match="'rows'"):
        Scaler(1).scale(object())  # the error names the data parameter, not self
    # Positions count the parameters a caller passes: 1 is rows, after weight.
    assert parallel(split=1, combine="concat")(Scaler.weighted.__wrapped__)(Scaler(1), 2, [1, 2]) == [2, 4]


def test_io_bound_methods_are_bound_and_share_the_functions_limits() -> None:
    scaler = Scaler(3)
    assert scaler.fetch(2) == "6"
    assert scaler.fetch.map([1, 2], suffix="!") == ["3!", "6!"]
    assert sorted(scaler.fetch.stream([1, 2])) == [(0, "3"), (1, "6")]
    assert anyio.run(scaler.fetch.amap, [4]) == ["12"]
    assert scaler.fetch.io_options is Scaler.fetch.io_options
    assert Scaler.fetch(scaler, 1) == "3"
    assert anyio.run(scaler.fetch_async, 5) == 15
    assert anyio.run(scaler.fetch_async.map, [1, 2]) == [3, 6]
    assert Scaler.fetch_unit.map([1, 2]) == [10, 20]
    assert scaler.fetch_unit(3) == 30
    assert scaler.fetch_static.map([1, 2]) == [-1, -2]


def test_parity_helpers_take_bound_methods() -> None:
    from conc_ml.testing import assert_parallel_equivalent

    assert_parallel_equivalent(Scaler(2).scale, [1, 2, 3], backends=("thread",))


def test_conc_bench_fixture_takes_a_bound_method(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from conc_ml import parallel

        class Doubler:
            def __init__(self, factor):
                self.factor = factor

            @parallel(backend="thread", combine="concat")
            def apply(self, rows):
                return [row * self.factor for row in rows]

        def test_method(conc_bench):
            assert conc_bench(Doubler(2).apply, [1, 2, 3]) == [2, 4, 6]
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
