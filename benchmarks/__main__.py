"""``python -m benchmarks``: every workload through conc-ml and its peers, one fresh process per row.

Prints a markdown table and writes ``results.json`` and ``results.png`` to ``--out``.
``--help`` lists the knobs; ``--workers`` defaults to the usable CPUs, so the same command
shows the scaling on a bigger machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .child import RESULT_PREFIX
from .memory import PeakTreeMemory
from .report import machine_info, markdown_table, write_chart, write_json
from .workloads import RUNNERS, WORKLOADS, Settings, cpu_count


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: usable CPUs)")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds after the first call (median reported)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}"
    )
    parser.add_argument("--runners", default=None, help=f"comma-separated subset of {','.join(RUNNERS)}")
    parser.add_argument("--broadcast-mb", type=int, default=400, help="size of the broadcast array in MB")
    parser.add_argument("--broadcast-tasks", type=int, default=64)
    parser.add_argument("--medians-mb", type=int, default=400, help="size of the array of the medians workload in MB")
    parser.add_argument("--global-mb", type=int, default=200, help="size of the __main__ global in MB")
    parser.add_argument("--results-count", type=int, default=16, help="number of large results")
    parser.add_argument("--results-mb", type=int, default=32, help="size of each large result in MB")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time every row this many times, interleaved (one row of each runner in turn), and report the "
        "median: on a shared machine it spreads the load over the runners alike",
    )
    parser.add_argument("--tiny-items", type=int, default=200_000)
    parser.add_argument("--train-chunks", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=60_000)
    parser.add_argument("--train-trees", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for JSON and PNG")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    for name in (
        "workers",
        "rounds",
        "broadcast_mb",
        "broadcast_tasks",
        "tiny_items",
        "train_chunks",
        "train_rows",
        "medians_mb",
        "global_mb",
        "results_count",
        "results_mb",
        "repeat",
    ):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "rounds" else 1):
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; expected: {', '.join(WORKLOADS)}")
    if args.runners is not None:
        unknown = set(args.runners.split(",")) - set(RUNNERS)
        if unknown:
            parser.error(f"unknown runner(s) {', '.join(sorted(unknown))}; expected: {', '.join(RUNNERS)}")
    return args


def _run_child(
    workload: str, runner: str, settings: Settings, rounds: int, memory: PeakTreeMemory | None = None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.child", workload, runner, json.dumps(dataclasses.asdict(settings))]
    process = subprocess.Popen([*command, str(rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with contextlib.ExitStack() as stack:
        if memory is not None:
            stack.enter_context(memory.sampling(process.pid))
        stdout, stderr = process.communicate(timeout=900)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{workload}/{runner} failed (exit code {process.returncode}):\n{stderr}")
    record: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    record["stderr"] = stderr.strip()
    return record


def _timed(workload: str, runner: str, settings: Settings, rounds: int) -> dict[str, Any]:
    """Times from one fresh process, unsampled.

    Sampling the memory of a process tree reads ``/proc/PID/smaps_rollup`` of every
    process ten times a second, which costs CPU (about 10% of a core with three processes);
    on a machine with few cores that would slow the timed rounds, and not every runner
    alike. So the timed runs are left alone, and a separate run (the first call and one
    warm round) is sampled by :func:`_with_memory`.
    """
    return _run_child(workload, runner, settings, rounds)


def _with_memory(record: dict[str, Any], workload: str, runner: str, settings: Settings) -> dict[str, Any]:
    memory = PeakTreeMemory()
    sampled = _run_child(workload, runner, settings, 1, memory)
    record["peak_memory_mib"] = memory.peak_bytes / (1 << 20)
    record["stderr"] = "\n".join(text for text in (record["stderr"], sampled["stderr"]) if text)
    return record


def _median_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of the repeat with the median warm time, with every repeat's times kept."""
    ordered = sorted(records, key=lambda r: r["median_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats_median_s"] = [r["median_s"] for r in records]
    chosen["first_s"] = statistics.median(r["first_s"] for r in records)
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the exit status."""
    args = _parse(argv)
    settings = Settings(
        workers=args.workers or cpu_count(),
        train_chunks=args.train_chunks,
        train_rows=args.train_rows,
        train_trees=args.train_trees,
        tiny_items=args.tiny_items,
        broadcast_mb=args.broadcast_mb,
        broadcast_tasks=args.broadcast_tasks,
        medians_mb=args.medians_mb,
        global_mb=args.global_mb,
        results_count=args.results_count,
        results_mb=args.results_mb,
    )
    chosen = None if args.runners is None else set(args.runners.split(","))
    results: list[dict[str, Any]] = []
    began = time.perf_counter()
    for workload in args.workloads.split(","):
        # the loop first: every other row is compared with it
        runners = [r for r in WORKLOADS[workload] if r == "sequential" or chosen is None or r in chosen]
        timed: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
        for repeat in range(args.repeat):
            for runner in runners:
                print(
                    f"[{time.perf_counter() - began:6.1f} s] {workload}: {runner} ({repeat + 1}/{args.repeat}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                timed[runner].append(_timed(workload, runner, settings, args.rounds))
        rows = [_with_memory(_median_of(timed[runner]), workload, runner, settings) for runner in runners]
        baseline = rows[0]
        for row in rows:
            row["speedup"] = baseline["median_s"] / row["median_s"]
            row["first_speedup"] = baseline["median_s"] / row["first_s"]
            row["memory_ratio"] = row["peak_memory_mib"] / baseline["peak_memory_mib"]
            row["parity"] = row["checksum"] == baseline["checksum"]
        results += rows
    print(markdown_table(results, settings))
    for row in results:
        if row["stderr"]:
            print(f"stderr of {row['workload']}/{row['runner']}:\n{row['stderr']}\n", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", results, settings, machine_info(settings.workers))
    if not args.no_chart:
        write_chart(args.out / "results.png", results, settings)
    print(f"wrote {args.out / 'results.json'}" + ("" if args.no_chart else f" and {args.out / 'results.png'}"))
    return 0 if all(row["parity"] for row in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
