"""Where the memory of a process call goes: each process of the tree, after warm calls.

The ``medians`` workload's call (a ``--mb`` array, 400 MB by default, given whole to 64
strided-slice medians in 8 chunks on 2 process workers) is made ``--calls`` times, then
every process of the caller's tree is listed with its proportional set size (without its
share of shared-memory pages) and what it runs, and the caller's ``/dev/shm`` files by
size: the same accounting as the benchmark's peak memory, split by process. It shows what
the peak-memory ratios of ``python -m benchmarks`` are made of: the caller, the one shared
copy, the workers, and the helper processes (fork server, resource trackers) that a
forking ``multiprocessing.Pool`` does not have.

Run it as ``python -m benchmarks.process_tree`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
import psutil

from conc_ml import parallel, shared_array

from .memory import _private_and_mapped_bytes, shm_bytes_of
from .workloads import strided_medians

_MIB = 2**20


def _role(process: psutil.Process, caller: int) -> str:
    if process.pid == caller:
        return "caller"
    command = " ".join(process.cmdline())
    if "resource_tracker" in command:
        return "loky's resource tracker" if "loky" in command else "multiprocessing's resource tracker"
    # The fork server is the caller's child; the workers are the fork server's.
    return "fork server" if process.ppid() == caller else "worker"


def measure(*, mb: int, calls: int, workers: int, shared: bool) -> list[tuple[str, float]]:
    """Make the call ``calls`` times and return ``(what, MiB)`` for each process and the segments."""
    big = np.random.default_rng(0).standard_normal(mb * 1_000_000 // 8)
    if shared:
        big = shared_array(big)
    medians = parallel(backend="process", workers=workers, chunks=8, combine="concat")(strided_medians)
    for _ in range(calls):
        medians(list(range(64)), big, 64)
    caller = os.getpid()
    processes = [psutil.Process(caller), *psutil.Process(caller).children(recursive=True)]
    rows = [(_role(p, caller), _private_and_mapped_bytes(p.pid) / _MIB) for p in processes]
    rows.append(("/dev/shm files of the tree", shm_bytes_of(p.pid for p in processes) / _MIB))
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    """Run the measurement, print its table and return it.

    :param argv: command-line arguments (``sys.argv[1:]`` when ``None``).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.process_tree", description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=400, help="size of the broadcast array in MB (default 400)")
    parser.add_argument("--calls", type=int, default=2, help="calls before the sample (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="process workers (default 2)")
    parser.add_argument("--shared-array", action="store_true", help="create the array with conc_ml.shared_array")
    args = parser.parse_args(argv)
    for name in ("mb", "calls", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    rows = measure(mb=args.mb, calls=args.calls, workers=args.workers, shared=args.shared_array)
    lines = ["| process | memory |", "| --- | ---: |"]
    lines += [f"| {what} | {mib:,.1f} MiB |" for what, mib in rows]
    lines.append(f"| total | {sum(mib for _, mib in rows):,.1f} MiB |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
