"""The ``dask`` backend against a real ``LocalCluster`` (two worker processes, loopback only)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import conc_ml
from conc_ml import BackendUnavailableError, ChunkTimeoutError, WorkerCrashedError, config, parallel

distributed = pytest.importorskip("distributed")

from conc_ml.backends import _dask  # noqa: E402  (needs distributed)

#: the workers of the test cluster; a crash test waits for them to be back
N_WORKERS = 2
#: a chunk whose worker dies is retried once, then the call fails
ALLOWED_FAILURES = 1
#: bound on every wait for the cluster (workers restarting on a busy machine)
CLUSTER_WAIT_S = 60


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """One LocalCluster for the module: processes, one thread each, loopback, no dashboard."""
    cluster = distributed.LocalCluster(
        n_workers=N_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={**_dask.LOOPBACK_SCHEDULER_OPTIONS, "allowed_failures": ALLOWED_FAILURES},
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    """A client of the test cluster that is not the default one (tests opt in through config)."""
    client = distributed.Client(dask_cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def on_dask(dask_client: Any) -> Iterator[Any]:
    """Route the test's calls to the test cluster; afterwards, check the call left nothing on it."""
    client = dask_client
    client.wait_for_workers(N_WORKERS, timeout=CLUSTER_WAIT_S)
    with config(backend="dask", client=client):
        yield client
    _dask.close_clients()
    # Cancelling reaches the scheduler as a batched message, after the call returned:
    # poll (bounded) until it has been processed.
    deadline = time.monotonic() + CLUSTER_WAIT_S
    leftover = client.run_on_scheduler(_task_keys)
    while leftover and time.monotonic() < deadline:
        time.sleep(0.01)
        leftover = client.run_on_scheduler(_task_keys)
    assert leftover == [], f"the call left tasks or data on the cluster: {leftover}"


def _task_keys(dask_scheduler: Any) -> list[str]:
    return sorted(str(key) for key in dask_scheduler.tasks)


# -- functions run on the cluster (module level, so workers import them by reference) --


def total(values: list[float]) -> float:
    return float(np.sum(values))


def scaled(data: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return data * factor[0]


def noisy(data: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    return data + rng.standard_normal(len(data))


class ChunkRejectedError(Exception):
    pass


def reject_odd(values: list[int]) -> list[int]:
    if any(v % 2 for v in values):
        raise ChunkRejectedError(f"odd values in {values}")
    return values


def wait_for_event(values: list[int], event_name: str) -> list[int]:
    # Holds its worker until the test sets the event (bounded, so nothing can hang).
    distributed.Event(event_name).wait(timeout=CLUSTER_WAIT_S)
    return values


def die(values: list[int]) -> list[int]:
    os._exit(3)


def die_once(values: list[int], marker: str) -> list[int]:
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(3)
    return values


def die_twice(values: list[int], folder: str) -> list[int]:
    deaths = len(os.listdir(folder))
    if deaths < 2:
        Path(folder, str(deaths)).touch()
        os._exit(3)
    return values


async def async_double(values: list[int]) -> list[int]:
    return [2 * v for v in values]


# -- semantics shared with the other backends -------------------------------------


def test_results_come_back_in_chunk_order_and_match_sequential(on_dask: Any) -> None:
    func = parallel(chunks=5, workers=2, combine="concat")(scaled)
    data = np.arange(23.0)
    factor = np.array([3.0])
    result = func(data, factor)
    np.testing.assert_array_equal(result, func.sequential(data, factor))
    np.testing.assert_array_equal(result, data * 3.0)


def test_list_combine_keeps_chunk_order(on_dask: Any) -> None:
    func = parallel(chunks=4, workers=2)(total)
    assert func([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == [3.0, 7.0, 11.0, 15.0]


def test_seeded_streams_are_identical_to_sequential(on_dask: Any) -> None:
    func = parallel(chunks=3, workers=2, seed=42, combine="concat")(noisy)
    data = np.zeros(10)
    parallel_result = func(data)
    np.testing.assert_array_equal(parallel_result, func.sequential(data))
    np.testing.assert_array_equal(parallel_result, func.options(backend="thread")(data))
    assert not np.array_equal(parallel_result, func.options(seed=43)(data))


def test_user_exception_keeps_its_type_with_a_note_and_remote_traceback(on_dask: Any) -> None:
    func = parallel(chunks=2, workers=2)(reject_odd)
    with pytest.raises(ChunkRejectedError, match="odd values") as info:
        func([2, 4, 6, 7])
    note = "\n".join(info.value.__notes__)
    assert "chunk 1 of 2" in note
    assert "backend 'dask'" in note
    assert isinstance(info.value.__cause__, conc_ml.errors.RemoteTraceback)
    assert "reject_odd" in str(info.value.__cause__)


def test_a_remote_traceback_is_told_once_in_the_cause(on_dask: Any) -> None:
    # distributed pickles exceptions of the classes that existed when it was imported (the
    # builtins) with their tracebacks: the worker's frames, whose code cloudpickle sent by
    # value, would show again under the caller's as File "<dynamic-code>" without source.
    def check(values: list[int]) -> list[int]:
        if 3 in values:
            raise ValueError("three is not allowed")
        return values

    with pytest.raises(ValueError, match="three") as info:
        parallel(chunks=2, workers=2)(check)([1, 2, 3, 4])
    assert "in check" in str(info.value.__cause__)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [frame.name for frame in frames if frame.name in ("check", "run_chunk")] == []
    assert all(frame.filename != "<dynamic-code>" for frame in frames)


def joblib_in_a_chunk(values: list[int]) -> tuple[list[int], list[str]]:
    import warnings

    from joblib import Parallel, delayed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        squares = Parallel(n_jobs=-1)(delayed(pow)(value, 2) for value in values)
    return squares, [str(warning.message) for warning in caught]


def test_joblib_in_a_chunk_runs_one_at_a_time_without_warning(on_dask: Any) -> None:
    # A daemonic dask worker cannot start joblib's processes: joblib would fall back to
    # n_jobs=1 with a warning on every call (scikit-learn's n_jobs included).
    outcomes = parallel(chunks=2, workers=2)(joblib_in_a_chunk)([1, 2, 3, 4])
    assert outcomes == [([1, 4], []), ([9, 16], [])]


def test_stream_yields_every_chunk(on_dask: Any) -> None:
    func = parallel(chunks=4, workers=2)(total)
    streamed = dict(func.stream([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]))
    assert streamed == {0: 3.0, 1: 7.0, 2: 11.0, 3: 15.0}


def test_leaving_a_stream_early_drops_the_rest_from_the_cluster(on_dask: Any) -> None:
    func = parallel(chunk_size=1, workers=2)(total)
    stream = func.stream([float(v) for v in range(20)])
    index, _ = next(stream)
    assert 0 <= index < 20
    stream.close()  # the on_dask fixture checks that no task is left on the scheduler


def test_progress_counts_items(on_dask: Any, capsys: pytest.CaptureFixture[str]) -> None:
    func = parallel(chunks=3, workers=2, progress=True)(total)
    func([1.0] * 9)
    assert "9/9" in capsys.readouterr().err


def test_async_function_runs_on_dask(on_dask: Any) -> None:
    import anyio

    func = parallel(backend="dask", chunks=2, workers=2, combine="concat")(async_double)
    assert anyio.run(func, [1, 2, 3]) == [2, 4, 6]


def test_timeout_raises_chunk_timeout_error(on_dask: Any) -> None:
    event = distributed.Event(f"release-{os.getpid()}", client=on_dask)
    func = parallel(chunks=2, workers=2, timeout=0.5)(wait_for_event)
    try:
        with pytest.raises(ChunkTimeoutError, match="finish in the background") as info:
            func([1, 2], event.name)
        assert isinstance(info.value, TimeoutError)
    finally:
        event.set()  # frees the workers the abandoned chunks still hold


# -- large arguments are scattered once ----------------------------------------------


class ScatterSpy:
    """Wraps ``Client.scatter`` and records what each call sent."""

    def __init__(self, client: Any):
        self.client = client
        self.real = client.scatter
        self.sent: list[Any] = []

    def __call__(self, data: Any, **kwargs: Any) -> Any:
        self.sent.extend(data)
        return self.real(data, **kwargs)


def test_large_broadcast_argument_is_scattered_once_per_call(on_dask: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ScatterSpy(on_dask)
    monkeypatch.setattr(on_dask, "scatter", spy)
    factor = np.full(_dask.SCATTER_THRESHOLD_BYTES // 8 + 1, 2.0)
    func = parallel(chunks=6, workers=2, combine="concat")(scaled)
    result = func(np.arange(12.0), factor)
    np.testing.assert_array_equal(result, np.arange(12.0) * 2.0)
    assert len(spy.sent) == 1
    assert spy.sent[0] is factor
    # A second call scatters again (and the first call's copy was dropped: see on_dask).
    func(np.arange(12.0), factor)
    assert len(spy.sent) == 2


def test_small_arguments_travel_inside_the_task(on_dask: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ScatterSpy(on_dask)
    monkeypatch.setattr(on_dask, "scatter", spy)
    func = parallel(chunks=3, workers=2, combine="concat")(scaled)
    np.testing.assert_array_equal(func(np.arange(6.0), np.array([2.0])), np.arange(6.0) * 2.0)
    assert spy.sent == []


def test_large_pandas_argument_is_scattered(on_dask: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pandas = pytest.importorskip("pandas")
    spy = ScatterSpy(on_dask)
    monkeypatch.setattr(on_dask, "scatter", spy)
    frame = pandas.DataFrame({"x": np.ones(_dask.SCATTER_THRESHOLD_BYTES // 8 + 1)})
    func = parallel(chunks=2, workers=2)(_column_total_plus)
    assert func([1.0, 2.0], frame) == [float(len(frame)) + 1.0, float(len(frame)) + 2.0]
    assert len(spy.sent) == 1
    assert spy.sent[0] is frame


def _column_total_plus(values: list[float], frame: Any) -> float:
    return float(frame["x"].sum()) + sum(values)


# -- lost workers ---------------------------------------------------------------------


def test_lost_worker_is_retried_within_allowed_failures(on_dask: Any, tmp_path: Path) -> None:
    func = parallel(chunks=1, workers=1)(die_once)
    assert func([5], str(tmp_path / "died")) == [[5]]
    assert (tmp_path / "died").exists(), "the first attempt should have killed its worker"


def test_worker_dying_every_time_raises_worker_crashed_error(on_dask: Any) -> None:
    func = parallel(chunks=1, workers=1)(die)
    with pytest.raises(WorkerCrashedError, match="chunk 0") as info:
        func([1])
    assert info.value.chunk == 0
    assert isinstance(info.value, RuntimeError)
    # The cluster heals (the nanny restarts its workers) and the next call works.
    on_dask.wait_for_workers(N_WORKERS, timeout=CLUSTER_WAIT_S)
    assert parallel(chunks=2, workers=2)(total)([1.0, 2.0]) == [1.0, 2.0]


def test_retries_resubmit_a_chunk_dask_gave_up_on(on_dask: Any, tmp_path: Path) -> None:
    # The test cluster allows one failure: the second death is a KilledWorker, and conc-ml's
    # retry sends the chunk again as a new task.
    func = parallel(chunks=1, workers=1, retries=1)(die_twice)
    assert func([5], str(tmp_path)) == [[5]]
    assert len(os.listdir(tmp_path)) == 2
    on_dask.wait_for_workers(N_WORKERS, timeout=CLUSTER_WAIT_S)


def test_checkpoint_resumes_on_dask(on_dask: Any, tmp_path: Path) -> None:
    func = parallel(chunks=4, workers=2, seed=3, checkpoint=tmp_path, combine="concat")(noisy)
    data = np.arange(8.0)
    first = func(data)
    entries = sorted(tmp_path.rglob("chunk-*.pkl"))
    assert len(entries) == 4
    entries[1].unlink()
    again = func(data)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, func.sequential(data))
    assert len(list(tmp_path.rglob("chunk-*.pkl"))) == 4


# -- which cluster ------------------------------------------------------------------


def test_explicit_client_wins_over_address(on_dask: Any) -> None:
    assert _dask.resolve_client({"client": on_dask, "address": "tcp://127.0.0.1:1"}) is on_dask


def test_address_setting_connects_to_that_scheduler(on_dask: Any, dask_cluster: Any) -> None:
    address = dask_cluster.scheduler_address
    with config(client=None, address=address):
        client = _dask.resolve_client(conc_ml._options.current_config())
        assert client is not on_dask
        assert client.scheduler.address == address
        assert parallel(chunks=2, workers=2)(total)([1.0, 2.0, 3.0]) == [3.0, 3.0]
        # One client per address, reused by later calls.
        assert _dask.resolve_client({"address": address}) is client


def test_active_client_is_used_when_nothing_is_configured(dask_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_dask.ADDRESS_VARIABLE, raising=False)
    with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as active, active.as_current():
        assert _dask.resolve_client({}) is active
        with config(backend="dask"):
            assert parallel(chunks=2, workers=2)(total)([1.0, 2.0]) == [1.0, 2.0]


def test_unreachable_address_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(_dask, "CONNECT_TIMEOUT_S", 1.0)
    with (
        config(backend="dask", address=f"tcp://127.0.0.1:{port}"),
        pytest.raises(BackendUnavailableError, match="cannot reach the dask scheduler"),
    ):
        parallel(chunks=1)(total)([1.0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"client": "tcp://127.0.0.1:8786"}, "must be a distributed.Client"), ({"address": 8786}, "scheduler address")],
)
def test_wrong_settings_are_type_errors(settings: dict[str, Any], message: str) -> None:
    with config(backend="dask", **settings), pytest.raises(TypeError, match=message):
        parallel(chunks=1)(total)([1.0])


def test_missing_distributed_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "distributed" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'conc-ml\[dask\]'"):
        parallel(backend="dask")(total)


def _run_script(script: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    repository = str(Path(__file__).resolve().parents[2])
    inherited = {name: value for name, value in os.environ.items() if name != _dask.ADDRESS_VARIABLE}
    python_path = os.pathsep.join([repository, os.environ.get("PYTHONPATH", "")])
    full_env = {**inherited, **env, "PYTHONPATH": python_path}
    return subprocess.run(
        [sys.executable, "-W", "error", str(path)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=90,  # under the per-test timeout, so that a hang reports its output
        check=False,
    )


SCRIPT = """
import numpy as np
from conc_ml import parallel
from conc_ml.backends import _dask

@parallel(backend="dask", chunks=3, seed=0, combine="concat")
def noisy(data, *, rng):
    return data + rng.standard_normal(len(data))

if __name__ == "__main__":
    data = np.zeros(7)
    np.testing.assert_array_equal(noisy(data), noisy.sequential(data))
    client = _dask.resolve_client({})
    print("scheduler", client.scheduler.address)
    print("embedded", _dask._embedded is not None)
    print("workers", len(client.scheduler_info(n_workers=-1)["workers"]))
"""


def test_environment_variable_names_the_scheduler(dask_cluster: Any, tmp_path: Path) -> None:
    address = dask_cluster.scheduler_address
    done = _run_script(SCRIPT, {_dask.ADDRESS_VARIABLE: address}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"scheduler {address}" in done.stdout.splitlines()
    assert "embedded False" in done.stdout.splitlines()


def test_embedded_local_cluster_starts_lazily_and_closes_at_exit(tmp_path: Path) -> None:
    done = _run_script(SCRIPT, {}, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "embedded True" in lines
    assert any(line.startswith("scheduler tcp://127.0.0.1:") for line in lines)
    assert f"workers {conc_ml._system.usable_cpus()}" in lines
    assert "Traceback" not in done.stderr


def test_unpicklable_argument_is_a_serialization_error(on_dask: Any) -> None:
    import threading

    func = parallel(chunks=2, workers=2)(_length_with)
    with pytest.raises(conc_ml.SerializationError, match=r"argument 'lock'.*cannot be pickled to reach a 'dask'"):
        func([1, 2], threading.Lock())


def test_unpicklable_result_is_a_serialization_error(on_dask: Any) -> None:
    func = parallel(chunks=2, workers=2)(_make_lock)
    with pytest.raises(conc_ml.SerializationError, match="the result of chunk"):
        func([1, 2])


def _length_with(values: list[int], lock: Any) -> int:
    return len(values)


def _make_lock(values: list[int]) -> Any:
    import threading

    return threading.Lock()


def test_a_closed_address_client_is_replaced(on_dask: Any, dask_cluster: Any) -> None:
    settings = {"address": dask_cluster.scheduler_address}
    first = _dask.resolve_client(settings)
    first.close()
    second = _dask.resolve_client(settings)
    assert second is not first
    with config(client=second):
        assert parallel(chunks=2, workers=2)(total)([1.0, 2.0]) == [1.0, 2.0]


# -- the pytest plugin ------------------------------------------------------------------


def test_conc_bench_checks_and_times_calls_on_dask(
    pytester: pytest.Pytester, dask_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_dask.ADDRESS_VARIABLE, dask_cluster.scheduler_address)
    pytester.makepyfile(
        test_noisy="""
        import sys

        import cloudpickle
        import numpy as np

        from conc_ml import parallel

        # The cluster's workers cannot import this file (it lives in pytest's temporary
        # directory): send its functions by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])


        @parallel(backend="dask", chunks=3, workers=2, seed=0, combine="concat")
        def noisy(data, *, rng):
            return data + rng.standard_normal(len(data))


        def test_noisy():
            assert noisy(np.zeros(7)).shape == (7,)
        """
    )
    result = pytester.runpytest_subprocess("--conc-bench", "--conc-bench-rounds=2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_noisy::noisy", "  dask*2*3*ok*"])


class Offset:
    """A user's class with a @parallel method: the instance travels with each chunk."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    @parallel(chunks=3, combine="concat")
    def shift(self, values: list[float]) -> list[float]:
        return [value + self.offset for value in values]


def test_methods_run_with_their_instance_on_dask(on_dask: Any) -> None:
    shifter = Offset(0.5)
    assert shifter.shift([1.0, 2.0, 3.0]) == [1.5, 2.5, 3.5]
    assert sorted(shifter.shift.stream([1.0, 2.0, 3.0])) == [(0, [1.5]), (1, [2.5]), (2, [3.5])]
