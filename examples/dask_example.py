"""Train random forests on chunks of a dataset on a dask cluster, one word away from processes.

Eight random forests, one per chunk of a 60k x 30 classification dataset, trained as dask
tasks; the fitted forests come back in chunk order and vote. Each chunk's forest is seeded
from its own stream (``seed=0``), so the ensemble is the same on dask, on processes, or
sequentially.

Run it::

    python examples/dask_example.py                # an embedded LocalCluster on this machine
    CONC_ML_DASK_ADDRESS=tcp://127.0.0.1:8786 python examples/dask_example.py   # your cluster
    python examples/dask_example.py --compare      # dask next to the process backend, timed

See ``docs/scaling-out.md`` for starting a scheduler and workers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from conc_ml import parallel

#: chunks, hence forests
FORESTS = 8


@parallel(backend="dask", chunks=FORESTS, split=("rows", "labels"), seed=0)
def train_forests(
    rows: np.ndarray, labels: np.ndarray, *, trees: int = 25, rng: np.random.Generator
) -> RandomForestClassifier:
    """Fit one random forest on one chunk of the rows.

    :param rows: the chunk's feature rows.
    :param labels: the chunk's labels, aligned with ``rows``.
    :param trees: trees per forest.
    :param rng: the chunk's random stream, given by conc-ml.
    """
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=int(rng.integers(2**31)))
    return forest.fit(rows, labels)


def vote(forests: Sequence[RandomForestClassifier], rows: np.ndarray) -> np.ndarray:
    """Soft vote of the forests: the class with the highest mean probability.

    :param forests: fitted forests sharing the same classes.
    :param rows: the rows to classify.
    """
    mean_proba = np.mean([forest.predict_proba(rows) for forest in forests], axis=0)
    return forests[0].classes_[np.argmax(mean_proba, axis=1)]  # type: ignore[no-any-return]


def make_data(n_rows: int = 60_000, n_features: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic binary classification task (fixed seed).

    :param n_rows: number of rows.
    :param n_features: number of features.
    """
    rows, labels = make_classification(n_samples=n_rows, n_features=n_features, n_informative=12, random_state=0)
    return rows, labels


def interleaved_medians(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median wall time of each run over ``rounds`` rounds, after one untimed warm-up each.

    Every round times each run once, in turn, so that a change in the machine's load
    during the measurement weighs on all of them alike.
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compare(rows: np.ndarray, labels: np.ndarray, *, rounds: int, workers: int | None, trees: int) -> None:
    """Time the training sequentially, on the process backend and on dask; print a table."""
    on_dask = train_forests.options(workers=workers)
    on_processes = train_forests.options(backend="process", workers=workers)
    reference = vote(on_dask.sequential(rows, labels, trees=trees), rows[:2000])
    for forests in (on_dask(rows, labels, trees=trees), on_processes(rows, labels, trees=trees)):
        np.testing.assert_array_equal(vote(forests, rows[:2000]), reference)
    medians = interleaved_medians(
        {
            "sequential": lambda: on_dask.sequential(rows, labels, trees=trees),
            "process": lambda: on_processes(rows, labels, trees=trees),
            "dask": lambda: on_dask(rows, labels, trees=trees),
        },
        rounds,
    )
    print(
        f"{FORESTS} random forests of {trees} trees on chunks of {rows.shape[0]} x {rows.shape[1]}, "
        f"workers: {workers or 'usable CPUs'}, warm, median of {rounds} interleaved rounds "
        "(the same forests on every backend: checked)"
    )
    print("| backend | time | speedup |")
    print("| --- | --- | --- |")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} s | {medians['sequential'] / seconds:.2f}x |")
    print(f"dask / process time: {medians['dask'] / medians['process']:.2f}")


def main() -> None:
    """Train the forests on dask and report their accuracy, or compare backends."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="time dask next to the process backend")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per backend with --compare")
    parser.add_argument("--rows", type=int, default=60_000, help="rows of the dataset")
    parser.add_argument("--trees", type=int, default=25, help="trees per forest")
    parser.add_argument("--workers", type=int, default=None, help="chunks in flight (default: usable CPUs)")
    options = parser.parse_args()
    rows, labels = make_data(options.rows)
    if options.compare:
        compare(rows, labels, rounds=options.rounds, workers=options.workers, trees=options.trees)
        return
    held_out = 4_000
    rows, labels, test_rows, test_labels = rows[:-held_out], labels[:-held_out], rows[-held_out:], labels[-held_out:]
    start = time.perf_counter()
    forests = train_forests.options(workers=options.workers)(rows, labels, trees=options.trees)
    elapsed = time.perf_counter() - start
    accuracy = float(np.mean(vote(forests, test_rows) == test_labels))
    print(f"trained {len(forests)} forests on dask in {elapsed:.2f} s (cluster start included)")
    print(f"soft-vote accuracy on fresh rows: {accuracy:.3f}")


# The guard matters: the embedded LocalCluster starts its workers with multiprocessing's
# "spawn", which imports this file again in every worker.
if __name__ == "__main__":
    main()
