# distributed's API is only partly annotated; its unannotated calls are used as documented.
# mypy: disallow-untyped-calls=False
"""The ``dask`` backend: chunks as tasks on a ``dask.distributed`` cluster.

The cluster is found in this order, the first that applies wins:

1. ``conc_ml.config(client=...)``: a :class:`distributed.Client` the caller made;
2. ``conc_ml.config(address="tcp://...")``, else the ``CONC_ML_DASK_ADDRESS`` environment
   variable: a scheduler to connect to (one client per address, kept for later calls and
   closed at interpreter exit);
3. the client already active in the caller (``with Client(...):``, the default client, or
   the worker's own client inside a dask task);
4. an embedded :class:`distributed.LocalCluster`: worker processes with one thread each,
   as many as there are usable CPUs, on the loopback interface and without a dashboard;
   started on first use and closed at interpreter exit.

Large numpy and pandas arguments are scattered to the cluster once per call (by identity)
and every task carries a reference instead of a copy: an array broadcast to all chunks
crosses the network once, then at most once per worker that needs it.

A worker lost while running a chunk (a signal, ``os._exit``, the nanny's memory limit):
dask re-runs the chunk on another worker as long as the scheduler's
``distributed.scheduler.allowed-failures`` allows (dask's default is 3 on a cluster you
start), and the call still succeeds; past that the call fails with
:class:`~conc_ml.errors.WorkerCrashedError`. The embedded cluster allows no retry, so a
lost worker fails the call at once, as on the ``process`` backend.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pathlib
import sys
import threading
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import distributed
import numpy as np
from distributed.scheduler import KilledWorker

from .._runner import ChunkOutcome, ChunkTask, run_chunk
from .._system import usable_cpus
from ..errors import BackendUnavailableError, WorkerCrashedError
from ._base import BackendSetting, CallInfo

__all__ = [
    "ADDRESS_VARIABLE",
    "LOOPBACK_SCHEDULER_OPTIONS",
    "SCATTER_THRESHOLD_BYTES",
    "DaskBackend",
    "DaskExecutor",
    "DaskRunner",
    "close_clients",
    "resolve_client",
]

#: environment variable naming the scheduler to use when ``config()`` names none
ADDRESS_VARIABLE = "CONC_ML_DASK_ADDRESS"
#: arguments at least this large are scattered once instead of travelling in every task
SCATTER_THRESHOLD_BYTES = 1 << 20
#: seconds to wait for a scheduler named by address before giving up
CONNECT_TIMEOUT_S = 30.0

#: scheduler options that keep its HTTP endpoint (health checks; the dashboard is off) on
#: a free loopback port: without them it takes port 8787, where another cluster may live
LOOPBACK_SCHEDULER_OPTIONS: Mapping[str, Any] = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}

_lock = threading.Lock()
_clients_by_address: dict[str, distributed.Client] = {}
_embedded: tuple[distributed.LocalCluster, distributed.Client] | None = None
_exit_hook_registered = False


# -- which cluster ------------------------------------------------------------------


def resolve_client(settings: Mapping[str, Any]) -> distributed.Client:
    """The client a call uses, by the order in the module docstring.

    :param settings: backend settings from ``conc_ml.config()`` (``client``, ``address``).
    :raises TypeError: if ``client`` is not a synchronous :class:`distributed.Client`, or
        ``address`` is not a non-empty str.
    :raises BackendUnavailableError: if the scheduler at the address cannot be reached.
    """
    client = settings.get("client")
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"config(client=...) must be a distributed.Client, not {type(client).__name__}")
        _check_synchronous(client)
        return client
    address = settings.get("address")
    source = "config(address=...)"
    if address is None:
        address = os.environ.get(ADDRESS_VARIABLE, "").strip() or None
        source = ADDRESS_VARIABLE
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise TypeError(f"{source} must be a scheduler address such as 'tcp://127.0.0.1:8786', got {address!r}")
        return _client_for_address(address.strip(), source)
    try:
        active = distributed.get_client()
    except ValueError:
        return _embedded_client()
    _check_synchronous(active)
    return active


def _check_synchronous(client: distributed.Client) -> None:
    if client.asynchronous:
        raise TypeError(
            "conc-ml needs a synchronous distributed.Client (asynchronous=False); "
            "make one with Client(address) and pass it as config(client=...)"
        )


def _is_running(client: distributed.Client) -> bool:
    return client.status == "running"


def _client_for_address(address: str, source: str) -> distributed.Client:
    with _lock:
        stale = _clients_by_address.pop(address, None)
        if stale is not None:
            if _is_running(stale):
                _clients_by_address[address] = stale
                return stale
            stale.close()
        # Made in two steps to keep hold of a client that fails to connect: distributed
        # marks it closed without stopping its event-loop thread, which would outlive it.
        client = distributed.Client.__new__(distributed.Client)
        try:
            client.__init__(address, set_as_default=False, timeout=CONNECT_TIMEOUT_S)  # type: ignore[misc]
        except (OSError, TimeoutError) as error:
            client.close()
            loop_runner = getattr(client, "_loop_runner", None)
            if loop_runner is not None:
                loop_runner.stop()
            raise BackendUnavailableError(
                f"cannot reach the dask scheduler at {address!r} (from {source}): {error}. "
                "Start one with `dask scheduler` and workers with `dask worker ADDRESS`, "
                "or unset the address to use an embedded LocalCluster"
            ) from error
        _clients_by_address[address] = client
        _register_exit_hook()
        return client


def _embedded_client() -> distributed.Client:
    global _embedded
    with _lock:
        if _embedded is not None:
            if _is_running(_embedded[1]):
                return _embedded[1]
            _close_embedded(_embedded)
            _embedded = None
        _require_main_guard()
        cluster = distributed.LocalCluster(
            n_workers=usable_cpus(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={
                **LOOPBACK_SCHEDULER_OPTIONS,
                # A lost worker fails the call at once, as on the process backend, instead
                # of killing up to four workers with the same chunk.
                "allowed_failures": 0,
            },
        )
        _embedded = (cluster, distributed.Client(cluster, set_as_default=False))
        _register_exit_hook()
        return _embedded[1]


def _unguarded_main_line() -> int | None:
    """The line of the running script that started this call outside its main guard, if any.

    The embedded cluster starts its workers with multiprocessing's ``spawn``, which runs
    the script again in every worker: a call at the script's top level, outside
    ``if __name__ == "__main__":``, would run again there and start a cluster of its own,
    which multiprocessing refuses mid-bootstrap ("Nanny failed to start"). ``None`` when
    the call comes from a guarded line, from an interactive session or from a program
    with no script file.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    frame: types.FrameType | None = sys._getframe(1)
    line = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for statement in tree.body:
        end = statement.end_lineno if statement.end_lineno is not None else statement.lineno
        if statement.lineno <= line <= end:
            return None if _is_main_guard(statement) else line
    return None


def _is_main_guard(statement: ast.stmt) -> bool:
    """Whether ``statement`` is an ``if`` testing ``__name__`` against ``"__main__"`` (in any form)."""
    if not isinstance(statement, ast.If):
        return False
    nodes = list(ast.walk(statement.test))
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in nodes) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in nodes
    )


def _require_main_guard() -> None:
    line = _unguarded_main_line()
    if line is None:
        return
    script = getattr(sys.modules["__main__"], "__file__", "the script")
    raise BackendUnavailableError(
        f"backend 'dask' cannot start its embedded LocalCluster from line {line} of {script}: its worker "
        "processes run the script again on start-up, so a call at the top level of the script must sit under "
        "'if __name__ == \"__main__\":' (the process backend does not need it). Move the call under that guard, "
        "or connect to a running cluster with config(address=...) or CONC_ML_DASK_ADDRESS"
    )


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        # Registered after distributed was imported, so this runs before distributed's
        # own exit handlers and closes our clients while their event loop still runs.
        atexit.register(close_clients)
        _exit_hook_registered = True


def close_clients() -> None:
    """Close the clients conc-ml opened (by address) and the embedded cluster, if any.

    Clients the user passed or made active are theirs and are left alone. Called at
    interpreter exit; safe to call at any time (a later call opens what it needs again).
    """
    global _embedded
    with _lock:
        clients = list(_clients_by_address.values())
        _clients_by_address.clear()
        embedded, _embedded = _embedded, None
    for client in clients:
        client.close()
    if embedded is not None:
        _close_embedded(embedded)


#: seconds a worker of the embedded cluster gets to finish its running task when the cluster closes
WORKER_CLOSE_TIMEOUT_S = 0.5


def _close_embedded(embedded: tuple[distributed.LocalCluster, distributed.Client]) -> None:
    cluster, client = embedded
    client.close()
    # A chunk left running by Ctrl-C or a timeout (dask cannot stop a running task) would
    # hold each nanny for its default 4 s grace and a warning before it kills its worker:
    # nobody waits for those results now, so the workers get half a second.
    nanny_log = logging.getLogger("distributed.nanny")
    level = nanny_log.level
    nanny_log.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(Exception):  # a cluster already closing or half-started: close() below decides
            cluster.sync(_close_workers, list(cluster.workers.values()), WORKER_CLOSE_TIMEOUT_S)
        cluster.close()
    finally:
        nanny_log.setLevel(level)


async def _close_workers(workers: list[Any], timeout: float) -> None:
    """Close the embedded cluster's nannies (and so their workers), killing a busy one after ``timeout`` s."""
    await asyncio.gather(*(worker.close(timeout=timeout) for worker in workers), return_exceptions=True)


# -- scattering large arguments --------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Scattered:
    """Stands in a task for an argument that travels separately, as scattered data."""

    slot: str


def _payload_bytes(value: object) -> int | None:
    """The size of a numpy or pandas object's data, or ``None`` for anything else."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if type(value).__module__.partition(".")[0] == "pandas":
        memory_usage = getattr(value, "memory_usage", None)
        if callable(memory_usage):
            return int(np.sum(memory_usage(deep=False)))
    return None


def run_scattered_chunk(
    run: Callable[[ChunkTask], ChunkOutcome], task: ChunkTask, scattered: dict[str, Any]
) -> ChunkOutcome:
    """Worker side: put the scattered arguments back in place, then run the chunk.

    dask resolves the futures in ``scattered`` (a top-level argument) to their data
    before calling this.
    """

    def restore(value: Any) -> Any:
        return scattered[value.slot] if isinstance(value, _Scattered) else value

    args = tuple(restore(value) for value in task.args)
    kwargs = {name: restore(value) for name, value in task.kwargs.items()}
    task = dataclasses.replace(task, args=args, kwargs=kwargs)
    if not multiprocessing.current_process().daemon:
        return run(task)
    # A daemonic worker (dask's default) cannot start processes: joblib (scikit-learn's
    # n_jobs) would run one job at a time anyway, warning on every call. It runs one at a
    # time in silence; the cluster's own threads and processes are the parallelism.
    import joblib

    with joblib.parallel_config(backend="sequential"):
        return run(task)


# -- the executor -----------------------------------------------------------------


class DaskExecutor(concurrent.futures.Executor):
    """Submits the chunks of one call to a dask cluster.

    Large arguments are scattered once per call (see :data:`SCATTER_THRESHOLD_BYTES`);
    :meth:`shutdown` drops every task and piece of data the call left on the cluster.
    """

    def __init__(self, client: distributed.Client):
        self.client = client
        self._call_id = uuid.uuid4().hex[:12]
        # id -> (the object itself, kept alive so that its id is not reused, its future)
        self._scattered: dict[int, tuple[object, distributed.Future[Any]]] = {}
        self._submitted: list[distributed.Future[Any]] = []
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Submit ``fn(task)`` (the engine's :func:`~conc_ml._runner.run_chunk`) as a dask task.

        :raises RuntimeError: if the executor was shut down.
        """
        if self._shut_down:
            raise RuntimeError("cannot submit chunks to a DaskExecutor after shutdown")
        (task,) = args
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            stub, scattered = self._detach_large_arguments(task)
            name = getattr(task.func, "__name__", "chunk")
            remote = self.client.submit(
                run_scattered_chunk,
                fn,
                stub,
                scattered,
                # Unique per submission: a chunk sent again (retries=) must not find its erred task.
                key=f"conc-ml-{name}-{self._call_id}-{task.index}-{len(self._submitted)}",
                pure=False,
            )
        except Exception as error:
            # A task that cannot be serialised fails here; report it through the future,
            # where the engine translates failures (into SerializationError).
            result.set_exception(error)
            return result
        self._submitted.append(remote)
        loop = self.client.loop
        assert loop is not None, "a running synchronous Client has an event loop"
        loop.add_callback(_forward_outcome, remote, result, task.index)
        return result

    def _detach_large_arguments(self, task: ChunkTask) -> tuple[ChunkTask, dict[str, Any]]:
        scattered: dict[str, Any] = {}

        def detach(value: Any) -> Any:
            size = _payload_bytes(value)
            if size is None or size < SCATTER_THRESHOLD_BYTES:
                return value
            entry = self._scattered.get(id(value))
            if entry is None:
                [future] = self.client.scatter([value], hash=False)
                entry = self._scattered[id(value)] = (value, future)
            slot = f"arg{id(value)}"
            scattered[slot] = entry[1]
            return _Scattered(slot)

        args = tuple(detach(value) for value in task.args)
        kwargs = {name: detach(value) for name, value in task.kwargs.items()}
        if not scattered:
            return task, scattered
        return dataclasses.replace(task, args=args, kwargs=kwargs), scattered

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Drop the call's tasks and scattered data from the cluster.

        dask cannot stop a task that is running: it finishes on its worker and its result
        is discarded. ``wait`` and ``cancel_futures`` are accepted for the
        :class:`~concurrent.futures.Executor` interface; pending tasks are always cancelled.
        """
        self._shut_down = True
        remote = self._submitted + [future for _, future in self._scattered.values()]
        self._submitted = []
        self._scattered = {}
        if remote and _is_running(self.client):
            self.client.cancel(remote)


async def _forward_outcome(remote: distributed.Future[Any], result: concurrent.futures.Future[Any], chunk: int) -> None:
    """Runs on the client's event loop: copy a dask future's outcome to ``result``."""
    status: str | None
    try:
        # The same (private) hook distributed's own ClientExecutor uses: wait without
        # raising, then read the status.
        outcome = await remote._result(raiseit=False)
    except BaseException as fetch_error:  # the result could not be fetched or deserialised
        outcome, status = fetch_error, "fetch-failed"
    else:
        status = remote.status
    if result.done() or not result.set_running_or_notify_cancel():
        return  # the engine cancelled this chunk
    if status == "finished":
        result.set_result(outcome)
    elif status == "cancelled":
        # Not cancelled by conc-ml (that is handled above): the scheduler or the client
        # went away under the call.
        result.set_exception(
            WorkerCrashedError(
                f"chunk {chunk} was lost by the dask cluster ({outcome}); the scheduler or the client "
                "closed while the call ran",
                chunk=chunk,
            )
        )
    elif status == "fetch-failed":
        result.set_exception(outcome)
    else:
        _, remote_error, traceback = outcome
        result.set_exception(remote_error.with_traceback(traceback))


# -- the backend ----------------------------------------------------------------


class DaskRunner:
    """The chunks of one call as dask tasks: ``workers`` of them in flight at once."""

    def __init__(self, client: distributed.Client, workers: int):
        self.executor = DaskExecutor(client)
        # ``workers`` is how many chunks of the call run at once on the cluster.
        self.capacity = workers

    def submit(self, task: ChunkTask) -> concurrent.futures.Future[ChunkOutcome]:
        """Submit ``run_chunk(task)`` as a dask task."""
        future: concurrent.futures.Future[ChunkOutcome] = self.executor.submit(run_chunk, task)
        return future

    def close(self, *, abort: bool, stop_running: bool) -> None:
        """Drop the call's tasks and scattered data (a running task finishes on its worker)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


def _is_address(value: str) -> bool:
    return bool(value.strip())


class DaskBackend:
    """Chunks as tasks on a dask.distributed cluster (see the module docstring)."""

    crosses_processes: ClassVar[bool] = True
    # dask cannot interrupt a running task: on a timeout it runs to its end on its
    # worker and its result is discarded.
    can_stop_running: ClassVar[bool] = False
    runs_in_event_loop: ClassVar[bool] = False
    settings: ClassVar[Mapping[str, BackendSetting]] = {
        "client": BackendSetting("a distributed.Client (a synchronous one)", (distributed.Client,)),
        "address": BackendSetting("a scheduler address such as 'tcp://127.0.0.1:8786'", (str,), _is_address),
    }

    def before_call(self, call: CallInfo) -> None:
        pass

    def open_runner(self, workers: int, settings: Mapping[str, Any]) -> DaskRunner:
        return DaskRunner(resolve_client(settings), workers)

    def translate_error(self, error: BaseException, chunk: int) -> BaseException | None:
        if not isinstance(error, KilledWorker):
            return None
        return WorkerCrashedError(
            f"the dask worker running chunk {chunk} died, and dask gave up on the chunk: {error} "
            "Re-running lost chunks on other workers is governed by the scheduler's "
            "distributed.scheduler.allowed-failures setting",
            chunk=chunk,
        )
