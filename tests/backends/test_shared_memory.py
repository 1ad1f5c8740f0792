"""Large numpy arrays reach process workers through shared memory, intact and read-only; nothing is left behind."""

from __future__ import annotations

import gc
import glob
import mmap
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import conc_ml
from conc_ml import parallel
from conc_ml._runner import ChunkTask
from conc_ml.backends._process import _shared_memory
from conc_ml.backends._process._shared_memory import SharedArrayRef, SharedArrays, SharingExecutor, shared_array

#: comfortably above the threshold, small enough for a 2-core machine shared with others
BIG = 2 * _shared_memory.MIN_SHARED_BYTES


def _segments(folder: str = _shared_memory.SHM_FOLDER) -> list[str]:
    return glob.glob(os.path.join(folder, f"{_shared_memory.SEGMENT_PREFIX}{os.getpid()}-*"))


def _wait_for_segments(count: int, folder: str = _shared_memory.SHM_FOLDER, timeout: float = 10.0) -> list[str]:
    # A future is done before its callbacks (which delete segments) have run, and after a
    # crash loky fails the other chunks from its own thread: poll, bounded.
    deadline = time.monotonic() + timeout
    while len(left := _segments(folder)) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _wait_for_no_segments(folder: str = _shared_memory.SHM_FOLDER, timeout: float = 10.0) -> list[str]:
    return _wait_for_segments(0, folder, timeout)


@pytest.fixture(autouse=True)
def _no_segment_outlives_a_test() -> Any:
    yield
    gc.collect()
    assert _wait_for_no_segments() == []


def _round_trip(value: Any, arrays: SharedArrays) -> Any:
    """What a worker receives: the shared value, pickled and unpickled."""
    return pickle.loads(pickle.dumps(arrays.share(value)))


def _layouts() -> dict[str, np.ndarray[Any, Any]]:
    rows = BIG // (8 * 64)
    base = np.arange(rows * 64, dtype=np.float64).reshape(rows, 64)
    record = np.dtype([("x", np.float32), ("n", np.int16), ("tag", "S3")])
    records = np.zeros(BIG // record.itemsize + 1, dtype=record)
    records["x"] = np.arange(records.size)
    return {
        "c-contiguous": base,
        "fortran-order": np.asfortranarray(base),
        "transposed": base.T,
        "every-other-column": base[:, ::2],
        "reversed-rows": base[::-1],
        "column-slice-of-3d": np.arange(BIG // 2, dtype=np.int16).reshape(8, -1, 4)[:, :, 1:3],
        "complex": (base + 1j * base).astype(np.complex64),
        "bool": (np.arange(BIG) % 3 == 0).reshape(-1, 64),
        "structured": records,
        "broadcast-zero-stride": np.broadcast_to(base[:1], (rows * 4, 64)),
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_a_shared_array_keeps_dtype_shape_strides_and_values(name: str) -> None:
    array = _layouts()[name]
    arrays = SharedArrays()
    try:
        received = _round_trip(array, arrays)
        assert isinstance(received.base, mmap.mmap), "the array was pickled, not shared"
        assert received.dtype == array.dtype
        assert received.shape == array.shape
        assert received.strides == array.strides
        np.testing.assert_array_equal(received, array)
        assert not received.flags.writeable
    finally:
        arrays.release()


def test_a_sparse_view_is_sent_compact_rather_than_with_its_whole_span() -> None:
    base = np.arange(100 * BIG // 8, dtype=np.float64)
    view = base[::50]
    arrays = SharedArrays()
    try:
        ref = arrays.share(view)
        assert isinstance(ref, SharedArrayRef)
        assert ref.size == view.nbytes
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)), view)
    finally:
        arrays.release()


def test_a_broadcast_array_is_written_once_for_all_chunks_and_views_of_it_reuse_it() -> None:
    array = np.ones(BIG // 8)
    arrays = SharedArrays()
    try:
        first, second = arrays.share(array), arrays.share(array)
        half = arrays.share(array[array.size // 2 :])
        assert len(arrays.paths) == 1
        assert first.path == second.path == half.path
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(half)), array[array.size // 2 :])
    finally:
        arrays.release()
    assert _segments() == [first.path], "kept for the next call while the array lives"
    del array
    gc.collect()
    assert _segments() == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(np.array([object()] * (BIG // 8), dtype=object), id="object-array"),
        pytest.param(np.zeros(BIG // 8, dtype=[("a", "f8"), ("b", "O")]), id="structured-with-objects"),
        pytest.param(np.ones(16), id="small-array"),
        pytest.param(np.ma.masked_array(np.ones(BIG // 8)), id="ndarray-subclass"),
        pytest.param(list(range(10)), id="not-an-array"),
    ],
)
def test_what_cannot_or_need_not_be_shared_is_pickled_as_before(value: Any) -> None:
    arrays = SharedArrays()
    try:
        assert arrays.share(value) is value
        assert arrays.paths == []
    finally:
        arrays.release()


@parallel(backend="process", chunks=4, workers=2, split="rows")
def _describe(rows: np.ndarray[Any, Any], table: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> list[Any]:
    return [
        (type(rows.base).__name__, rows.flags.writeable, rows.strides, float(rows.sum())),
        (type(table.base).__name__, table.flags.writeable, table.dtype.str, float(table.sum())),
        (labels.flags.writeable, labels.dtype.str, labels.shape),
    ]


def test_process_workers_get_read_only_views_of_shared_memory_with_the_sequential_results() -> None:
    rows = np.arange(4 * BIG // 8, dtype=np.float64).reshape(-1, 4)[:, ::2]
    table = np.linspace(0, 1, BIG // 4, dtype=np.float32)
    labels = np.array([str(i) for i in range(BIG // 64)], dtype=object)
    parallel_result = _describe(rows, table, labels)
    sequential_result = _describe.sequential(rows, table, labels)
    assert len(parallel_result) == 4
    for got, expected in zip(parallel_result, sequential_result, strict=True):
        assert got[0] == ("mmap", False, rows.strides, expected[0][3])
        assert got[1] == ("mmap", False, "<f4", expected[1][3])
        # an object array is pickled: the worker gets its own writable copy
        assert got[2] == (True, "|O", labels.shape)
    assert _segments() != []
    del rows, table
    gc.collect()
    assert _segments() == [], "segments go with the arrays they were made from"


@parallel(backend="process", chunks=2, workers=2)
def _write_into(rows: np.ndarray[Any, Any]) -> None:
    rows[0] = -1


def test_a_worker_cannot_write_into_the_callers_array() -> None:
    rows = np.zeros(BIG // 8)
    with pytest.raises(ValueError, match="read-only"):
        _write_into(rows)
    assert (rows == 0).all()


@parallel(backend="process", chunks=2, workers=2)
def _die_in_chunk_one(rows: np.ndarray[Any, Any], table: np.ndarray[Any, Any]) -> float:
    if rows[0] > 0:
        os._exit(3)
    return float(table.sum())


def test_no_segment_is_left_when_a_worker_dies() -> None:
    rows = np.arange(BIG // 8, dtype=np.float64)
    table = np.ones(BIG // 8)
    with pytest.raises(conc_ml.WorkerCrashedError):
        _die_in_chunk_one(rows, table)
    # and the pool works again
    assert _die_in_chunk_one(np.zeros(BIG // 8), table) == [table.sum(), table.sum()]
    del rows, table
    gc.collect()
    assert _wait_for_no_segments() == []


def test_segments_outlive_close_until_the_last_running_chunk_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared_memory, "CACHE_MAX_ENTRIES", 0)  # kept for no later call
    release = threading.Event()

    def run(received: ChunkTask) -> float:
        assert release.wait(10)
        return float(received.args[0].sum())

    with ThreadPoolExecutor(1) as pool:
        sharing = SharingExecutor(pool)
        task = ChunkTask(func=sum, args=(np.ones(BIG // 8),), kwargs={}, index=0)
        future = sharing.submit(run, task)
        sharing.close()
        assert len(_segments()) == 1
        release.set()
        assert future.result(timeout=10).outcome == BIG // 8
    assert _wait_for_no_segments() == []


def test_shared_array_is_zero_filled_writable_and_freed_with_its_last_view() -> None:
    array = shared_array((BIG // 8 // 4, 4), dtype=np.float64)
    assert array.shape == (BIG // 32, 4)
    assert array.dtype == np.float64
    assert array.flags.writeable
    assert (array == 0).all()
    assert len(_segments()) == 1
    view = array[10:]
    del array
    gc.collect()
    assert len(_segments()) == 1
    del view
    gc.collect()
    assert _segments() == []


def test_shared_array_reaches_workers_with_no_copy() -> None:
    array = shared_array(BIG // 8)
    array[:] = np.arange(array.size)
    arrays = SharedArrays()
    try:
        ref = arrays.share(array[::2])
        assert arrays.paths == [], "a shared_array must not be copied again"
        assert ref.path == _segments()[0]
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)), array[::2])
    finally:
        arrays.release()
    assert _sum_in_workers(array) == [float(array[: array.size // 2].sum()), float(array[array.size // 2 :].sum())]


@parallel(backend="process", chunks=2, workers=2)
def _sum_in_workers(values: np.ndarray[Any, Any]) -> float:
    assert isinstance(values.base, mmap.mmap)
    return float(values.sum())


@pytest.mark.parametrize(
    ("shape", "dtype", "error", "match"),
    [
        ((4,), object, TypeError, "without Python objects"),
        ((-1, 3), np.float64, ValueError, "non-negative"),
    ],
)
def test_shared_array_rejects_what_cannot_be_shared(shape: Any, dtype: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        shared_array(shape, dtype)


def test_shared_array_of_size_zero_is_a_plain_array() -> None:
    empty = shared_array((0, 3))
    assert empty.shape == (0, 3)
    assert _segments() == []


def test_a_missing_dev_shm_falls_back_to_the_temporary_folder_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_shared_memory, "SHM_FOLDER", str(tmp_path / "no-such-folder"))
    monkeypatch.setattr(_shared_memory, "_fallback_warned", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    arrays = SharedArrays()
    try:
        with pytest.warns(conc_ml.SharedMemoryFallbackWarning, match="is missing"):
            ref = arrays.share(np.ones(BIG // 8))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arrays.share(np.zeros(BIG // 8))
        assert os.path.dirname(ref.path) == str(tmp_path)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)), np.ones(BIG // 8))
    finally:
        arrays.release()
    assert _segments(str(tmp_path)) == []


def test_an_array_that_fits_a_small_dev_shm_with_room_to_spare_goes_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # Docker's default 64 MB, nearly all free
    monkeypatch.setattr(_shared_memory, "_shm_free_bytes", lambda: 60 << 20)
    monkeypatch.setattr(_shared_memory, "_fallback_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array = shared_array(BIG // 8)
    assert len(_segments()) == 1
    del array


def test_a_small_dev_shm_falls_back_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Docker's default 64 MB, 3 MB of it free
    monkeypatch.setattr(_shared_memory, "_shm_free_bytes", lambda: 3 << 20)
    monkeypatch.setattr(_shared_memory, "_fallback_warned", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.warns(conc_ml.SharedMemoryFallbackWarning, match=r"MiB free"):
        array = shared_array(BIG // 8)
    assert _segments(str(tmp_path)) != []
    del array
    gc.collect()
    assert _segments(str(tmp_path)) == []


def test_a_program_that_shares_arrays_and_loses_a_worker_exits_without_resource_tracker_warnings(
    tmp_path: Path,
) -> None:
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import glob, os
            import numpy as np
            import conc_ml

            @conc_ml.parallel(backend="process", chunks=2, workers=2)
            def work(rows, table, crash):
                if crash and rows[0] > 0:
                    os._exit(3)
                return float(table.sum())

            table = conc_ml.shared_array({BIG // 8})
            rows = np.arange({BIG // 8}, dtype=float)
            assert work(rows, np.ones({BIG // 8}), False) == [{BIG // 8}.0] * 2
            try:
                work(rows, table, True)
            except conc_ml.WorkerCrashedError:
                pass
            print(os.getpid())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(conc_ml.__file__).parents[1]), *sys.path])}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env, check=False
    )
    assert run.returncode == 0, run.stderr
    pid = run.stdout.strip()
    assert pid.isdigit()
    assert glob.glob(os.path.join(_shared_memory.SHM_FOLDER, f"{_shared_memory.SEGMENT_PREFIX}{pid}-*")) == []
    assert "resource_tracker" not in run.stderr
    assert "leak" not in run.stderr


def _memmap_file(tmp_path: Path, values: np.ndarray[Any, Any], offset: int = 0) -> Path:
    path = tmp_path / "data.bin"
    with open(path, "wb") as file:
        file.write(b"\xff" * offset)
        file.write(values.tobytes())
    return path


_VIEWS = {
    "whole": lambda a: a,
    "slice": lambda a: a[5:, 1:],
    "reversed-step": lambda a: a[::-3],
    "transposed": lambda a: a.T,
}


@pytest.mark.parametrize("offset", [0, 24, mmap.ALLOCATIONGRANULARITY + 8], ids=["start", "unaligned", "past-a-page"])
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_file_backed_memmap_reaches_workers_through_its_own_file_with_no_copy(
    tmp_path: Path, offset: int, mode: str
) -> None:
    values = np.arange(3 * BIG // 8, dtype=np.float64).reshape(-1, 3)
    path = _memmap_file(tmp_path, values, offset)
    on_disk = np.memmap(path, dtype=np.float64, mode=mode, offset=offset, shape=values.shape)
    arrays = SharedArrays()
    try:
        for name, make_view in _VIEWS.items():
            view = make_view(on_disk)
            ref = arrays.share(view)
            assert isinstance(ref, SharedArrayRef), name
            assert ref.path == str(path), name
            received = pickle.loads(pickle.dumps(ref))
            assert received.strides == view.strides, name
            assert not received.flags.writeable, name
            np.testing.assert_array_equal(received, make_view(values), err_msg=name)
        assert arrays.paths == [], "a file-backed memmap must not be copied into a segment"
    finally:
        arrays.release()
    assert path.exists(), "the user's file must stay"
    half = len(values) // 2
    assert _sum_in_workers(on_disk) == [float(values[:half].sum()), float(values[half:].sum())]
    assert _segments() == []


def test_a_copy_on_write_memmap_is_copied_so_workers_see_the_callers_changes(tmp_path: Path) -> None:
    values = np.zeros(BIG // 8)
    path = _memmap_file(tmp_path, values)
    private = np.memmap(path, dtype=np.float64, mode="c", shape=values.shape)
    private[:] = 1.0  # changes only this process's pages, not the file
    half = len(values) // 2
    assert _sum_in_workers(private) == [float(half), float(len(values) - half)]
    assert np.fromfile(path).sum() == 0.0
