"""What users' code brings: pandas map-reduce, masked arrays, methods, mistakes."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from typing import Any

import anyio
import numpy as np
import pandas as pd
import pytest

from conc_ml import SerializationError, SplitError, io_bound, parallel


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


def encode(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({"key": "category"}).assign(double=frame["value"] * 2)


def test_concat_of_per_chunk_features_keeps_categorical_and_nullable_dtypes(backend: str) -> None:
    frame = pd.DataFrame({"key": ["b", "a", "c", "b"], "value": pd.array([1, None, 3, 4], dtype="Int64")})
    func = parallel(backend=backend, chunks=2, combine="concat")(encode)
    pd.testing.assert_frame_equal(func(frame), encode(frame))


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


class Holder:
    """An object holding something that cannot be pickled."""

    def __init__(self) -> None:
        self.session = threading.Lock()


def count_items(items: list[Any], config: Any = None) -> int:
    return len(items)


def test_serialization_error_names_the_object_and_its_path_in_the_input() -> None:
    items: list[Any] = [0, 1, 2, 3, threading.Lock(), 5]
    func = parallel(backend="process", chunks=2)(count_items)
    with pytest.raises(SerializationError, match=r"items\[4\] is a _thread\.lock") as info:
        func(items)
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    with pytest.raises(SerializationError, match=r"config\['db'\]\.session is a _thread\.lock"):
        func([1, 2], {"db": Holder()})


def test_open_files_are_refused_with_a_hint(tmp_path: Any) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("a\nb\n")
    func = parallel(backend="process", chunks=2)(count_items)
    with path.open() as handle:
        with pytest.raises(SerializationError, match=r"config is an open file .*Pass the path"):
            func([1, 2], handle)
        with pytest.raises(SerializationError, match=r"items\[0\] is an open file"):
            func([handle, handle])
        # Threads share the file itself: nothing to refuse.
        assert func.options(backend="thread")([1, 2], handle) == [1, 1]


class LineReader:
    """A user's object that keeps an open file, as a class with a log or a data file does."""

    def __init__(self, handle: Any) -> None:
        self.source = {"name": "rows", "files": [handle]}

    @parallel(backend="process", chunks=2)
    def file_names(self, items: list[int]) -> str:
        return str(self.source["files"][0].name)


def test_open_files_inside_objects_and_the_instance_are_refused(tmp_path: Any) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("a\nb\n")
    func = parallel(backend="process", chunks=2)(count_items)
    with path.open() as handle:
        reader = LineReader(handle)
        with pytest.raises(SerializationError, match=r"self\.source\['files'\]\[0\] is an open file"):
            reader.file_names([1, 2])
        with pytest.raises(SerializationError, match=r"config\[1\]\.source\['files'\]\[0\] is an open file"):
            func([1, 2], (0, reader))
        # Threads share the file itself: nothing to refuse.
        assert reader.file_names.options(backend="thread")([1, 2]) == [str(path), str(path)]
    # Objects of numeric libraries are not searched, and plain values pass.
    assert func([1, 2], {"rows": np.zeros(3), "frame": pd.DataFrame({"a": [1]}), "n": 1}) == [1, 1]


def tokens(lines: list[str]) -> Any:
    return (word for line in lines for word in line.split())


def test_a_generator_result_is_refused_with_the_fix() -> None:
    func = parallel(backend="process", chunks=2)(tokens)
    with pytest.raises(SerializationError, match=r"the function returns a generator.*return a list of its items"):
        func(["a b", "c"])
    assert [list(words) for words in func.options(backend="thread")(["a b", "c"])] == [["a", "b"], ["c"]]


SCRIPT_WITH_A_FAILING_HELPER = """
from conc_ml import parallel


def helper(value):
    if value == 3:
        raise ValueError("three is not allowed")
    return value


@parallel(backend="process", chunks=2)
def work(items):
    return [helper(item) for item in items]


if __name__ == "__main__":
    work([1, 2, 3, 4])
"""


def test_remote_tracebacks_of_script_functions_show_their_source(tmp_path: Any) -> None:
    script = tmp_path / "failing_script.py"
    script.write_text(SCRIPT_WITH_A_FAILING_HELPER)
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "<dynamic-code>" not in done.stderr
    assert f'File "{script}", line 7, in helper' in done.stderr
    assert 'raise ValueError("three is not allowed")' in done.stderr


def test_a_stage_with_rng_fed_by_a_stream_keys_its_streams_by_input_position() -> None:
    # The first stage finishes in reverse order of position, each chunk once the next stage
    # has taken the one after it (or, when the next stage waits for position order, after
    # a bounded wait): completion order is the opposite of input order.
    gates = [threading.Event() for _ in range(4)]
    gates[3].set()

    def first(items: list[int]) -> int:
        gates[items[0]].wait(0.5)
        return items[0] * 10

    def second(pairs: list[tuple[int, int]], *, rng: np.random.Generator) -> list[tuple[int, float]]:
        index, _ = pairs[0]
        if index > 0:
            gates[index - 1].set()
        return [(index, value + rng.random()) for index, value in pairs]

    stage = parallel(backend="thread", chunks=4, workers=4)(first)
    noisy = parallel(backend="sequential", chunk_size=1, seed=7, combine="concat")(second)
    streamed = noisy(stage.stream([0, 1, 2, 3]))
    assert [index for index, _ in streamed] == [0, 1, 2, 3]
    assert streamed == noisy([(i, i * 10) for i in range(4)])


NO_MAIN_GUARD = """
from conc_ml import parallel


@parallel(backend="dask", chunks=2)
def count(items):
    return len(items)


print(count([1, 2, 3]))
"""


def test_dask_without_a_main_guard_says_what_to_add(tmp_path: Any) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(NO_MAIN_GUARD)
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "BackendUnavailableError" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert "line 10 of" in done.stderr


GUARDED = """
import sys
from conc_ml import parallel


@parallel(backend="dask", chunks=2)
def count(items):
    return len(items)


if "__main__" == __name__ and len(sys.argv) > 0:
    print("guarded")
"""


def test_a_guard_in_another_form_is_recognised() -> None:
    from conc_ml.backends import _dask

    statements = ast.parse(GUARDED).body
    assert [_dask._is_main_guard(statement) for statement in statements] == [False, False, False, True]
