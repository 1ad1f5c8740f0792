"""Peak proportional set size (PSS) of a process and all its descendants, sampled."""

from __future__ import annotations

import threading

import psutil

__all__ = ["PeakTreeMemory"]


class PeakTreeMemory:
    """Samples the summed PSS of ``pid``'s process tree in a thread until stopped.

    PSS counts a page shared by n processes as 1/n in each, so the sum over a tree counts
    shared memory (``/dev/shm`` segments, memory maps, forked pages) once, and each private
    copy fully: the honest measure of what a run costs the machine.
    """

    def __init__(self, pid: int, interval: float = 0.02):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="pss-sampler", daemon=True)

    def __enter__(self) -> PeakTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> int:
        """The tree's PSS now, in bytes (processes that vanish meanwhile are skipped)."""
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                continue
        return total

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop.wait(self.interval)
