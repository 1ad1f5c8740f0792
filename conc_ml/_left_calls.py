"""Chunks of a call its caller has left are skipped by process workers, not run.

After ``break`` out of ``.stream()`` or a chunk's failure, the engine cancels the chunks
still queued. loky cannot cancel those it has already handed to its call queue (up to
``workers + 1`` beyond the running ones), so they would start after the caller left,
delaying the next call. Each chunk sent to another process is therefore wrapped in
:func:`run_unless_left`, which first looks for the call's flag file: the engine creates it
when it leaves the call with such chunks in flight, and deletes it once they are all done
(or at exit). One ``stat`` per chunk; nothing at all while the flag does not exist.

A stream the main thread left suspended (``s = f.stream(x)``, then ``break``, and the
script ends) is a left call too, though no ``break`` closed it: :func:`close_left_streams`
closes it at exit, while the interpreter can still run its clean-up, rather than during the
teardown of modules (where any import fails) after loky's exit handler has waited for its
running chunks.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Collection, Generator
from typing import Any

from ._runner import ChunkOutcome, ChunkTask

__all__ = ["LeftCallFlag", "StreamConsumer", "close_left_streams", "run_unless_left", "watch_stream"]

_numbers = itertools.count()
#: each raised flag, and what undoes its tracking
_raised: dict[str, Callable[[str], None]] = {}
_raised_lock = threading.Lock()


def _untracked(path: str) -> None:
    """The ``track``/``untrack`` of a flag that no resource tracker looks after."""


def _flag_folder() -> str:
    # /dev/shm when there is one: a stat there never touches a disk.
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def run_unless_left(flag: str, run: Callable[[ChunkTask], ChunkOutcome], task: ChunkTask) -> ChunkOutcome:
    """In a worker: run ``task`` with ``run``, unless the call's caller has left it (``flag`` exists)."""
    if os.path.exists(flag):
        return ChunkOutcome(task.index, None, None, "skipped: the caller had left the call")
    return run(task)


class LeftCallFlag:
    """The flag of one call: wraps what its chunks run, and is raised when the call is left.

    :param track: called with the flag's path once the file is created, so that a
        resource tracker deletes it if this process is killed before it lowers the flag;
    :param untrack: called with the path once the file is deleted.
    """

    __slots__ = ("path", "track", "untrack")

    def __init__(self, track: Callable[[str], None] = _untracked, untrack: Callable[[str], None] = _untracked) -> None:
        self.path = os.path.join(_flag_folder(), f"conc-ml-{os.getpid()}-left-{next(_numbers)}")
        self.track = track
        self.untrack = untrack

    def wrap(self, run: Callable[[ChunkTask], ChunkOutcome]) -> Callable[[ChunkTask], ChunkOutcome]:
        """What to submit instead of ``run`` for a chunk of this call."""
        return functools.partial(run_unless_left, self.path, run)

    def raise_for(self, in_flight: Collection[concurrent.futures.Future[ChunkOutcome]]) -> None:
        """Tell the workers to skip this call's chunks; lower the flag once ``in_flight`` are done."""
        left = [future for future in in_flight if not future.done()]
        if not left:
            return
        try:
            with open(self.path, "x"):
                pass
        except OSError:
            return  # no flag: the chunks run, as they would without one
        # Tracked once it is up, not before: a worker may pick the next chunk meanwhile.
        self.track(self.path)
        with _raised_lock:
            _raised[self.path] = self.untrack
        remaining = [len(left)]
        lock = threading.Lock()

        def one_done(_: object) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                _lower(self.path)

        for future in left:
            future.add_done_callback(one_done)


def _lower(path: str) -> None:
    # Once only, whoever comes first (the last chunk's callback, or the exit handler): a
    # second "untrack" would be an error in the tracker.
    with _raised_lock:
        untrack = _raised.pop(path, None)
    if untrack is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
    untrack(path)


@atexit.register
def _lower_all() -> None:
    with _raised_lock:
        paths = list(_raised)
    for path in paths:
        _lower(path)


class StreamConsumer:
    """The thread that last asked a stream for its next item (set by the stream's own body)."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None


_open_streams: weakref.WeakKeyDictionary[Generator[Any, None, None], StreamConsumer] = weakref.WeakKeyDictionary()


def watch_stream(stream: Generator[Any, None, None], consumer: StreamConsumer) -> None:
    """Have :func:`close_left_streams` close ``stream`` at exit if the main thread left it suspended."""
    _open_streams[stream] = consumer


def close_left_streams() -> None:
    """At exit: close the streams the main thread was consuming (nobody can resume them now).

    Called from an exit handler that runs before the threads are joined. While a thread of
    the program's own is still running, nothing is closed: it may read a stream the main
    thread started (the pools' own threads do not count).
    """
    main = threading.main_thread()
    if any(_may_read_streams(thread) for thread in threading.enumerate() if thread is not main):
        return
    for stream, consumer in list(_open_streams.items()):
        if consumer.thread is main and inspect.getgeneratorstate(stream) == inspect.GEN_SUSPENDED:
            with contextlib.suppress(Exception):
                stream.close()


def _may_read_streams(thread: threading.Thread) -> bool:
    pools = ("concurrent.futures", "joblib.externals.loky", "loky")
    return thread.is_alive() and not thread.daemon and not type(thread).__module__.startswith(pools)
