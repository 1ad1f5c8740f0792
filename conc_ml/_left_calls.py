"""Chunks of a call its caller has left are skipped by process workers, not run.

After ``break`` out of ``.stream()`` or a chunk's failure, the engine cancels the chunks
still queued. loky cannot cancel those it has already handed to its call queue (up to
``workers + 1`` beyond the running ones), so they would start after the caller left,
delaying the next call. Each chunk sent to another process is therefore wrapped in
:func:`run_unless_left`, which first looks for the call's flag file: the engine creates it
when it leaves the call with such chunks in flight, and deletes it once they are all done
(or at exit). One ``stat`` per chunk; nothing at all while the flag does not exist.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Collection

from ._runner import ChunkOutcome, ChunkTask

__all__ = ["LeftCallFlag", "run_unless_left"]

_numbers = itertools.count()
_raised: set[str] = set()
_raised_lock = threading.Lock()


def _flag_folder() -> str:
    # /dev/shm when there is one: a stat there never touches a disk.
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def run_unless_left(flag: str, run: Callable[[ChunkTask], ChunkOutcome], task: ChunkTask) -> ChunkOutcome:
    """In a worker: run ``task`` with ``run``, unless the call's caller has left it (``flag`` exists)."""
    if os.path.exists(flag):
        return ChunkOutcome(task.index, None, None, "skipped: the caller had left the call")
    return run(task)


class LeftCallFlag:
    """The flag of one call: wraps what its chunks run, and is raised when the call is left."""

    __slots__ = ("path",)

    def __init__(self) -> None:
        self.path = os.path.join(_flag_folder(), f"conc-ml-{os.getpid()}-left-{next(_numbers)}")

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
        with _raised_lock:
            _raised.add(self.path)
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
    with contextlib.suppress(OSError):
        os.unlink(path)
    with _raised_lock:
        _raised.discard(path)


@atexit.register
def _lower_all() -> None:
    with _raised_lock:
        paths = list(_raised)
    for path in paths:
        _lower(path)
