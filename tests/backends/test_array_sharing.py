"""Arrays anywhere in a task travel once per call, are reused while unchanged, and come back writable."""

from __future__ import annotations

import dataclasses
import errno
import gc
import glob
import mmap
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import conc_ml
from conc_ml import parallel, shared_array
from conc_ml.backends._process import _shared_memory

BIG = 2 * _shared_memory.MIN_SHARED_BYTES


def _segments(folder: str = _shared_memory.SHM_FOLDER) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, f"{_shared_memory.SEGMENT_PREFIX}{os.getpid()}-*")))


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def _no_segment_outlives_a_test() -> Iterator[None]:
    yield
    gc.collect()
    assert _wait_for(lambda: _segments() == []), _segments()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every array copied into a new segment."""
    made: list[int] = []
    original = _shared_memory._copy_into_segment

    def counting(low: int, high: int) -> str:
        made.append(high - low)
        return original(low, high)

    monkeypatch.setattr(_shared_memory, "_copy_into_segment", counting)
    return made


def _where(array: Any) -> str:
    """How a worker received ``array``: mapped from a segment, or pickled into the task."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return "mapped" if isinstance(base, mmap.mmap) else "pickled"


@dataclasses.dataclass
class Model:
    coef: np.ndarray[Any, Any]
    name: str


@parallel(backend="process", workers=2, chunks=4)
def _look_inside(items: list[int], nested: dict[str, Any], model: Model) -> list[Any]:
    inner = nested["pairs"][0][1]
    return [
        (_where(inner), float(inner[items].sum())),
        (_where(model.coef), float(model.coef[items].sum()), model.name),
    ]


def test_arrays_inside_containers_and_dataclasses_are_mapped_and_written_once_per_call(copies: list[int]) -> None:
    inner = np.arange(BIG // 8, dtype=np.float64)
    model = Model(np.linspace(0, 1, BIG // 8), "m")
    nested = {"pairs": [("a", inner)]}
    got = _look_inside(list(range(8)), nested, model)
    expected = _look_inside.sequential(list(range(8)), nested, model)
    assert [(chunk[0][1], chunk[1][1:]) for chunk in got] == [(chunk[0][1], chunk[1][1:]) for chunk in expected]
    assert [chunk[0][0] for chunk in got] == ["mapped"] * 4
    assert [chunk[1][0] for chunk in got] == ["mapped"] * 4
    assert [chunk[0][1] for chunk in got] == [float(inner[[i, i + 1]].sum()) for i in range(0, 8, 2)]
    assert sorted(copies) == [BIG, BIG], "each array once for the four chunks"


def test_a_closure_and_a_main_global_are_mapped_not_pickled_into_every_chunk(copies: list[int]) -> None:
    captured = np.arange(BIG // 8, dtype=np.float64)
    table = np.full(BIG // 8, 2.0)

    def reads_its_closure(items: list[int]) -> list[Any]:
        return [(_where(captured), float(captured[i])) for i in items]

    # A function defined in a script or notebook: cloudpickle sends it, and its globals, by value.
    namespace: dict[str, Any] = {"__name__": "__main__", "TABLE": table, "_where": _where}
    exec(
        "def reads_a_global(items):\n    return [(_where(TABLE), float(TABLE[i])) for i in items]\n",
        namespace,
    )
    closure = parallel(backend="process", workers=2, chunks=4, combine="concat")(reads_its_closure)
    global_ = parallel(backend="process", workers=2, chunks=4, combine="concat")(namespace["reads_a_global"])
    assert closure(list(range(8))) == [("mapped", float(i)) for i in range(8)]
    assert global_(list(range(8))) == [("mapped", 2.0)] * 8
    assert sorted(copies) == [BIG, BIG]


@parallel(backend="process", workers=2, chunks=2)
def _read(items: list[int], table: np.ndarray[Any, Any]) -> list[float]:
    return [float(table[i]) for i in items]


def test_an_unchanged_array_is_not_copied_again_and_a_one_element_change_is_seen(copies: list[int]) -> None:
    table = np.zeros(BIG // 8)
    assert _read([0, 7], table) == [[0.0], [0.0]]
    assert _read([0, 7], table) == [[0.0], [0.0]]
    assert copies == [BIG], "the second call reuses the first call's segment"
    table[7] = 1.5
    assert _read([0, 7], table) == [[0.0], [1.5]]
    table[0] = -1.0
    assert _read([0, 7], table) == [[-1.0], [1.5]]
    assert copies == [BIG], "a changed array is written again into the same segment when no call uses it"
    assert len(_segments()) == 1


def test_a_view_of_a_cached_array_reuses_its_segment(copies: list[int]) -> None:
    table = np.arange(BIG // 8, dtype=np.float64)
    _read([0, 1], table)
    assert _read([0, 1], table[10:]) == [[10.0], [11.0]]
    assert copies == [BIG]


def test_a_segment_is_deleted_when_its_array_is_garbage_collected() -> None:
    table = np.ones(BIG // 8)
    _read([0, 1], table)
    assert len(_segments()) == 1
    del table
    gc.collect()
    assert _segments() == []


def test_the_cache_is_bounded_in_entries_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = [np.full(BIG // 8, float(i)) for i in range(4)]
    monkeypatch.setattr(_shared_memory, "CACHE_MAX_ENTRIES", 2)
    for table in tables:
        _read([0, 1], table)
    assert len(_segments()) == 2, "the two least recently used are gone"
    monkeypatch.setattr(_shared_memory, "CACHE_MAX_ENTRIES", 32)
    monkeypatch.setattr(_shared_memory, "CACHE_MAX_BYTES", BIG)
    for table in tables:
        assert _read([0, 1], table) == [[table[0]], [table[0]]]
    assert len(_segments()) == 1
    monkeypatch.setattr(_shared_memory, "CACHE_MAX_BYTES", BIG - 1)
    _read([0, 1], np.ones(BIG // 8))
    _shared_memory._cache.clear()
    assert _segments() == [], "an array larger than the cache is not kept"


def test_a_changed_array_still_read_by_a_running_call_gets_a_new_segment() -> None:
    table = np.zeros(BIG // 8)
    arrays = _shared_memory.SharedArrays()
    try:
        arrays.share(table)  # a call that still runs
        table[3] = 9.0
        later = _shared_memory.SharedArrays()
        ref = later.share(table)
        assert ref.path not in arrays.paths
        import pickle

        assert pickle.loads(pickle.dumps(ref))[3] == 9.0
        later.release()
    finally:
        arrays.release()
    assert len(_segments()) == 1, "the old one went with the call that used it"


_LAYOUTS = {
    "c-order": lambda a: a,
    "fortran": np.asfortranarray,
    "transposed": lambda a: a.T,
    "strided-columns": lambda a: a[:, ::2],
    "reversed": lambda a: a[::-1],
    "int16": lambda a: a.astype(np.int16),
    "complex64": lambda a: a.astype(np.complex64),
}


@parallel(backend="process", workers=2, chunks=2)
def _results(items: list[int], layout: str) -> list[np.ndarray[Any, Any]]:
    base = np.arange(BIG // 8, dtype=np.float64).reshape(-1, 8) + items[0]
    return [_LAYOUTS[layout](base)]


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_large_results_come_back_writable_equal_and_owned_by_the_caller(layout: str) -> None:
    got = _results([0, 1], layout)
    expected = _results.sequential([0, 1], layout)
    for (array,), (reference,) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(array, reference)
        assert array.dtype == reference.dtype
        assert array.flags.writeable
        array[0] = 42  # the caller's own memory
    assert _segments() == [], "a result's file is deleted as soon as the caller maps it"


def test_results_travel_through_shared_memory_not_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    claimed: list[int] = []
    original = _shared_memory._claim_result

    def counting(path: str, nbytes: int, *rest: Any) -> Any:
        claimed.append(nbytes)
        return original(path, nbytes, *rest)

    monkeypatch.setattr(_shared_memory, "_claim_result", counting)
    # The caller unpickles results in loky's thread, in this process: the patch applies.
    got = _results([0, 1], "c-order")
    assert claimed == [BIG, BIG]
    assert got[0][0].sum() == _results.sequential([0, 1], "c-order")[0][0].sum()


class _DiesWhenPickled:
    def __reduce__(self) -> Any:
        os._exit(3)


@parallel(backend="process", workers=2, chunks=2)
def _big_result_then_die(items: list[int]) -> list[Any]:
    return [np.ones(BIG // 8), _DiesWhenPickled() if 1 in items else None]


def test_result_segments_of_a_chunk_that_dies_while_sending_are_deleted() -> None:
    with pytest.raises(conc_ml.WorkerCrashedError):
        _big_result_then_die([0, 1])
    assert _wait_for(lambda: _segments() == []), _segments()


@parallel(backend="process", workers=2, chunks=2)
def _unpicklable_result(items: list[int]) -> list[Any]:
    return [np.ones(BIG // 8), _Unpicklable()]


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


def test_result_segments_of_a_result_that_cannot_be_pickled_are_deleted() -> None:
    with pytest.raises(conc_ml.SerializationError):
        _unpicklable_result([0, 1])
    assert _wait_for(lambda: _segments() == []), _segments()


def test_shared_array_of_an_existing_array_is_a_shared_copy() -> None:
    source = np.asfortranarray(np.arange(BIG // 8, dtype=np.int32).reshape(-1, 4))
    copy = shared_array(source)
    assert copy.dtype == source.dtype
    assert copy.shape == source.shape
    np.testing.assert_array_equal(copy, source)
    assert copy.flags.writeable
    assert copy.flags.c_contiguous
    copy[0, 0] = 99
    assert source[0, 0] == 0, "a copy, not a view"
    assert len(_segments()) == 1
    as_float = shared_array(source, np.float32)
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, source.astype(np.float32))
    arrays = _shared_memory.SharedArrays()
    try:
        arrays.share(copy)
        assert arrays.paths == [], "workers read it with no copy"
    finally:
        arrays.release()
    del copy, as_float
    gc.collect()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1000", "accepts a shape"),
        ([1.5, 2.0], "item of type float"),
        (3.0, "accepts a shape"),
        (None, "accepts a shape"),
        (np.ma.masked_array(np.ones(4), mask=[0, 1, 0, 0]), "mask"),
    ],
)
def test_shared_array_rejects_anything_but_a_shape_or_an_array(value: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        shared_array(value)


def test_a_full_dev_shm_is_an_enospc_that_falls_back_never_a_sigbus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The free-space check passes, but the space is gone when it is reserved (another
    # process took it): ftruncate would have succeeded and the first write killed us.
    real = os.posix_fallocate

    def full_shm(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(_shared_memory.SHM_FOLDER):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", full_shm)
    monkeypatch.setattr(_shared_memory, "_fallback_warned", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.warns(conc_ml.SharedMemoryFallbackWarning):
        array = shared_array(BIG // 8)
    array[:] = 1.0
    assert _segments() == []
    assert len(_segments(str(tmp_path))) == 1
    del array
    gc.collect()
    assert _segments(str(tmp_path)) == []


def test_an_interrupt_while_a_segment_is_created_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []
    real_open = os.open

    def recording_open(path: str, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(str(path)).startswith(_shared_memory.SEGMENT_PREFIX):
            created.append(str(path))
        return real_open(path, *args, **kwargs)

    def interrupted(path: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", recording_open)
    for step in ("_track", "_reserve"):
        with monkeypatch.context() as patch:
            patch.setattr(_shared_memory, step, lambda *args: interrupted(""))
            with pytest.raises(KeyboardInterrupt):
                shared_array(BIG // 8)
    assert created, "the segment was opened at least once"
    assert [path for path in created if os.path.exists(path)] == []


@parallel(backend="process", workers=1, chunks=3)
def _mappings_seen(items: list[int], table: np.ndarray[Any, Any]) -> tuple[int, list[int], int]:
    from conc_ml.backends._process._shared_memory import _worker_maps

    return os.getpid(), [id(entry.mapping) for entry in _worker_maps.values()], int(table[items[0]])


def test_a_worker_maps_a_segment_once_and_keeps_it_across_chunks_and_calls() -> None:
    table = np.arange(BIG // 8, dtype=np.int64)
    seen = _mappings_seen([0, 1, 2], table) + _mappings_seen([3, 4, 5], table)
    assert [value for _, _, value in seen] == [0, 1, 2, 3, 4, 5]
    pids = {pid for pid, _, _ in seen}
    assert len(pids) == 1, "one worker ran every chunk"
    assert {tuple(mappings) for _, mappings, _ in seen} == {tuple(seen[0][1])}
    assert len(seen[0][1]) == 1, "the same mapping, made once"


def test_mappings_a_worker_keeps_are_not_taken_for_a_memory_leak_by_loky() -> None:
    from joblib.externals.loky import process_executor

    from conc_ml.backends._process import _loky

    before = process_executor._MAX_MEMORY_LEAK_SIZE
    try:
        _loky.tolerate_in_worker(400 << 20)
        raised = process_executor._MAX_MEMORY_LEAK_SIZE
        _loky.tolerate_in_worker(0)
        restored = process_executor._MAX_MEMORY_LEAK_SIZE
        assert (raised, restored) == (before + (400 << 20), before)
    finally:
        process_executor._MAX_MEMORY_LEAK_SIZE = before


def test_a_forked_child_that_drops_the_arrays_leaves_the_callers_segments_alone() -> None:
    table = np.ones(BIG // 8)
    own = shared_array(BIG // 8)
    _read([0, 1], table)
    before = _segments()
    assert len(before) == 2
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a process with threads; the child runs no thread.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: drop everything, run finalizers, leave
        try:
            del table, own
            gc.collect()
            _shared_memory._cache.clear()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert _segments() == before
    assert _read([0, 1], table) == [[1.0], [1.0]]
    del own


@parallel(backend="process", workers=2, chunks=2)
def _frame_column(items: list[int], frame: Any) -> list[tuple[str, float]]:
    column = frame["a"].to_numpy()
    return [(_where(column), float(column[i])) for i in items]


def test_a_pandas_frames_numeric_block_is_mapped(copies: list[int]) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"a": np.arange(BIG // 8, dtype=np.float64), "b": np.ones(BIG // 8)})
    assert _frame_column([0, 5], frame) == [[("mapped", 0.0)], [("mapped", 5.0)]]
    assert copies == [2 * BIG], "one block of two float columns, written once"


@parallel(backend="process", workers=2, chunks=2)
def _project(items: list[int], pca: Any, rows: np.ndarray[Any, Any]) -> list[Any]:
    return [(_where(pca.components_), pca.transform(rows[[i]]).round(12).tolist()) for i in items]


def test_a_fitted_estimators_arrays_are_mapped_and_a_change_to_them_is_seen(copies: list[int]) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    rows = np.random.default_rng(0).normal(size=(400, 400))
    pca = decomposition.PCA(n_components=380, svd_solver="full").fit(rows)
    assert pca.components_.nbytes >= _shared_memory.MIN_SHARED_BYTES
    got = _project([0, 1], pca, rows[:2])
    assert [[where for where, _ in chunk] for chunk in got] == [["mapped"], ["mapped"]]
    expected = _project.sequential([0, 1], pca, rows[:2])
    assert all(np.allclose(a[0][1], b[0][1]) for a, b in zip(got, expected, strict=True))
    assert copies == [pca.components_.nbytes], "the components, once for both chunks (rows are small)"
    pca.components_[0, :] *= -1.0  # changed in place between two calls
    again = _project([0], pca, rows[:1])
    assert np.allclose(again[0][0][1], pca.transform(rows[:1]).round(12).tolist())
    assert not np.allclose(again[0][0][1], got[0][0][1])


def test_a_main_global_or_closure_array_changed_in_place_between_calls_is_seen(copies: list[int]) -> None:
    table = np.zeros(BIG // 8)
    captured = np.zeros(BIG // 8)

    def reads_its_closure(items: list[int]) -> list[float]:
        return [float(captured[i]) for i in items]

    namespace: dict[str, Any] = {"__name__": "__main__", "TABLE": table}
    exec("def reads_a_global(items):\n    return [float(TABLE[i]) for i in items]\n", namespace)
    closure = parallel(backend="process", workers=2, chunks=2)(reads_its_closure)
    global_ = parallel(backend="process", workers=2, chunks=2)(namespace["reads_a_global"])
    assert closure([0, 9]) == [[0.0], [0.0]]
    assert global_([0, 9]) == [[0.0], [0.0]]
    captured[9] = 2.5
    table[9] = -4.0
    assert closure([0, 9]) == [[0.0], [2.5]]
    assert global_([0, 9]) == [[0.0], [-4.0]]
    assert copies == [BIG, BIG], "each written once, then again into the same segment"
