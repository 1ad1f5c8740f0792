"""Large numpy arrays reach process workers through shared memory: one copy per call at most, reused across calls.

What is shared. A chunk's task is pickled by :class:`SharedArrays` with a pickler whose
``reducer_override`` sees every object of the stream (the approach of joblib's memmapping
reducers): every numpy array of at least :data:`MIN_SHARED_BYTES` that holds no Python
objects, wherever it is (an argument, inside a list, dict or dataclass, an estimator's
attribute, a global or closure cell of a function that cloudpickle sends by value), is
written into a *segment* and replaced by a small :class:`SharedArrayRef`. A segment is a
file in ``/dev/shm`` (a RAM-backed tmpfs), or in the temporary folder when ``/dev/shm`` is
missing or too small (one :class:`SharedMemoryFallbackWarning`).

Reuse across calls (the policy ``docs/how-to/large-arrays.md`` documents). Segments are
kept in a cache keyed by the array that owns the memory (its ``base``), bounded by
:data:`CACHE_MAX_ENTRIES` entries and :data:`CACHE_MAX_BYTES` bytes (least recently used
first out), and deleted when that array is garbage collected. Before a cached segment
serves a new call its bytes are compared with the array's (``memcmp``: about a third of
the cost of a copy, and exact: there is no hash that could collide). If they differ, even
by one element, the segment is rewritten in place when no call uses it, else a new one is
made. Stale data is never served.

Where no copy is made at all: arrays created with :func:`shared_array` live in a segment
already, and file-backed :class:`numpy.memmap` arrays are mapped from their own file.

In the worker. A worker maps each segment once, read-only, and keeps the mapping while
the segment exists (a thread drops mappings of deleted segments within a second), so a
broadcast array is page-faulted once per worker, not once per chunk. Pre-faulting with
``MAP_POPULATE`` was measured and not kept: mapping 400 MB populated then reading it took
as long as faulting it in while reading (85-97 ms vs 66-92 ms), and costs more when a
chunk reads only part of the array.

Results. A worker writes each large array of its result into a new segment; the caller
maps it writable and deletes its file at once, so the array is the caller's alone and its
memory is freed when the caller drops it. A result that cannot get a segment (no room) is
pickled into the pipe with the rest of the outcome.

Cleanup. Segments belong to the caller's process. A call's segments that are not cached
are deleted when the call ends and every chunk that uses them is done (a worker that dies
fails its chunk, which counts as done); result segments that no caller claimed (a chunk
that failed, timed out or was killed) are deleted then too. Segments are registered with
loky's resource tracker before their file exists, which deletes what is left if the
caller itself is killed, and the cache is emptied at exit. Space is reserved with
``posix_fallocate`` before a segment is written or mapped: a full ``/dev/shm`` is an
``ENOSPC`` that falls back to the temporary folder, never a SIGBUS.

Why files rather than :class:`multiprocessing.shared_memory.SharedMemory`: on Python
< 3.13 attaching to a ``SharedMemory`` registers it with the *worker's* resource tracker,
which then deletes it (and warns about a "leak") when the worker exits.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import dataclasses
import errno
import glob
import io
import mmap
import operator
import os
import pickle
import secrets
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import cloudpickle
import numpy as np
from numpy.typing import DTypeLike

from ..._runner import ChunkOutcome, ChunkTask

__all__ = [
    "CACHE_MAX_BYTES",
    "CACHE_MAX_ENTRIES",
    "MIN_SHARED_BYTES",
    "SEGMENT_PREFIX",
    "SharedArrayRef",
    "SharedArrays",
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
#: segments kept for reuse across calls, at most (least recently used first out)
CACHE_MAX_ENTRIES = 32
#: bytes of segments kept for reuse across calls, at most; ``None``: half of ``/dev/shm``, at most 4 GiB
CACHE_MAX_BYTES: int | None = None
#: comparisons larger than this are split over a few threads (``memcmp`` releases the GIL)
_PARALLEL_COMPARE_BYTES = 64 << 20


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


def _delete_if_ours(path: str, owner: int) -> None:
    # A child forked from the caller (multiprocessing's fork, say) inherits its arrays and
    # their finalizers; the segments stay the caller's.
    if os.getpid() == owner:
        _untrack_and_delete(path)


def _reserve(fd: int, nbytes: int) -> None:
    """Give the file ``nbytes`` bytes of real storage now, so that writing through a mapping cannot fail.

    ``ftruncate`` alone reserves nothing on tmpfs: a mapping of a file whose pages cannot
    be allocated later kills the process with SIGBUS. ``posix_fallocate`` fails with
    ``ENOSPC`` here instead, where it can be handled.
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        try:
            allocate(fd, 0, nbytes)
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, nbytes)


#: errors of ``/dev/shm`` itself (full, read-only, not ours) after which the temporary folder is tried
_SHM_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


def _new_segment(nbytes: int, fill: Callable[[int], None]) -> str:
    """Create a segment of ``nbytes`` reserved bytes, let ``fill(fd)`` write it, and return its path."""
    folder = _segment_folder(nbytes)
    for attempt in (1, 2):
        path = os.path.join(folder, f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        fd = -1
        try:
            # Tracked before the file exists, and everything in one try: a Ctrl-C at any
            # point leaves no file behind, and a SIGKILL leaves one the tracker deletes.
            _track(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            _reserve(fd, nbytes)
            fill(fd)
        except OSError as error:
            _untrack_and_delete(path)
            # /dev/shm is full (perhaps filled by another process since the check), or unusable.
            if attempt == 1 and folder == SHM_FOLDER and error.errno in _SHM_ERRNOS:
                _warn_fallback(nbytes, _shm_free_bytes())
                folder = tempfile.gettempdir()
                continue
            raise
        except BaseException:
            _untrack_and_delete(path)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return path
    raise AssertionError("unreachable")  # pragma: no cover


def _write_bytes(fd: int, address: int, nbytes: int) -> None:
    # pwrite from the array's own memory: no temporary copy.
    source = memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")
    written = 0
    while written < nbytes:
        written += os.pwrite(fd, source[written:], written)


class _Libc:
    """``memcmp``, ``mmap`` and ``munmap`` through ctypes, which releases the GIL while they run."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.memcmp = libc.memcmp
        self.memcmp.restype = ctypes.c_int
        self.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.munmap = libc.munmap
        self.munmap.restype = ctypes.c_int
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


_libc_instance: _Libc | None = None


def _libc() -> _Libc:
    global _libc_instance
    if _libc_instance is None:
        _libc_instance = _Libc()
    return _libc_instance


def _address_of(mapping: mmap.mmap) -> int:
    return int(np.frombuffer(mapping, dtype=np.uint8).ctypes.data)


def _same_bytes(first: int, second: int, nbytes: int) -> bool:
    """Whether ``nbytes`` bytes at two addresses are equal (``memcmp``, split over threads when large)."""
    memcmp = _libc().memcmp
    parts = min(4, os.cpu_count() or 1) if nbytes >= _PARALLEL_COMPARE_BYTES else 1
    if parts == 1:
        return bool(memcmp(first, second, nbytes) == 0)
    step = -(-nbytes // parts)
    equal = [True] * parts

    def compare(i: int) -> None:
        start = i * step
        length = min(step, nbytes - start)
        equal[i] = memcmp(first + start, second + start, length) == 0

    threads = [threading.Thread(target=compare, args=(i,), name="conc-ml-compare") for i in range(1, parts)]
    for thread in threads:
        thread.start()
    compare(0)
    for thread in threads:
        thread.join()
    return all(equal)


# -- references and what a worker does with them ---------------------------------------


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


@dataclasses.dataclass(slots=True)
class _WorkerMapping:
    mapping: mmap.mmap
    identity: tuple[int, int, int]


#: the segments this process has mapped, by path: mapped once, kept while the file exists
_worker_maps: dict[str, _WorkerMapping] = {}
_worker_lock = threading.Lock()
_reaper: threading.Thread | None = None
#: seconds between two looks for deleted segments
_REAP_INTERVAL = 1.0


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size)


def _tolerate_held_mappings() -> None:
    # In a loky worker only (a dask worker, say, has no such check to tell).
    if "joblib.externals.loky.process_executor" in sys.modules:
        from ._loky import tolerate_in_worker

        tolerate_in_worker(sum(len(entry.mapping) for entry in _worker_maps.values()))


def _reap_deleted_segments() -> None:
    """Drop the mappings of segments whose file is gone, so that their memory is freed."""
    global _reaper
    while True:
        with _worker_lock:
            for path, entry in list(_worker_maps.items()):
                try:
                    alive = _identity(os.stat(path)) == entry.identity
                except OSError:
                    alive = False
                if not alive:
                    # Only forgotten, not closed: views a chunk still holds keep it mapped.
                    del _worker_maps[path]
            _tolerate_held_mappings()
            if not _worker_maps:
                _reaper = None
                return
        threading.Event().wait(_REAP_INTERVAL)


def _reset_after_fork() -> None:
    global _worker_lock, _reaper
    _worker_lock = threading.Lock()
    _reaper = None
    _worker_maps.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _created_here(path: str) -> bool:
    return os.path.basename(path).startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")


def _map_read_only(path: str, size: int) -> mmap.mmap:
    global _reaper
    # The caller's own segments are not kept: it reads them through its arrays.
    keep = not _created_here(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        identity = _identity(os.fstat(fd))
        if keep:
            with _worker_lock:
                entry = _worker_maps.get(path)
                if entry is not None and entry.identity == identity and len(entry.mapping) >= size:
                    return entry.mapping
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    if keep:
        with _worker_lock:
            _worker_maps[path] = _WorkerMapping(mapping, identity)
            _tolerate_held_mappings()
            if _reaper is None:
                _reaper = threading.Thread(target=_reap_deleted_segments, name="conc-ml-segment-reaper", daemon=True)
                _reaper.start()
    return mapping


def attach(
    path: str, size: int, layout: tuple[np.dtype[Any], tuple[int, ...], tuple[int, ...], int]
) -> np.ndarray[Any, Any]:
    """Map the segment at ``path`` read-only (once per process) and return the view ``layout`` describes.

    :param path: the segment's file.
    :param size: the segment's length in bytes.
    :param layout: the view's dtype, shape, strides and byte offset in the segment.
    """
    dtype, shape, strides, offset = layout
    # The view keeps the mapping alive; it is unmapped when the last view is gone.
    return np.ndarray(shape, dtype=dtype, buffer=_map_read_only(path, size), offset=offset, strides=strides)


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


# -- shared_array ------------------------------------------------------------------------


class _SegmentMap(mmap.mmap):
    """The caller's writable mapping of a :func:`shared_array` segment."""

    path: str
    address: int


def _shape_of(shape: object) -> tuple[int, ...]:
    what = (
        "shared_array accepts a shape (an int or a tuple of ints, as numpy.zeros) with an optional dtype, "
        "or an existing numpy.ndarray to copy"
    )
    if isinstance(shape, bool) or not isinstance(shape, int | np.integer | tuple | list):
        raise TypeError(f"{what}; got {type(shape).__module__}.{type(shape).__qualname__}")
    if isinstance(shape, int | np.integer):
        return (operator.index(shape),)
    dims = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
            raise TypeError(f"{what}; got a shape with an item of type {type(dim).__qualname__}: {shape!r}")
        dims.append(operator.index(dim))
    return tuple(dims)


def shared_array(
    shape: int | tuple[int, ...] | np.ndarray[Any, Any], dtype: DTypeLike | None = None
) -> np.ndarray[Any, Any]:
    """An array in shared memory: process workers read it with no copy.

    ``shared_array(shape, dtype)`` is zero-filled, like :func:`numpy.zeros`; fill it in place
    (``a[:] = ...``, ``np.copyto(a, x)``, ``out=a``). ``shared_array(x)`` with an existing
    array returns a C-ordered copy of it in shared memory. Pass it, or views of it, to a
    ``@parallel`` function on the ``process`` backend. Its memory is freed when the array
    and every view of it are garbage collected.

    :param shape: the array's shape, or a numpy array to copy.
    :param dtype: the array's dtype (default ``float64``, or the copied array's); it must
        not hold Python objects.
    :raises TypeError: if ``shape`` is neither a shape nor a :class:`numpy.ndarray`, or the
        dtype holds Python objects (they cannot be shared).
    :raises ValueError: if ``shape`` has a negative dimension.
    """
    source: np.ndarray[Any, Any] | None = None
    if isinstance(shape, np.ndarray):
        if type(shape) not in (np.ndarray, np.memmap):
            raise TypeError(
                f"shared_array copies a plain numpy.ndarray, got a {type(shape).__qualname__} "
                "(its extra parts, such as a mask, would be lost); pass numpy.asarray(x) if that is what you want"
            )
        source = shape
        dims = source.shape
        kind = source.dtype if dtype is None else np.dtype(dtype)
    else:
        dims = _shape_of(shape)
        kind = np.dtype(np.float64 if dtype is None else dtype)
    if kind.hasobject:
        raise TypeError(f"shared_array needs a dtype without Python objects, got {kind}; use numpy.empty instead")
    if any(d < 0 for d in dims):
        raise ValueError(f"shared_array needs non-negative dimensions, got shape {dims}")
    nbytes = int(np.prod(dims, dtype=np.int64)) * kind.itemsize
    if nbytes == 0:
        return np.zeros(dims, dtype=kind)
    mapped: dict[str, _SegmentMap] = {}

    def allocate(fd: int) -> None:
        # _new_segment reserved the space: writing through this mapping cannot SIGBUS.
        mapped["map"] = _SegmentMap(fd, nbytes)

    path = _new_segment(nbytes, allocate)
    segment = mapped["map"]
    segment.path = path
    array: np.ndarray[Any, Any] = np.ndarray(dims, dtype=kind, buffer=segment)
    segment.address = array.ctypes.data
    weakref.finalize(segment, _delete_if_ours, path, os.getpid())
    if source is not None:
        np.copyto(array, source, casting="unsafe" if dtype is not None else "no")
    return array


def _segment_map_of(array: np.ndarray[Any, Any]) -> _SegmentMap | None:
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, _SegmentMap) else None


def _root_of(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array at the end of ``array``'s chain of bases: the one whose lifetime keeps the memory."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


# -- segments of the caller, and the cache that keeps them across calls -------------------


@dataclasses.dataclass(slots=True, eq=False)
class _Segment:
    path: str
    #: the bytes ``[low, high)`` of the source's memory it holds
    low: int
    high: int
    #: the caller's read-only mapping, to compare the source with (None once deleted)
    view: mmap.mmap | None
    #: the array owning the source memory, while it lives (None: not cacheable)
    root: weakref.ref[np.ndarray[Any, Any]] | None
    #: open calls that use it
    pins: int = 0
    cached: bool = False
    #: ``id`` of the root, the cache's key
    key: int = 0
    #: the process that made it (a forked child inherits the cache, not the segments)
    owner: int = dataclasses.field(default_factory=os.getpid)

    @property
    def nbytes(self) -> int:
        return self.high - self.low

    def delete(self) -> None:
        if self.view is not None:
            with contextlib.suppress(BufferError):
                self.view.close()
            self.view = None
        _delete_if_ours(self.path, self.owner)


def _default_cache_bytes() -> int:
    try:
        stats = os.statvfs(SHM_FOLDER)
        half = stats.f_blocks * stats.f_frsize // 2
    except OSError:
        half = 1 << 30
    return min(4 << 30, half)


class _SegmentCache:
    """Segments of arrays that live on, kept for the next call (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: id of a source's root -> its segments
        self._by_root: dict[int, list[_Segment]] = {}
        #: cached segments, least recently used first
        self._recent: collections.OrderedDict[_Segment, None] = collections.OrderedDict()
        self._bytes = 0
        #: roots that died while the lock was held (by this thread or another)
        self._dead: list[int] = []
        self._owner = os.getpid()

    @property
    def paths(self) -> list[str]:
        """Paths of the cached segments."""
        with self._lock:
            return [segment.path for segment in self._recent]

    def acquire(self, root: np.ndarray[Any, Any], low: int, high: int) -> _Segment:
        """A segment holding the bytes ``[low, high)`` of ``root``'s memory as they are now, pinned for a call."""
        with self._locked():
            for segment in self._by_root.get(id(root), []):
                if segment.low > low or high > segment.high or segment.root is None or segment.root() is not root:
                    continue
                assert segment.view is not None
                if _same_bytes(_address_of(segment.view), segment.low, segment.nbytes):
                    segment.pins += 1
                    self._recent.move_to_end(segment)
                    return segment
                if segment.pins == 0:
                    # Changed in place since the last call, and no call reads it: rewrite it.
                    fd = os.open(segment.path, os.O_WRONLY)
                    try:
                        _write_bytes(fd, segment.low, segment.nbytes)
                    finally:
                        os.close(fd)
                    segment.pins += 1
                    self._recent.move_to_end(segment)
                    return segment
                # Changed, and a running call still reads the old bytes: it keeps them.
                self._forget(segment)
                break
            segment = _Segment(_copy_into_segment(low, high), low, high, None, None, pins=1)
            try:
                segment.view = _map_for_comparing(segment.path, segment.nbytes)
            except BaseException:
                segment.delete()
                raise
            self._keep(segment, root)
            return segment

    def release(self, segment: _Segment) -> None:
        """A call is done with ``segment``: delete it if nothing else needs it."""
        with self._locked():
            segment.pins -= 1
            if segment.pins == 0 and not segment.cached:
                segment.delete()

    def clear(self) -> None:
        """Forget every cached segment, deleting those no call uses."""
        with self._locked():
            for segment in list(self._recent):
                self._forget(segment)

    def _keep(self, segment: _Segment, root: np.ndarray[Any, Any]) -> None:
        limit = CACHE_MAX_BYTES if CACHE_MAX_BYTES is not None else _default_cache_bytes()
        if segment.nbytes > limit or CACHE_MAX_ENTRIES < 1:
            return
        key = id(root)
        # One finalizer per segment: a root that died while the lock was held may still
        # have its entries here under an id that a new array now has.
        weakref.finalize(root, self._root_died, key)
        segment.root = weakref.ref(root)
        segment.key = key
        segment.cached = True
        self._by_root.setdefault(key, []).append(segment)
        self._recent[segment] = None
        self._bytes += segment.nbytes
        while self._bytes > limit or len(self._recent) > CACHE_MAX_ENTRIES:
            self._forget(next(iter(self._recent)))

    def _forget(self, segment: _Segment) -> None:
        """Out of the cache; deleted now, or by the last call that uses it."""
        if not segment.cached:
            return
        segment.cached = False
        del self._recent[segment]
        self._bytes -= segment.nbytes
        siblings = self._by_root.get(segment.key, [])
        if segment in siblings:
            siblings.remove(segment)
        if not siblings:
            self._by_root.pop(segment.key, None)
        if segment.pins == 0:
            segment.delete()

    def _root_died(self, key: int) -> None:
        # A finalizer runs wherever the last reference went, perhaps inside a locked
        # section of this very cache: then the work is left to that section's end.
        if not self._lock.acquire(blocking=False):
            self._dead.append(key)
            return
        try:
            self._dead.append(key)
            self._drop_dead()
        finally:
            self._lock.release()

    def _drop_dead(self) -> None:
        while self._dead:
            key = self._dead.pop()
            for segment in list(self._by_root.get(key, [])):
                # A new array may have the dead one's id already: only its segments go.
                if segment.root is None or segment.root() is None:
                    self._forget(segment)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        with self._lock:
            try:
                yield
            finally:
                self._drop_dead()

    def _at_exit(self) -> None:
        if os.getpid() == self._owner:
            self.clear()


def _copy_into_segment(low: int, high: int) -> str:
    return _new_segment(high - low, lambda fd: _write_bytes(fd, low, high - low))


def _map_for_comparing(path: str, nbytes: int) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


_cache = _SegmentCache()
atexit.register(_cache._at_exit)


def _eligible(value: object, min_bytes: int) -> bool:
    return (
        type(value) in (np.ndarray, np.memmap)
        and not value.dtype.hasobject  # type: ignore[attr-defined]
        and value.nbytes >= min_bytes  # type: ignore[attr-defined]
    )


class SharedArrays:
    """The segments of one call: each array written once (or found in the cache), referenced by every chunk."""

    def __init__(self, min_bytes: int = MIN_SHARED_BYTES):
        self.min_bytes = min_bytes
        self._segments: list[_Segment] = []
        #: arrays the call's segments were made from, kept alive so that their addresses keep meaning these bytes
        self._sources: list[np.ndarray[Any, Any]] = []
        self._lock = threading.Lock()

    @property
    def paths(self) -> list[str]:
        """Paths of the segments this call uses."""
        with self._lock:
            return [segment.path for segment in self._segments]

    def pickle(self, value: Any) -> bytes:
        """``value`` pickled (with cloudpickle) with each large array in it replaced by a :class:`SharedArrayRef`."""
        buffer = io.BytesIO()
        _SharingPickler(buffer, self).dump(value)
        return buffer.getvalue()

    def share(self, value: Any) -> Any:
        """A :class:`SharedArrayRef` for a large numpy array; any other value unchanged.

        Object arrays and ndarray subclasses other than :class:`numpy.memmap` are returned
        unchanged (they are pickled).

        :param value: a value a chunk receives.
        """
        if not _eligible(value, self.min_bytes):
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
                segment = _cache.acquire(_root_of(array), low, high)
                self._segments.append(segment)
                self._sources.append(array)
        return _ref(segment.path, segment.nbytes, array, segment.low)

    def release(self) -> None:
        """The call is done: give its segments back (deleted unless cached)."""
        with self._lock:
            segments, self._segments, self._sources = self._segments, [], []
        for segment in segments:
            _cache.release(segment)


class _SharingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with every large numpy array in the stream sent through a segment."""

    def __init__(self, file: io.BytesIO, arrays: SharedArrays):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._arrays = arrays

    def reducer_override(self, obj: Any) -> Any:
        if _eligible(obj, self._arrays.min_bytes):
            shared = self._arrays.share(obj)
            if shared is not obj:
                return shared.__reduce__()
        return super().reducer_override(obj)


# -- results -------------------------------------------------------------------------------


class _ResultPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """In a worker: cloudpickle, with every large array of a result written into a segment of its own."""

    def __init__(self, file: io.BytesIO, prefix: str, min_bytes: int, created: list[str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._prefix = prefix
        self._min_bytes = min_bytes
        self._created = created

    def reducer_override(self, obj: Any) -> Any:
        if _eligible(obj, self._min_bytes):
            reduced = self._to_segment(obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)

    def _to_segment(self, array: np.ndarray[Any, Any]) -> tuple[Any, ...] | None:
        if not (array.flags.c_contiguous or array.flags.f_contiguous):
            array = np.ascontiguousarray(array)
        nbytes = array.nbytes
        free = _shm_free_bytes()
        if free is None or free < nbytes + SHM_HEADROOM:
            return None  # no room: pickled into the pipe like any other object
        path = f"{self._prefix}{secrets.token_hex(8)}"
        fd = -1
        try:
            # Tracked first, with the caller's tracker (this worker's): killed callers take
            # their workers with them, and the tracker then deletes what nobody claimed.
            _track(path)
            self._created.append(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            _reserve(fd, nbytes)
            _write_bytes(fd, array.ctypes.data, nbytes)
        except OSError:
            self._created.remove(path)
            _untrack_and_delete(path)
            return None
        finally:
            if fd >= 0:
                os.close(fd)
        return (_claim_result, (path, nbytes, array.dtype, array.shape, array.strides))


def _claim_result(
    path: str, nbytes: int, dtype: np.dtype[Any], shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """In the caller: map a result segment writable and delete its file, so the array is the caller's alone."""
    libc = _libc()
    fd = os.open(path, os.O_RDWR)
    try:
        address = libc.mmap(None, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
        # The mapping keeps the memory; nobody else can reach it now.
        _untrack_and_delete(path)
    if address is None or address == ctypes.c_void_p(-1).value:
        code = ctypes.get_errno()
        raise OSError(code, f"conc-ml could not map a result of {nbytes} bytes: {os.strerror(code)}")
    # No mmap.mmap: it would hold a file descriptor for as long as the array lives.
    buffer = (ctypes.c_char * nbytes).from_address(address)
    weakref.finalize(buffer, libc.munmap, address, nbytes)
    memory: Any = buffer  # a buffer numpy reads, which its stubs do not know ctypes arrays to be
    return np.ndarray(shape, dtype=dtype, buffer=np.frombuffer(memory, dtype=np.uint8), strides=strides)


class _OutgoingOutcome:
    """A worker's outcome on its way back: large arrays in it travel through segments."""

    __slots__ = ("min_bytes", "outcome", "prefix")

    def __init__(self, outcome: ChunkOutcome, prefix: str, min_bytes: int):
        self.outcome = outcome
        self.prefix = prefix
        self.min_bytes = min_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        created: list[str] = []
        buffer = io.BytesIO()
        try:
            _ResultPickler(buffer, self.prefix, self.min_bytes, created).dump(self.outcome)
        except BaseException:
            for path in created:
                _untrack_and_delete(path)
            raise
        return (pickle.loads, (buffer.getvalue(),))


def run_shared_chunk(
    run: Callable[[ChunkTask], ChunkOutcome], payload: bytes, index: int, result_prefix: str, min_bytes: int
) -> _OutgoingOutcome:
    """In a worker: unpickle a task made by :meth:`SharedArrays.pickle`, run it, and send its outcome back.

    :param run: what runs the task (:func:`conc_ml._runner.run_chunk`).
    :param payload: the pickled task.
    :param index: the chunk's position, for the error message when the task cannot be unpickled.
    :param result_prefix: the path prefix of the result segments (the caller deletes what it did not claim).
    :param min_bytes: result arrays from this size on travel through segments.
    :raises SerializationError: if the task cannot be unpickled here.
    """
    from ...errors import SerializationError

    try:
        task = pickle.loads(payload)
    except Exception as error:
        raise SerializationError(
            f"an argument of chunk {index} was pickled but cannot be unpickled in the worker "
            f"({type(error).__name__}: {error}); pass objects whose class the worker can import and rebuild, "
            "or use backend='thread'"
        ) from None
    return _OutgoingOutcome(run(task), result_prefix, min_bytes)


def _delete_unclaimed(prefix: str) -> None:
    # Each was tracked by the worker that wrote it.
    for path in glob.glob(glob.escape(prefix) + "*"):
        with contextlib.suppress(OSError):
            _untrack_and_delete(path)


class SharingExecutor(Executor):
    """A process pool's executor for one call, sending large arrays through shared memory.

    A chunk submitted as ``submit(run_chunk, task)`` is pickled here by
    :class:`SharedArrays` and run by :func:`run_shared_chunk`. The call's segments are
    given back when :meth:`close` was called and every chunk submitted through this
    executor is done (finished, failed, cancelled, or lost with its worker).
    """

    def __init__(self, pool: Executor, min_bytes: int = MIN_SHARED_BYTES):
        self.pool = pool
        self.arrays = SharedArrays(min_bytes)
        self._lock = threading.Lock()
        #: chunks in flight and the prefix of their result segments
        self._in_flight: dict[Future[Any], str] = {}
        self._closing = False
        self._released = False
        folder = SHM_FOLDER
        self._result_prefix = os.path.join(folder, f"{SEGMENT_PREFIX}{os.getpid()}-r{secrets.token_hex(4)}-")
        self._submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs or len(args) != 1 or not isinstance(args[0], ChunkTask):
            return self.pool.submit(fn, *args, **kwargs)
        task: ChunkTask = args[0]
        try:
            payload = self.arrays.pickle(task)
        except Exception as error:
            # As if the pool had failed to pickle it: the chunk's future carries the error.
            failed: Future[Any] = Future()
            failed.set_exception(error)
            return failed
        with self._lock:
            self._submitted += 1
            prefix = f"{self._result_prefix}{self._submitted}-"
        future = self.pool.submit(run_shared_chunk, fn, payload, task.index, prefix, self.arrays.min_bytes)
        with self._lock:
            self._in_flight[future] = prefix
        future.add_done_callback(self._chunk_done)
        return future

    def _chunk_done(self, future: Future[Any]) -> None:
        # Everything under the one lock, deletions included: close() must not return while a
        # callback is half-way through deleting a segment.
        with self._lock:
            self._finish(future)

    def _finish(self, future: Future[Any]) -> None:
        # Called by the future's callback, or earlier by close(): whichever comes first.
        prefix = self._in_flight.pop(future, None)
        if prefix is not None and (future.cancelled() or future.exception() is not None):
            _delete_unclaimed(prefix)
        if self._closing and not self._in_flight and not self._released:
            self._released = True
            self.arrays.release()
            _delete_unclaimed(self._result_prefix)

    def close(self) -> None:
        """Give the call's segments back now, or as soon as its last running chunk is done."""
        with self._lock:
            self._closing = True
            # A future is done before its callbacks run: a call that got every result must
            # not return with their segments still there.
            for future in [f for f in self._in_flight if f.done()]:
                self._finish(future)
            if not self._in_flight and not self._released:
                self._released = True
                self.arrays.release()
                _delete_unclaimed(self._result_prefix)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.close()
