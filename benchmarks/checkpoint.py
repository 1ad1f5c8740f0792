"""What ``checkpoint=`` costs: the same call with and without it, measured interleaved.

The call: ``--chunks`` chunks (64) on the ``process`` backend, each drawing from its
seeded stream and returning a ``--result-mb`` (1 MB) float64 array after ``--repeats``
sorts of it (the work: about 10 ms per sort on a free core). The input is split with one
``--result-mb`` block of rows per chunk, so the checkpoint also hashes as many bytes in
as it writes out.

Each round times the call without a checkpoint and with a fresh, empty one (every chunk
hashed, pickled, checksummed, written, ``fsync``-ed and renamed: the cost a first run
pays), in alternating order, then the same call again on the full folder (every chunk
loaded: what a re-run after a finished run pays). Medians over ``--rounds``; the overhead
is ``checkpoint / plain - 1``. On a busy machine that ratio is noisy, so the table also
gives the time the caller's thread spent in the checkpoint's lookups and writes (hashing,
pickling, writing, ``fsync``): it overlaps with the workers' computing, so it bounds the
overhead from above whatever the load. The folder is on the disk of ``--folder`` (default: a new
folder under the system's temporary folder), which matters: ``fsync`` on tmpfs is free.

Run it as ``python -m benchmarks.checkpoint`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conc_ml import parallel, warm_up
from conc_ml._checkpoint import CallLedger


def sorted_draws(rows: np.ndarray, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """One chunk: a result as large as its rows, after ``repeats`` sorts."""
    result = rows.ravel() + rng.standard_normal(rows.size)
    for _ in range(repeats):
        result = np.sort(result + rng.standard_normal(result.size))
    return result


def _timed(call: Callable[[], Any], cpu: list[float] | None = None) -> tuple[float, Any]:
    start, start_cpu = time.perf_counter(), time.process_time()
    value = call()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, value


class _Stopwatch:
    """Sums the time the caller spends in the checkpoint's lookups and writes."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def measure(*, chunks: int, result_mb: float, repeats: int, rounds: int, workers: int, folder: Path) -> dict[str, Any]:
    """Time the call without and with a checkpoint, interleaved; return the medians and more."""
    per_chunk = max(1, int(result_mb * 2**20 / 8))
    data = np.random.default_rng(0).standard_normal((chunks, per_chunk))
    plain = parallel(backend="process", chunks=chunks, workers=workers, seed=0, combine="concat")(sorted_draws)
    times: dict[str, list[float]] = {"plain": [], "checkpoint": [], "resume": []}
    caller_work: list[float] = []
    caller_cpu: dict[str, list[float]] = {"plain": [], "checkpoint": []}
    same = True
    stopwatch = _Stopwatch()
    # The caller's share: hashing inputs, pickling, writing and fsync-ing each chunk. It
    # overlaps with the workers' computing, so it bounds the overhead from above.
    originals = CallLedger.resume, CallLedger.keep
    CallLedger.resume = stopwatch.wrap(CallLedger.resume)  # type: ignore[method-assign]
    CallLedger.keep = stopwatch.wrap(CallLedger.keep)  # type: ignore[method-assign]
    try:
        plain(data, repeats)  # start the pool and import in the workers: not timed
        for round_index in range(rounds):
            store = folder / f"round-{round_index}"
            checkpointed = plain.options(checkpoint=store)
            order = ("plain", "checkpoint") if round_index % 2 == 0 else ("checkpoint", "plain")
            values = {}
            for name in order:
                function = plain if name == "plain" else checkpointed
                stopwatch.seconds = 0.0
                seconds, values[name] = _timed(lambda function=function: function(data, repeats), caller_cpu[name])
                times[name].append(seconds)
                if name == "checkpoint":
                    caller_work.append(stopwatch.seconds)
            seconds, values["resume"] = _timed(lambda function=checkpointed: function(data, repeats))
            times["resume"].append(seconds)
            same = same and all(np.array_equal(values["plain"], values[k]) for k in ("checkpoint", "resume"))
            shutil.rmtree(store)
    finally:
        CallLedger.resume, CallLedger.keep = originals  # type: ignore[method-assign]
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "chunks": chunks,
        "result_mb": result_mb,
        "workers": workers,
        "rounds": rounds,
        "medians": medians,
        "overhead": medians["checkpoint"] / medians["plain"] - 1,
        "caller_work": statistics.median(caller_work),
        "caller_cpu": {name: statistics.median(values) for name, values in caller_cpu.items()},
        "pair_overheads": [c / p - 1 for p, c in zip(times["plain"], times["checkpoint"], strict=True)],
        "same_result": same,
    }


def report(outcome: dict[str, Any], load_before: Sequence[float], load_after: Sequence[float]) -> str:
    """The markdown row (with its header) and the conditions of the run."""
    medians = outcome["medians"]
    pairs = ", ".join(f"{100 * o:+.1f}%" for o in outcome["pair_overheads"])
    return "\n".join(
        [
            "| call | plain | checkpoint (first run) | overhead | caller's checkpoint work | "
            "re-run, all loaded | same result |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {outcome['chunks']} chunks x {outcome['result_mb']:g} MB results, process, "
            f"{outcome['workers']} workers | {medians['plain']:.3f} s | {medians['checkpoint']:.3f} s | "
            f"{100 * outcome['overhead']:+.1f}% | {outcome['caller_work']:.3f} s "
            f"({100 * outcome['caller_work'] / medians['plain']:.1f}%) | {medians['resume']:.3f} s | "
            f"{'yes' if outcome['same_result'] else 'NO'} |",
            "",
            f"medians of {outcome['rounds']} interleaved rounds; per-round overheads: {pairs}",
            f"CPU time of the calling process per call (the workers' not counted): plain "
            f"{outcome['caller_cpu']['plain']:.3f} s, checkpoint {outcome['caller_cpu']['checkpoint']:.3f} s",
            f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
            f"after: {', '.join(f'{x:.2f}' for x in load_after)}; CPUs: {os.cpu_count()}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print its table and return it.

    :param argv: command-line arguments (``sys.argv[1:]`` when ``None``).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=64, help="chunks of the call (default 64)")
    parser.add_argument("--result-mb", type=float, default=1.0, help="size of each chunk's result, MB (default 1)")
    parser.add_argument("--repeats", type=int, default=8, help="sorts per chunk: the work (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="process workers (default 2)")
    parser.add_argument("--folder", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    args = parser.parse_args(argv)
    for name in ("chunks", "repeats", "rounds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.result_mb <= 0:
        parser.error("--result-mb must be > 0")
    warm_up()
    base = Path(tempfile.mkdtemp(prefix="conc-ml-checkpoint-bench-", dir=args.folder))
    load_before = os.getloadavg()
    try:
        outcome = measure(
            chunks=args.chunks,
            result_mb=args.result_mb,
            repeats=args.repeats,
            rounds=args.rounds,
            workers=args.workers,
            folder=base,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = report(outcome, load_before, os.getloadavg())
    print(text)
    return text


if __name__ == "__main__":
    main()
