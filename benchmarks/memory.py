"""Peak memory of a process and all its descendants, sampled: PSS plus their ``/dev/shm`` files."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator

import psutil

__all__ = ["PeakTreeMemory", "shm_bytes_of"]

SHM_FOLDER = "/dev/shm"


def _private_and_mapped_bytes(pid: int) -> int:
    """PSS of ``pid`` without its share of shared-memory (tmpfs) pages, which are counted by file."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Shmem"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def _allocated(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def shm_bytes_of(pids: Iterable[int]) -> int:
    """Bytes allocated in ``/dev/shm`` by files or folders whose name carries one of ``pids``.

    conc-ml (``conc-ml-PID-...``), joblib (``joblib_memmapping_folder_PID_...``) and loky
    (``sem.loky-PID-...``) name what they create after the creating process.
    """
    wanted = {str(pid) for pid in pids}
    total = 0
    try:
        entries = list(os.scandir(SHM_FOLDER))
    except OSError:
        return 0
    for entry in entries:
        if not wanted.intersection(re.findall(r"\d+", entry.name)):
            continue
        try:
            total += _allocated(entry.path) if entry.is_dir() else entry.stat().st_blocks * 512
        except OSError:
            continue
    return total


class PeakTreeMemory:
    """Samples the memory of a process tree in a thread, keeping the peak.

    Memory = the sum of each process's proportional set size (PSS counts a page shared by
    n processes as 1/n in each, so forked or mapped pages count once and private copies
    fully), except that shared-memory pages are counted by their files in ``/dev/shm``
    instead: a segment nobody maps at the moment of the sample still takes RAM.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_bytes = 0

    @contextlib.contextmanager
    def sampling(self, pid: int) -> Iterator[None]:
        """Sample the tree rooted at ``pid`` until the block ends."""
        root = psutil.Process(pid)
        stop = threading.Event()

        def sample_until_stopped() -> None:
            while not stop.is_set():
                self.peak_bytes = max(self.peak_bytes, self.sample(root))
                stop.wait(self.interval)

        thread = threading.Thread(target=sample_until_stopped, name="memory-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)

    @staticmethod
    def sample(root: psutil.Process) -> int:
        """The tree's memory now, in bytes (processes that vanish meanwhile are skipped)."""
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += _private_and_mapped_bytes(process.pid)
            except (OSError, ValueError):
                continue
        return total + shm_bytes_of(process.pid for process in processes)
