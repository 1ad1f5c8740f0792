"""Large numpy arrays reach process workers through shared memory: one copy per call, not one per chunk.

How it works. When a chunk is submitted to the process pool, every top-level argument
that is a numpy array of at least :data:`MIN_SHARED_BYTES` (and holds no Python objects)
is written once into a *segment*: a file in ``/dev/shm`` (a RAM-backed tmpfs), or in the
temporary folder when ``/dev/shm`` is missing or too small (one warning). The task then
carries a small :class:`SharedArrayRef` (path, dtype, shape, strides, offset) instead of
the bytes; a worker maps the segment read-only and gets a view with the same dtype,
shape and strides. A broadcast array is written once for all the chunks of the call; the
chunks of a split array are each written once.

Arrays created with :func:`shared_array` live in a segment already: they cost no copy
at all, which is what keeps the memory of the whole process tree close to a sequential
run's.

Cleanup. Segments belong to the caller's process. They are deleted when the call ends and
every chunk that uses them is done (a worker that dies fails its chunk, which counts as
done), and they are registered with loky's resource tracker, which deletes what is left
if the caller itself is killed.

Why files rather than :class:`multiprocessing.shared_memory.SharedMemory`: on Python
< 3.13 attaching to a ``SharedMemory`` registers it with the *worker's* resource tracker,
which then deletes it (and warns about a "leak") when the worker exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import mmap
import os
import secrets
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ._runner import ChunkTask

__all__ = [
    "MIN_SHARED_BYTES",
    "SEGMENT_PREFIX",
    "SharedArrayRef",
    "SharedMemoryFallbackWarning",
    "SharingExecutor",
    "shared_array",
]

#: arrays smaller than this are pickled with the task: a segment costs more than it saves
MIN_SHARED_BYTES = 1 << 20
#: every segment's file name starts with this, then the creating process id
SEGMENT_PREFIX = "conc-ml-"
#: the RAM-backed folder segments go to when it has room
SHM_FOLDER = "/dev/shm"
#: free space left in ``/dev/shm`` for everybody else (small enough for Docker's default 64 MB)
SHM_HEADROOM = 8 << 20


class SharedMemoryFallbackWarning(RuntimeWarning):
    """``/dev/shm`` is missing or too small: large arrays go through files in the temporary folder."""


_fallback_warned = False
_fallback_lock = threading.Lock()


def _shm_free_bytes() -> int | None:
    """Free bytes in ``/dev/shm``, or ``None`` when there is none."""
    try:
        stats = os.statvfs(SHM_FOLDER)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _segment_folder(nbytes: int) -> str:
    free = _shm_free_bytes()
    if free is not None and free >= nbytes + SHM_HEADROOM:
        return SHM_FOLDER
    _warn_fallback(nbytes, free)
    return tempfile.gettempdir()


def _warn_fallback(nbytes: int, free: int | None) -> None:
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    where = f"{SHM_FOLDER} is missing" if free is None else f"{SHM_FOLDER} has {free >> 20} MiB free"
    warnings.warn(
        f"conc-ml: {where}, not enough for {nbytes >> 20} MiB of array data; large arrays now reach process "
        f"workers through memory-mapped files in {tempfile.gettempdir()} (slower when that folder is on disk). "
        "In a container, give it more shared memory (docker run --shm-size=2g). This warning is shown once",
        SharedMemoryFallbackWarning,
        stacklevel=2,
    )


def _track(path: str) -> None:
    from ._loky import register_file

    register_file(path)


def _untrack_and_delete(path: str) -> None:
    from ._loky import unregister_file

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    unregister_file(path)


def _new_segment(nbytes: int, fill: Callable[[int], None]) -> str:
    """Create a segment of ``nbytes`` bytes, let ``fill(fd)`` write it, and return its path."""
    folder = _segment_folder(nbytes)
    for attempt in (1, 2):
        path = os.path.join(folder, f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        _track(path)
        try:
            fill(fd)
        except OSError as error:
            _untrack_and_delete(path)
            # /dev/shm filled up between the check and the write (another process).
            if attempt == 1 and folder == SHM_FOLDER and error.errno == errno.ENOSPC:
                _warn_fallback(nbytes, 0)
                folder = tempfile.gettempdir()
                continue
            raise
        except BaseException:
            _untrack_and_delete(path)
            raise
        finally:
            os.close(fd)
        return path
    raise AssertionError("unreachable")  # pragma: no cover


def _copy_bytes(fd: int, address: int, nbytes: int) -> None:
    # pwrite from the array's own memory: no temporary copy, and the caller never maps
    # the segment, so it does not count twice in the caller's memory.
    source = memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")
    written = 0
    while written < nbytes:
        written += os.pwrite(fd, source[written:], written)


@dataclasses.dataclass(frozen=True, slots=True)
class SharedArrayRef:
    """A numpy array that lives in a segment; pickles to a few bytes, unpickles to a read-only view."""

    path: str
    size: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (attach, (self.path, self.size, (self.dtype, self.shape, self.strides, self.offset)))


def attach(
    path: str, size: int, layout: tuple[np.dtype[Any], tuple[int, ...], tuple[int, ...], int]
) -> np.ndarray[Any, Any]:
    """Map the segment at ``path`` read-only and return the view ``layout`` describes (in a worker).

    :param path: the segment's file.
    :param size: the segment's length in bytes.
    :param layout: the view's dtype, shape, strides and byte offset in the segment.
    """
    dtype, shape, strides, offset = layout
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    # The view keeps the mapping alive; it is unmapped when the last view is gone.
    return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, strides=strides)


def _ref(path: str, size: int, array: np.ndarray[Any, Any], start: int) -> SharedArrayRef:
    return SharedArrayRef(path, size, array.dtype, array.shape, array.strides, array.ctypes.data - start)


def _file_ref(array: np.memmap[Any, Any]) -> SharedArrayRef | None:
    """A reference to the bytes of a file-backed memmap in its own file: no copy at all.

    Workers map the same file and read the same page cache. Only for mappings that write
    through to the file (modes ``r``, ``r+`` and ``w+``): a copy-on-write (``c``) mapping
    may hold changes that the file does not, so it is copied like any array.
    """
    mapping = getattr(array, "_mmap", None)
    path = getattr(array, "filename", None)
    if mapping is None or path is None or getattr(array, "mode", None) not in ("r", "r+", "w+"):
        return None
    # numpy maps the file from the allocation boundary at or below the memmap's offset.
    file_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    mapped_at = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    return _ref(os.fspath(path), file_start + len(mapping), array, mapped_at - file_start)


class _SegmentMap(mmap.mmap):
    """The caller's writable mapping of a :func:`shared_array` segment."""

    path: str
    address: int


def shared_array(shape: int | tuple[int, ...], dtype: DTypeLike = np.float64) -> np.ndarray[Any, Any]:
    """A zero-filled array (like :func:`numpy.zeros`) in shared memory: process workers read it with no copy.

    Fill it in place (``a[:] = ...``, ``np.copyto(a, x)``, ``out=a``) and pass it, or views of
    it, to a ``@parallel`` function on the ``process`` backend. Its memory is freed when
    the array and every view of it are garbage collected.

    :param shape: the array's shape.
    :param dtype: the array's dtype; it must not hold Python objects.
    :raises TypeError: if ``dtype`` holds Python objects (they cannot be shared).
    :raises ValueError: if ``shape`` has a negative dimension.
    """
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    kind = np.dtype(dtype)
    if kind.hasobject:
        raise TypeError(f"shared_array needs a dtype without Python objects, got {kind}; use numpy.empty instead")
    if any(d < 0 for d in dims):
        raise ValueError(f"shared_array needs non-negative dimensions, got shape {dims}")
    nbytes = int(np.prod(dims, dtype=np.int64)) * kind.itemsize
    if nbytes == 0:
        return np.zeros(dims, dtype=kind)
    mapped: dict[str, _SegmentMap] = {}

    def allocate(fd: int) -> None:
        os.ftruncate(fd, nbytes)
        mapped["map"] = _SegmentMap(fd, nbytes)

    path = _new_segment(nbytes, allocate)
    segment = mapped["map"]
    segment.path = path
    array: np.ndarray[Any, Any] = np.ndarray(dims, dtype=kind, buffer=segment)
    segment.address = array.ctypes.data
    weakref.finalize(segment, _untrack_and_delete, path)
    return array


def _segment_map_of(array: np.ndarray[Any, Any]) -> _SegmentMap | None:
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, _SegmentMap) else None


@dataclasses.dataclass(slots=True, eq=False)
class _Segment:
    path: str
    low: int
    high: int
    #: the array the bytes came from, kept alive so that its addresses keep meaning these bytes
    source: np.ndarray[Any, Any]
    #: chunks in flight that use it
    users: int = 0
    #: chunks that used it so far; a segment of one chunk only goes as soon as that chunk is done
    chunks: int = 0


class SharedArrays:
    """The segments of one call: arrays written once, referenced by every chunk that uses them."""

    def __init__(self, min_bytes: int = MIN_SHARED_BYTES):
        self.min_bytes = min_bytes
        self._segments: list[_Segment] = []
        self._lock = threading.Lock()

    @property
    def paths(self) -> list[str]:
        """Paths of the segments that exist now."""
        with self._lock:
            return [segment.path for segment in self._segments]

    def share_task(self, task: ChunkTask) -> tuple[ChunkTask, list[_Segment]]:
        """``task`` with each large array argument replaced by a :class:`SharedArrayRef`, and its segments.

        Give the segments back to :meth:`task_done` when the chunk is done.
        """
        used: list[_Segment] = []
        args = tuple(self.share(value, used) for value in task.args)
        kwargs = {name: self.share(value, used) for name, value in task.kwargs.items()}
        distinct = list({id(segment): segment for segment in used}.values())
        with self._lock:
            for segment in distinct:
                segment.users += 1
                segment.chunks += 1
        return dataclasses.replace(task, args=args, kwargs=kwargs), distinct

    def share(self, value: Any, used: list[_Segment] | None = None) -> Any:
        """A :class:`SharedArrayRef` for a large numpy array; any other value unchanged.

        Object arrays and ndarray subclasses other than :class:`numpy.memmap` are returned
        unchanged (they are pickled).

        :param value: an argument of a chunk.
        :param used: the segment the reference points to is appended here (none for a
            :func:`shared_array`, which owns its segment).
        """
        if type(value) not in (np.ndarray, np.memmap) or value.dtype.hasobject or value.nbytes < self.min_bytes:
            return value
        array: np.ndarray[Any, Any] = value
        owner = _segment_map_of(array)
        if owner is not None:
            return _ref(owner.path, len(owner), array, owner.address)
        if isinstance(array, np.memmap):
            in_file = _file_ref(array)
            if in_file is not None:
                return in_file
        from numpy.lib.array_utils import byte_bounds

        low, high = byte_bounds(array)
        if high - low > 2 * array.nbytes:
            # A sparse view (a[::1000]) would drag its whole span along: send its items only.
            array = np.ascontiguousarray(array)
            low, high = byte_bounds(array)
        with self._lock:
            segment = next((s for s in self._segments if s.low <= low and high <= s.high), None)
            if segment is None:
                path = _new_segment(high - low, lambda fd: _copy_bytes(fd, low, high - low))
                segment = _Segment(path, low, high, array)
                self._segments.append(segment)
        if used is not None:
            used.append(segment)
        return _ref(segment.path, segment.high - segment.low, array, segment.low)

    def task_done(self, segments: list[_Segment]) -> None:
        """A chunk that used ``segments`` is done: delete those no other chunk used."""
        with self._lock:
            done = []
            for segment in segments:
                segment.users -= 1
                # A broadcast array (used by two chunks or more) stays for the chunks to come.
                if segment.users == 0 and segment.chunks == 1 and segment in self._segments:
                    self._segments.remove(segment)
                    done.append(segment)
        for segment in done:
            _untrack_and_delete(segment.path)

    def release(self) -> None:
        """Delete every segment of the call."""
        with self._lock:
            segments, self._segments = self._segments, []
        for segment in segments:
            _untrack_and_delete(segment.path)


class SharingExecutor(Executor):
    """A process pool's executor for one call, sending large arrays through shared memory.

    A segment used by one chunk goes when that chunk is done (finished, failed, cancelled,
    or lost with its worker); the others when :meth:`close` was called and every chunk
    submitted through this executor is done.
    """

    def __init__(self, pool: Executor, min_bytes: int = MIN_SHARED_BYTES):
        self.pool = pool
        self.arrays = SharedArrays(min_bytes)
        self._lock = threading.Lock()
        #: chunks in flight and the segments each uses
        self._in_flight: dict[Future[Any], list[_Segment]] = {}
        self._closing = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        segments: list[_Segment] = []
        shared_args = []
        for arg in args:
            if isinstance(arg, ChunkTask):
                shared_task, used = self.arrays.share_task(arg)
                shared_args.append(shared_task)
                segments += used
            else:
                shared_args.append(arg)
        try:
            future = self.pool.submit(fn, *shared_args, **kwargs)
        except BaseException:
            self.arrays.task_done(segments)
            raise
        with self._lock:
            self._in_flight[future] = segments
        future.add_done_callback(self._chunk_done)
        return future

    def _chunk_done(self, future: Future[Any]) -> None:
        # Everything under the one lock, deletions included: close() must not return while a
        # callback is half-way through deleting a segment.
        with self._lock:
            self._finish(future)

    def _finish(self, future: Future[Any]) -> None:
        # Called by the future's callback, or earlier by close(): whichever comes first.
        segments = self._in_flight.pop(future, None)
        if segments is not None:
            self.arrays.task_done(segments)
        if self._closing and not self._in_flight:
            self.arrays.release()

    def close(self) -> None:
        """Delete the call's segments now, or as soon as its last running chunk is done."""
        with self._lock:
            self._closing = True
            # A future is done before its callbacks run: a call that got every result must
            # not return with their segments still there.
            for future in [f for f in self._in_flight if f.done()]:
                self._finish(future)
            if not self._in_flight:
                self.arrays.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.close()
