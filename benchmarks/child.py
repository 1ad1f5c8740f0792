"""Run one workload with one runner in this fresh process and print its timings as JSON.

``python -m benchmarks.child WORKLOAD RUNNER SETTINGS_JSON ROUNDS``: the parent
(``python -m benchmarks``) starts one such process per row, so that every first call is a
first call and the peak memory it samples belongs to that row alone.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

from .workloads import RUNNERS, Settings, checksum, make_data

#: the line of stdout the parent reads
RESULT_PREFIX = "RESULT "


def main(argv: list[str]) -> None:
    """Run ``argv = [workload, runner, settings as JSON, rounds]`` and print the result line."""
    workload, runner_name, settings_json, rounds_text = argv
    settings = Settings(**json.loads(settings_json))
    rounds = int(rounds_text)
    runner = RUNNERS[runner_name](workload, settings)
    began = time.perf_counter()
    runner.prepare()
    data = make_data(workload, settings, shared=getattr(runner, "shared_array", False))
    data_s = time.perf_counter() - began
    try:
        started = time.perf_counter()
        runner.start(data)
        result = runner.run(data)
        first = time.perf_counter() - started
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = runner.run(data)
            times.append(time.perf_counter() - started)
    finally:
        runner.close()
    record = {
        "workload": workload,
        "runner": runner_name,
        "label": runner.label,
        "settings": dataclasses.asdict(settings),
        "prepare_and_data_s": data_s,
        "first_s": first,
        "times_s": times,
        "median_s": statistics.median(times) if times else first,
        "checksum": checksum(workload, result, data),
    }
    print(RESULT_PREFIX + json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
