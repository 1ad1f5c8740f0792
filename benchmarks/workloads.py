"""The three workloads, and how each library runs them.

- ``train``: fit one scikit-learn random forest per chunk of rows (8 chunks of 60k x 30 by
  default): CPU-bound work on medium arrays, the bread and butter of ML users.
- ``tiny``: ``x * x`` over 200k Python ints: what scheduling and transport cost per item.
- ``broadcast``: one large float64 array (400 MB by default) given whole to 64 tasks that
  each compute quantiles of their own slice: how a large argument reaches the workers.
- ``medians``: one large array (400 MB) given whole to 64 tasks in 8 chunks, each task the
  median of a strided slice ``big[i::64]`` (every task reads the whole array): a broadcast
  where every worker touches every page.
- ``global``: the same work on a 200 MB array that a function defined in ``__main__`` reads
  as a global (a script or notebook): cloudpickle sends such a function by value.
- ``results``: 16 tasks each returning a 32 MB array (``cumsum`` of normals), concatenated:
  how large results come back.

A *runner* is one way to run a workload: ``start`` creates its pool (counted in the first
call), ``run`` does the work once, ``close`` frees the pool. Every runner returns the same
result as the sequential loop, which :func:`checksum` condenses for the parity column.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

__all__ = ["RUNNERS", "WORKLOADS", "Runner", "Settings", "checksum", "make_data"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and pool size of one benchmark run."""

    workers: int
    train_chunks: int = 8
    train_rows: int = 60_000
    train_features: int = 30
    train_trees: int = 3
    tiny_items: int = 200_000
    broadcast_mb: int = 400
    broadcast_tasks: int = 64
    medians_mb: int = 400
    medians_tasks: int = 64
    medians_chunks: int = 8
    global_mb: int = 200
    results_count: int = 16
    results_mb: int = 32


# -- the work itself: plain functions, importable by every library's workers ---------------


def fit_forest(X: np.ndarray[Any, Any], y: np.ndarray[Any, Any], trees: int) -> Any:
    """One random forest on one chunk of rows (imports scikit-learn on first use)."""
    from .training import fit_forest

    return fit_forest(X, y, trees)


def square(x: int) -> int:
    """The tiny item."""
    return x * x


def squares(items: list[int]) -> list[int]:
    """A chunk of tiny items."""
    return [x * x for x in items]


def slice_quantiles(big: np.ndarray[Any, Any], start: int, stop: int) -> list[float]:
    """5th, 50th and 95th percentile of one slice of the broadcast array."""
    return [float(q) for q in np.percentile(big[start:stop], [5, 50, 95])]


#: the broadcast array, inherited by forked workers of the peers that use fork
_INHERITED: np.ndarray[Any, Any] | None = None


def _inherited_quantiles(start: int, stop: int) -> list[float]:
    assert _INHERITED is not None
    return slice_quantiles(_INHERITED, start, stop)


def _shared_quantiles(big: np.ndarray[Any, Any], start: int, stop: int) -> list[float]:
    return slice_quantiles(big, start, stop)


def strided_medians(tasks: list[int], big: np.ndarray[Any, Any], step: int) -> list[float]:
    """Median of ``big[i::step]`` for each task ``i``: each one reads the whole array."""
    return [float(np.median(big[i::step])) for i in tasks]


def _inherited_medians(tasks: list[int], step: int) -> list[float]:
    assert _INHERITED is not None
    return strided_medians(tasks, _INHERITED, step)


def _inherited_medians_args(args: tuple[list[int], int]) -> list[float]:
    return _inherited_medians(*args)


def random_walk(seed: int, mb: int) -> np.ndarray[Any, Any]:
    """A large result: the cumulative sum of ``mb`` MB of standard normals."""
    return np.cumsum(np.random.default_rng(seed).standard_normal(mb * (1 << 20) // 8))


def random_walks(seeds: list[int], mb: int) -> list[np.ndarray[Any, Any]]:
    """One random walk per seed (a chunk's results)."""
    return [random_walk(seed, mb) for seed in seeds]


def _random_walk_args(args: tuple[int, int]) -> np.ndarray[Any, Any]:
    return random_walk(*args)


#: the function of the ``global`` workload, defined in ``__main__`` as a notebook would
_GLOBAL_SOURCE = """
import numpy as np

def global_medians(tasks, step):
    return [float(np.median(GLOBAL_BIG[i::step])) for i in tasks]
"""


def main_function(big: np.ndarray[Any, Any]) -> Callable[[list[int], int], list[float]]:
    """``global_medians`` defined in ``__main__``, reading ``big`` as its global ``GLOBAL_BIG``."""
    import sys

    namespace = sys.modules["__main__"].__dict__
    namespace["GLOBAL_BIG"] = big
    exec(_GLOBAL_SOURCE, namespace)
    function: Callable[[list[int], int], list[float]] = namespace["global_medians"]
    return function


def _task_chunks(tasks: list[int], chunks: int) -> list[list[int]]:
    step = math.ceil(len(tasks) / chunks)
    return [tasks[i : i + step] for i in range(0, len(tasks), step)]


def _fit_args(args: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int]) -> Any:
    return fit_forest(*args)


def _quantiles_args(args: tuple[int, int]) -> list[float]:
    return _inherited_quantiles(*args)


# -- data ---------------------------------------------------------------------------------


def make_data(workload: str, settings: Settings, *, shared: bool = False) -> dict[str, Any]:
    """The workload's input, made the same way for every runner."""
    rng = np.random.default_rng(0)
    if workload == "train":
        rows = settings.train_chunks * settings.train_rows
        X = rng.standard_normal((rows, settings.train_features))
        y = (X[:, :5].sum(axis=1) + rng.standard_normal(rows) > 0).astype(np.int64)
        return {"X": X, "y": y}
    if workload == "tiny":
        return {"items": list(range(settings.tiny_items))}
    if workload == "broadcast":
        n = settings.broadcast_mb * (1 << 20) // 8
        if shared:
            import conc_ml

            big = conc_ml.shared_array(n)
            rng.random(out=big)
        else:
            big = rng.random(n)
        step = math.ceil(n / settings.broadcast_tasks)
        bounds = [(start, min(n, start + step)) for start in range(0, n, step)]
        return {"big": big, "bounds": bounds}
    if workload in ("medians", "global"):
        mb = settings.medians_mb if workload == "medians" else settings.global_mb
        n = mb * (1 << 20) // 8
        if shared:
            import conc_ml

            big = conc_ml.shared_array(n)
            rng.random(out=big)
        else:
            big = rng.random(n)
        return {"big": big, "tasks": list(range(settings.medians_tasks)), "step": settings.medians_tasks}
    if workload == "results":
        return {"seeds": list(range(settings.results_count)), "mb": settings.results_mb}
    raise ValueError(f"unknown workload {workload!r}; expected one of: {', '.join(WORKLOADS)}")


def _train_chunks(data: dict[str, Any], settings: Settings) -> list[tuple[Any, Any, int]]:
    X, y = data["X"], data["y"]
    step = settings.train_rows
    return [(X[i : i + step], y[i : i + step], settings.train_trees) for i in range(0, len(X), step)]


def checksum(workload: str, result: Any, data: dict[str, Any]) -> float:
    """One number that equals the sequential run's when the result does."""
    if workload == "train":
        probe = data["X"][:2000]
        return float(sum(int(model.predict(probe).sum()) for model in result))
    if workload == "tiny":
        return float(sum(result) % 1_000_003) + len(result)
    return float(np.round(np.asarray(result, dtype=float).sum(), 6))


# -- runners ------------------------------------------------------------------------------


class Runner:
    """One way of running one workload; subclasses fill in the three steps."""

    label = "?"

    def __init__(self, workload: str, settings: Settings):
        self.workload = workload
        self.settings = settings

    def prepare(self) -> None:
        """Runs in the fresh process before the data is made (conc-ml warms up here)."""

    def start(self, data: dict[str, Any]) -> None:
        """Create the pool; counted in the first call."""

    def run(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Free the pool."""


class Sequential(Runner):
    label = "sequential"

    def run(self, data: dict[str, Any]) -> Any:
        if self.workload == "train":
            return [fit_forest(*chunk) for chunk in _train_chunks(data, self.settings)]
        if self.workload == "tiny":
            return [x * x for x in data["items"]]
        if self.workload == "medians":
            return strided_medians(data["tasks"], data["big"], data["step"])
        if self.workload == "global":
            return main_function(data["big"])(data["tasks"], data["step"])
        if self.workload == "results":
            return np.concatenate(random_walks(data["seeds"], data["mb"]))
        return [slice_quantiles(data["big"], a, b) for a, b in data["bounds"]]


class ConcML(Runner):
    """``@parallel`` on the process backend, warmed up at start-up with ``conc_ml.warm_up``."""

    label = "conc-ml"
    warm = True
    shared_array = False
    global_as_argument = False

    def prepare(self) -> None:
        from conc_ml import parallel, warm_up

        workers = self.settings.workers
        if self.workload == "train":
            n_chunks = self.settings.train_chunks
            from .training import fit_forest as fit_forest_module_level

            self.func: Callable[..., Any] = parallel(
                backend="process", workers=workers, chunks=n_chunks, split=("X", "y")
            )(fit_forest_module_level)
        elif self.workload == "tiny":
            self.func = parallel(backend="process", workers=workers, chunks=4 * workers, combine="concat")(squares)
        elif self.workload in ("medians", "global"):
            self.func = parallel(
                backend="process", workers=workers, chunks=self.settings.medians_chunks, combine="concat"
            )(strided_medians)
        elif self.workload == "results":
            self.func = parallel(
                backend="process", workers=workers, chunks=self.settings.results_count, combine="concat"
            )(random_walks)
        else:
            self.func = parallel(
                backend="process", workers=workers, chunks=self.settings.broadcast_tasks, split="bounds"
            )(_bounds_quantiles)
        if self.warm:
            # The documented pattern: start the pool at import, overlapped with loading data.
            warm_up(self.func, wait=False)

    def run(self, data: dict[str, Any]) -> Any:
        if self.workload == "train":
            return self.func(data["X"], data["y"], self.settings.train_trees)
        if self.workload == "tiny":
            return self.func(data["items"])
        if self.workload in ("medians", "global", "results"):
            return self._run_large(data)
        return [stats for chunk in self.func(data["bounds"], data["big"]) for stats in chunk]

    def _run_large(self, data: dict[str, Any]) -> Any:
        if self.workload == "results":
            return np.concatenate(self.func(data["seeds"], data["mb"]))
        if self.workload == "global" and not self.global_as_argument:
            return self.main_func(data["tasks"], data["step"])
        return self.func(data["tasks"], data["big"], data["step"])

    def start(self, data: dict[str, Any]) -> None:
        if self.workload == "global" and not self.global_as_argument:
            from conc_ml import parallel

            self.main_func = parallel(
                backend="process", workers=self.settings.workers, chunks=self.settings.medians_chunks, combine="concat"
            )(main_function(data["big"]))


def _bounds_quantiles(bounds: list[tuple[int, int]], big: np.ndarray[Any, Any]) -> list[list[float]]:
    return [slice_quantiles(big, a, b) for a, b in bounds]


class ConcMLCold(ConcML):
    label = "conc-ml, no warm_up"
    warm = False


class ConcMLSharedArray(ConcML):
    label = "conc-ml, shared_array"
    shared_array = True


class ConcMLGlobalAsArgument(ConcML):
    label = "conc-ml, array as argument"
    global_as_argument = True


class Pool(Runner):
    label = "multiprocessing.Pool"

    def start(self, data: dict[str, Any]) -> None:
        global _INHERITED
        if "big" in data:
            # fork: the workers inherit the array, nothing is sent
            _INHERITED = data["big"]
        self.pool = multiprocessing.get_context("fork").Pool(self.settings.workers)

    def run(self, data: dict[str, Any]) -> Any:
        if self.workload == "train":
            return self.pool.map(_fit_args, _train_chunks(data, self.settings))
        if self.workload == "tiny":
            return self.pool.map(square, data["items"])
        if self.workload in ("medians", "global"):
            chunks = _task_chunks(data["tasks"], self.settings.medians_chunks)
            parts = self.pool.map(_inherited_medians_args, [(c, data["step"]) for c in chunks])
            return [m for part in parts for m in part]
        if self.workload == "results":
            return np.concatenate(self.pool.map(_random_walk_args, [(s, data["mb"]) for s in data["seeds"]]))
        return self.pool.map(_quantiles_args, data["bounds"])

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Executor(Runner):
    label = "ProcessPoolExecutor"

    def start(self, data: dict[str, Any]) -> None:
        global _INHERITED
        if self.workload == "broadcast":
            _INHERITED = data["big"]
        self.pool = ProcessPoolExecutor(self.settings.workers, mp_context=multiprocessing.get_context("fork"))

    def run(self, data: dict[str, Any]) -> Any:
        if self.workload == "train":
            return list(self.pool.map(_fit_args, _train_chunks(data, self.settings)))
        if self.workload == "tiny":
            # the default chunksize=1 would take minutes: use Pool's automatic one
            items = data["items"]
            chunksize = max(1, math.ceil(len(items) / (4 * self.settings.workers)))
            return list(self.pool.map(square, items, chunksize=chunksize))
        return list(self.pool.map(_quantiles_args, data["bounds"]))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Joblib(Runner):
    label = "joblib"

    def run(self, data: dict[str, Any]) -> Any:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=self.settings.workers)
        if self.workload == "train":
            return parallel(delayed(fit_forest)(*chunk) for chunk in _train_chunks(data, self.settings))
        if self.workload == "tiny":
            return parallel(delayed(square)(x) for x in data["items"])
        if self.workload in ("medians", "global"):
            chunks = _task_chunks(data["tasks"], self.settings.medians_chunks)
            if self.workload == "global":
                function = main_function(data["big"])
                parts = parallel(delayed(function)(c, data["step"]) for c in chunks)
            else:
                parts = parallel(delayed(strided_medians)(c, data["big"], data["step"]) for c in chunks)
            return [m for part in parts for m in part]
        if self.workload == "results":
            return np.concatenate(parallel(delayed(random_walk)(s, data["mb"]) for s in data["seeds"]))
        big = data["big"]
        return parallel(delayed(slice_quantiles)(big, a, b) for a, b in data["bounds"])


class Mpire(Runner):
    label = "mpire"

    def start(self, data: dict[str, Any]) -> None:
        from mpire.pool import WorkerPool

        shared = data["big"] if self.workload == "broadcast" else None
        self.pool = WorkerPool(n_jobs=self.settings.workers, shared_objects=shared, keep_alive=True)

    def run(self, data: dict[str, Any]) -> Any:
        if self.workload == "train":
            return self.pool.map(fit_forest, _train_chunks(data, self.settings))
        if self.workload == "tiny":
            return self.pool.map(square, data["items"])
        return self.pool.map(_shared_quantiles, data["bounds"])

    def close(self) -> None:
        self.pool.terminate()


#: runner name -> class, in table order
RUNNERS: dict[str, type[Runner]] = {
    "sequential": Sequential,
    "conc-ml": ConcML,
    "conc-ml-cold": ConcMLCold,
    "conc-ml-shared-array": ConcMLSharedArray,
    "conc-ml-argument": ConcMLGlobalAsArgument,
    "pool": Pool,
    "executor": Executor,
    "joblib": Joblib,
    "mpire": Mpire,
}

#: workload -> the runners that make sense for it
WORKLOADS: dict[str, tuple[str, ...]] = {
    "train": ("sequential", "conc-ml", "conc-ml-cold", "pool", "executor", "joblib", "mpire"),
    "tiny": ("sequential", "conc-ml", "pool", "executor", "joblib", "mpire"),
    "broadcast": ("sequential", "conc-ml", "conc-ml-shared-array", "pool", "executor", "joblib", "mpire"),
    "medians": ("sequential", "conc-ml", "conc-ml-shared-array", "pool", "joblib"),
    "global": ("sequential", "conc-ml", "conc-ml-argument", "joblib"),
    "results": ("sequential", "conc-ml", "pool", "joblib"),
}

WORKLOAD_TITLES = {
    "train": "{train_chunks} random forests ({train_trees} trees) on chunks of {train_rows:,} x {train_features}",
    "tiny": "{tiny_items:,} tiny items (x*x)",
    "broadcast": "{broadcast_mb} MB array broadcast to {broadcast_tasks} slice quantiles",
    "medians": "{medians_mb} MB array broadcast to {medians_tasks} strided-slice medians in {medians_chunks} chunks",
    "global": "{global_mb} MB __main__ global read by {medians_tasks} strided-slice medians in {medians_chunks} chunks",
    "results": "{results_count} results of {results_mb} MB each (cumsum of normals), concatenated",
}


def cpu_count() -> int:
    """Usable CPUs (affinity- and cgroup-aware), the default pool size."""
    from conc_ml._system import usable_cpus

    return usable_cpus()
