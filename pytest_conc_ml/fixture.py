"""Running one ``@parallel`` call both ways: parity check, timing, and the ``conc_bench`` fixture.

The same protocol serves calls intercepted under ``--conc-bench`` and explicit
``conc_bench(func, ...)`` calls. For each configuration (the call's own, or each
backend x workers of a sweep) it runs, per round, the parallel path and then
``.sequential`` with the same seed, checks that the two results are equivalent, and
times both. Rounds alternate the two sides so that a slow drift of the machine
(another process, thermal throttling) weighs on both alike.

``async def`` functions are benchmarked in the caller's event loop: the intercepted call
returns a coroutine that awaits every round, so an async test sees an awaitable as usual.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from .parity import check_parity, max_difference
from .stats import Measurement, Parity, Stats

if TYPE_CHECKING:
    from conc_ml._intercept import InterceptedCall

__all__ = ["BenchPlan", "ConcBench", "Recorder", "benchmark_call"]

#: a step of the protocol: the function to run (``call.run`` or ``call.run_sequential``) and its overrides
Step = tuple[Callable[..., Any], dict[str, Any]]
Protocol = Generator[Step, tuple[Any, float], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class BenchPlan:
    """What to do with each call of one test.

    :ivar timing: time the runs (``--conc-bench`` outside pytest-xdist); else one
        untimed round that checks parity only.
    :ivar rounds: timed rounds per configuration.
    :ivar warmup: untimed rounds before them (pool start-up, caches).
    :ivar backends: backends to sweep; empty for the call's own.
    :ivar workers: worker counts to sweep; empty for the call's own.
    :ivar min_speedup: the bar below which a median speedup fails the test.
    """

    timing: bool
    rounds: int = 5
    warmup: int = 1
    rtol: float = 0.0
    atol: float = 0.0
    backends: tuple[str, ...] = ()
    workers: tuple[int, ...] = ()
    min_speedup: float | None = None

    def configurations(self) -> list[dict[str, Any]]:
        """The ``.options()`` overrides of each configuration, backends outermost."""
        backends: tuple[str | None, ...] = self.backends or (None,)
        workers: tuple[int | None, ...] = self.workers or (None,)
        configurations = []
        for backend, count in itertools.product(backends, workers):
            overrides: dict[str, Any] = {}
            if backend is not None:
                overrides["backend"] = backend
            if count is not None:
                overrides["workers"] = count
            configurations.append(overrides)
        return configurations


class Recorder:
    """Collects the rows one test produces, naming repeated calls apart.

    :param nodeid: the test's node id.
    :param test: the test's name, shown in the table.
    :param sink: receives every row as it is recorded (the session's list).
    """

    def __init__(self, nodeid: str, test: str, sink: Callable[[Measurement], None]):
        self.nodeid = nodeid
        self.test = test
        self.rows: list[Measurement] = []
        self._sink = sink
        self._seen: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def fullname(self, name: str) -> str:
        """A name unique within the run: the node id, the name, and ``#n`` from the second call on."""
        with self._lock:
            self._seen[name] += 1
            count = self._seen[name]
        suffix = "" if count == 1 else f"#{count}"
        return f"{self.nodeid}::{name}{suffix}"

    def add(self, row: Measurement) -> None:
        """Record ``row`` for this test and the session."""
        with self._lock:
            self.rows.append(row)
        self._sink(row)


def benchmark_call(call: InterceptedCall, plan: BenchPlan, recorder: Recorder, name: str) -> Any:
    """Run ``call`` per ``plan``, record its rows, and return the parallel result.

    With a sweep, the result is the one of the first configuration. For an ``async def``
    function, return a coroutine that does all this when awaited.

    :raises conc_ml.errors.ParityError: if a parallel result differs from the sequential one.
    """
    __tracebackhide__ = True
    protocol = _protocol(call, plan, recorder, name)
    if call.is_async:
        return _drive_async(protocol)
    return _drive(protocol)


class ConcBench:
    """The ``conc_bench`` fixture: ``conc_bench(func, *args, name=None, **kwargs)``.

    Runs ``func`` (a ``@parallel`` function) on the arguments both ways, checks parity,
    times it under ``--conc-bench``, and returns the parallel result (an awaitable for an
    ``async def`` function). Call it as often as the test needs.
    """

    def __init__(self, plan: BenchPlan, recorder: Recorder):
        self.plan = plan
        self.recorder = recorder

    def __call__(self, func: Any, /, *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Benchmark one call of ``func``.

        :param func: a function decorated with ``@parallel``.
        :param name: the row's name in the report; default the function's qualified name.
        :raises TypeError: if ``func`` is not a ``@parallel`` function.
        :raises conc_ml.errors.ParityError: if the parallel result differs from the sequential one.
        """
        __tracebackhide__ = True
        from conc_ml import ParallelFunction
        from conc_ml._intercept import InterceptedCall
        from conc_ml._parallel import BoundParallelFunction

        if isinstance(func, BoundParallelFunction):
            # A method looked up on an instance: the class's function with the instance first.
            args = (func._target, *args)
            func = func._function
        if not isinstance(func, ParallelFunction):
            raise TypeError(
                f"conc_bench() takes a function decorated with @conc_ml.parallel, not {type(func).__name__} "
                f"{func!r}; decorate it, or call it directly"
            )
        call = InterceptedCall(func, args, kwargs, func.resolved_options())
        return benchmark_call(call, self.plan, self.recorder, name or function_name(call))


def function_name(call: InterceptedCall) -> str:
    """The qualified name of the user's function behind ``call``."""
    wrapped = call.function.__wrapped__
    return str(getattr(wrapped, "__qualname__", None) or getattr(wrapped, "__name__", None) or repr(wrapped))


def _drive(protocol: Protocol) -> Any:
    __tracebackhide__ = True
    try:
        step = next(protocol)
        while True:
            run, overrides = step
            start = time.perf_counter()
            try:
                value = run(**overrides)
            except BaseException as error:
                step = protocol.throw(error)
                continue
            step = protocol.send((value, time.perf_counter() - start))
    except StopIteration as stop:
        return stop.value
    finally:
        protocol.close()


async def _drive_async(protocol: Protocol) -> Any:
    __tracebackhide__ = True
    try:
        step = next(protocol)
        while True:
            run, overrides = step
            start = time.perf_counter()
            try:
                value = await run(**overrides)
            except BaseException as error:
                step = protocol.throw(error)
                continue
            step = protocol.send((value, time.perf_counter() - start))
    except StopIteration as stop:
        return stop.value
    finally:
        protocol.close()


def _protocol(call: InterceptedCall, plan: BenchPlan, recorder: Recorder, name: str) -> Protocol:
    __tracebackhide__ = True
    from conc_ml.errors import ParityError

    fullname = recorder.fullname(name)
    replayable = call.replayable()
    if replayable is None:
        # An iterator passed whole to every chunk would be consumed by the first run.
        value, _ = yield (call.run, {})
        shape = call.shape()
        recorder.add(
            _row(
                name,
                fullname,
                recorder=recorder,
                shape=shape,
                sequential_times=[],
                parallel_times=[],
                parity=Parity(None, plan.rtol, plan.atol),
                plan=plan,
            )
        )
        return value
    call = replayable
    # The same seed on both sides: the results then depend on the chunking only.
    pinned_seed: dict[str, Any] = {} if call.options.seed is not None else {"seed": secrets.randbits(63)}
    result: Any = None
    first = True
    for configuration in plan.configurations():
        overrides = {**configuration, **pinned_seed}
        shape = call.shape(**overrides)
        sequential_times: list[float] = []
        parallel_times: list[float] = []
        largest: float | None = 0.0
        total = plan.warmup + plan.rounds if plan.timing else 1
        for round_index in range(total):
            parallel_value, parallel_time = yield (call.run, overrides)
            try:
                sequential_value, sequential_time = yield (call.run_sequential, overrides)
            except Exception as error:
                recorder.add(
                    _row(
                        name,
                        fullname,
                        recorder=recorder,
                        shape=shape,
                        sequential_times=[],
                        parallel_times=[],
                        parity=Parity(False, plan.rtol, plan.atol, None),
                        plan=plan,
                    )
                )
                raise ParityError(
                    f"{_describe(name, shape, overrides)}: the parallel run returned a result, but .sequential() "
                    f"raised {type(error).__name__}: {error}"
                ) from error
            difference = max_difference(parallel_value, sequential_value)
            largest = None if difference is None or largest is None else max(largest, difference)
            try:
                check_parity(parallel_value, sequential_value, rtol=plan.rtol, atol=plan.atol)
            except ParityError as error:
                parity = Parity(False, plan.rtol, plan.atol, difference)
                recorder.add(
                    _row(
                        name,
                        fullname,
                        recorder=recorder,
                        shape=shape,
                        sequential_times=[],
                        parallel_times=[],
                        parity=parity,
                        plan=plan,
                    )
                )
                raise ParityError(
                    f"{_describe(name, shape, overrides)}: parallel result differs from .sequential() "
                    f"(round {round_index + 1}, rtol={plan.rtol:g}, atol={plan.atol:g}):\n{error}"
                ) from None
            if plan.timing and round_index >= plan.warmup:
                sequential_times.append(sequential_time)
                parallel_times.append(parallel_time)
        parity = Parity(True, plan.rtol, plan.atol, largest)
        recorder.add(
            _row(
                name,
                fullname,
                recorder=recorder,
                shape=shape,
                sequential_times=sequential_times,
                parallel_times=parallel_times,
                parity=parity,
                plan=plan,
            )
        )
        if first:
            result, first = parallel_value, False
    return result


Shape = tuple[str, int, int | None]


def _describe(name: str, shape: Shape, overrides: dict[str, Any]) -> str:
    backend, workers, chunks = shape
    seed = overrides.get("seed")
    details = f"backend={backend}, workers={workers}, chunks={chunks if chunks is not None else '?'}"
    if seed is not None:
        details += f", seed={seed}"
    return f"conc-bench: {name}() [{details}]"


def _row(
    name: str,
    fullname: str,
    *,
    recorder: Recorder,
    shape: Shape,
    sequential_times: list[float],
    parallel_times: list[float],
    parity: Parity,
    plan: BenchPlan,
) -> Measurement:
    from conc_ml._options import usable_cpus

    backend, workers, chunks = shape
    return Measurement(
        name=name,
        fullname=fullname,
        test=recorder.test,
        backend=backend,
        workers=workers,
        chunks=chunks,
        cpus=usable_cpus(),
        sequential=Stats.from_times(sequential_times) if sequential_times else None,
        parallel=Stats.from_times(parallel_times) if parallel_times else None,
        parity=parity,
        sweep=len(plan.workers) > 1,
    )
