"""A census of what a process holds: file descriptors, threads, child processes, segments, temp files.

Taken before and after some work, two censuses show what the work leaked. Only what the
process can be blamed for is counted (``/dev/shm`` and the temporary folder are shared
with every other process on the machine): entries whose names carry its pid.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Callable

import psutil

__all__ = ["Census", "is_fork_server", "is_resource_tracker", "settled_census", "take_census", "workers_of"]

SHM_FOLDER = "/dev/shm"


def _owned_name_prefixes(pid: int) -> tuple[str, ...]:
    # conc-ml's shared-memory segments, loky's semaphores and loky's temporary folders.
    return (f"conc-ml-{pid}-", f"sem.loky-{pid}-", f"loky-{pid}-")


def _owned_entries(folder: str, pid: int) -> frozenset[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return frozenset()
    prefixes = _owned_name_prefixes(pid)
    return frozenset(name for name in names if name.startswith(prefixes))


def is_resource_tracker(process: psutil.Process) -> bool:
    """Whether ``process`` is a resource tracker (loky's or multiprocessing's)."""
    # loky's (and multiprocessing's) resource tracker is started once and lives as long
    # as the caller: it is infrastructure, not a worker that leaked.
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def is_fork_server(process: psutil.Process) -> bool:
    """Whether ``process`` is conc-ml's fork server (the parent of the process workers)."""
    # Like the resource tracker, it lives as long as the caller; workers are forked from it.
    try:
        return any(
            "conc_ml.backends._process._preload" in part or "multiprocessing.forkserver" in part
            for part in process.cmdline()
        )
    except psutil.Error:
        return False


def workers_of(process: psutil.Process) -> list[psutil.Process]:
    """The descendants of ``process`` that run chunks: not its resource tracker or fork server."""
    return [
        child
        for child in process.children(recursive=True)
        if not is_resource_tracker(child) and not is_fork_server(child)
    ]


def _live_children() -> frozenset[int]:
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE or is_resource_tracker(child) or is_fork_server(child):
                continue
        except psutil.Error:
            continue
        pids.add(child.pid)
    return frozenset(pids)


def _open_fds() -> frozenset[str]:
    entries = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listing the folder itself, closed by now
        entries.add(f"{fd} -> {target}")
    return frozenset(entries)


@dataclasses.dataclass(frozen=True)
class Census:
    """What one process holds at one moment."""

    fds: frozenset[str]
    threads: frozenset[str]
    children: frozenset[int]
    segments: frozenset[str]
    temp_files: frozenset[str]

    def leaked_since(self, before: Census) -> dict[str, list[str]]:
        """What this census holds that ``before`` did not, by kind (empty kinds left out).

        File descriptors are compared by count and listed by target, since a number can be
        reused for another file.
        """
        leaks: dict[str, list[str]] = {}
        if len(self.fds) > len(before.fds):
            leaks["fds"] = sorted(self.fds - before.fds)
        for kind in ("threads", "children", "segments", "temp_files"):
            extra = getattr(self, kind) - getattr(before, kind)
            if extra:
                leaks[kind] = sorted(map(str, extra))
        return leaks


def take_census() -> Census:
    """Count what the current process holds now."""
    pid = os.getpid()
    return Census(
        fds=_open_fds(),
        threads=frozenset(f"{t.name} ({t.ident})" for t in threading.enumerate() if t.is_alive()),
        children=_live_children(),
        segments=_owned_entries(SHM_FOLDER, pid),
        temp_files=_owned_entries(tempfile.gettempdir(), pid),
    )


def settled_census(before: Census, *, within: float = 10.0, settle: Callable[[], None] | None = None) -> Census:
    """A census taken once nothing more has leaked since ``before``, or after ``within`` seconds.

    Threads and processes end a moment after the call that stopped them returns; polling
    (bounded) instead of sleeping a fixed time keeps the check fast and never flaky.

    :param before: the census to compare with.
    :param within: seconds to wait at most for things to end.
    :param settle: called first, e.g. to shut down a pool that is deliberately kept warm.
    """
    if settle is not None:
        settle()
    deadline = time.monotonic() + within
    while True:
        after = take_census()
        if not after.leaked_since(before) or time.monotonic() >= deadline:
            return after
        time.sleep(0.05)
