"""Running one ``@parallel`` call both ways: parity check, timing, and the ``conc_bench`` fixture.

The same protocol serves calls intercepted under ``--conc-bench`` and explicit
``conc_bench(func, ...)`` calls. First the call as written runs, once, on the test's own
arguments (with a pinned seed): the test receives its result and its arguments end as it
leaves them. The checks that follow run at once for the fixture, and after the test's body
for an intercepted call (a :class:`Deferred`, comparing snapshots of what the call as
written gave the test). Every other run works on a deep copy of the arguments taken before that call:
for each configuration (the call's own, or each backend x workers of a sweep) it runs, per
round, the parallel path and then ``.sequential`` with the same seed, checks that the two
results, and the arguments the two runs leave, are equivalent, and times both. The call
as written is also held against a sequential run of its own configuration. Rounds
alternate the two sides so that a slow drift of the machine weighs on both alike.

For ``async def`` functions the intercepted call returns a coroutine, so an async test
sees an awaitable as usual: it runs the call as written in the test's event loop; the
deferred checks run later in a loop of their own, on the same library (asyncio or trio).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import fnmatch
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .parity import compare as compare_parity
from .stats import Measurement, Parity, Stats

if TYPE_CHECKING:
    from conc_ml._intercept import InterceptedCall

__all__ = ["BenchPlan", "ConcBench", "Deferred", "Recorder", "benchmark_call"]

#: a step of the protocol: the function to run (``call.run`` or ``call.run_sequential``) and its overrides
Step = tuple[Callable[..., Any], dict[str, Any]]
Protocol = Generator[Step, tuple[Any, float], Any]
#: the positional and keyword arguments of a call
Arguments = tuple[tuple[Any, ...], dict[str, Any]]
#: backend, workers and chunk count of a run
Shape = tuple[str, int, int | None]


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
    #: leave calls alone: ``True`` for every call, else function names and fnmatch patterns
    exclude: bool | tuple[str, ...] = ()

    def excludes(self, function: Any) -> bool:
        """Whether calls of ``function`` (a ``@parallel`` function) run once, as written, unchecked."""
        if self.exclude is True:
            return True
        if not self.exclude:
            return False
        wrapped = getattr(function, "__wrapped__", function)
        qualname = str(getattr(wrapped, "__qualname__", ""))
        names = {qualname, f"{getattr(wrapped, '__module__', '')}.{qualname}"}
        return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.exclude)

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


@dataclasses.dataclass(frozen=True, slots=True)
class CallSlot:
    """Where one intercepted call goes in the report.

    :ivar fullname: node id, name and ``#n`` from the name's second row on: unique within a run.
    :ivar call: 1 for the first call of the name in the test (or at the site), 2 for the next, ...
    :ivar site: where the test made the call, ``path:line``.
    :ivar repeat: a later call at a site whose first call was measured (hypothesis examples):
        check it, do not time it, and count it into the site's row.
    """

    fullname: str
    call: int
    site: str
    repeat: bool


class Recorder:
    """Collects the rows one test produces, naming repeated calls apart.

    :param nodeid: the test's node id.
    :param test: the test's name, shown in the table.
    :param sink: receives every row as it is recorded (the session's list).
    :param per_site: one row per call site and configuration (a hypothesis test calls its
        functions once per example): later calls at a site are checked and counted, not timed.
    """

    def __init__(self, nodeid: str, test: str, sink: Callable[[Measurement], None], *, per_site: bool = False):
        self.nodeid = nodeid
        self.test = test
        self.per_site = per_site
        self.rows: list[Measurement] = []
        self._sink = sink
        self._seen: collections.Counter[str] = collections.Counter()
        self._sites: dict[tuple[str, str], CallSlot] = {}
        self._lock = threading.Lock()

    def begin(self, name: str, site: str = "") -> CallSlot:
        """Name the next call of ``name`` made at ``site``."""
        with self._lock:
            if self.per_site and (name, site) in self._sites:
                first = self._sites[name, site]
                return dataclasses.replace(first, repeat=True)
            self._seen[name] += 1
            count = self._seen[name]
            suffix = "" if count == 1 else f"#{count}"
            slot = CallSlot(f"{self.nodeid}::{name}{suffix}", count, site, repeat=False)
            self._sites.setdefault((name, site), slot)
            return slot

    def add(self, row: Measurement) -> None:
        """Record ``row`` for this test and the session; a repeated site's row is counted into the first."""
        with self._lock:
            for earlier in self.rows:
                if earlier.fullname == row.fullname and (earlier.backend, earlier.workers) == (
                    row.backend,
                    row.workers,
                ):
                    _merge_into(earlier, row)
                    return
            self.rows.append(row)
        self._sink(row)


def _merge_into(row: Measurement, later: Measurement) -> None:
    """Count a later, untimed call at the same site into ``row`` (same object the session holds)."""
    row.calls += later.calls
    row.changed_arguments = row.changed_arguments or later.changed_arguments
    ok = row.parity.ok
    if later.parity.ok is False or ok is None:
        ok = later.parity.ok if later.parity.ok is not None else ok
    differences = [d for d in (row.parity.max_difference, later.parity.max_difference) if d is not None]
    row.parity = Parity(ok, row.parity.rtol, row.parity.atol, max(differences) if differences else None)


def benchmark_call(
    call: InterceptedCall,
    plan: BenchPlan,
    recorder: Recorder,
    name: str,
    site: str = "",
    *,
    defer: Callable[[Deferred], None] | None = None,
) -> Any:
    """Run ``call`` as written, check and time it per ``plan`` on copies, record its rows.

    The test receives what the call as written returns, and its arguments end as that call
    leaves them: every other round runs on a deep copy of the arguments taken before it.
    For an ``async def`` function, return a coroutine that does all this when awaited.

    :param site: where the call was made (``path:line``), for one row per site where the plan says so.
    :param defer: receives the checks and timed rounds to run after the test's body, so that
        nothing the extra rounds do (a global list appended to, a file written) is seen by
        the test; the result and the arguments as the call left them are compared from
        snapshots. ``None``: run them now, before returning (the ``conc_bench`` fixture).
    :raises conc_ml.errors.ParityError: if a parallel result, or the arguments a parallel run
        leaves, differ from the sequential run's (when not deferred).
    """
    __tracebackhide__ = True
    slot = recorder.begin(name, site)
    replayable = call.replayable()
    pristine, why_not = _copy_arguments(replayable) if replayable is not None else (None, "")
    if replayable is None or pristine is None:
        # An iterator passed whole would be consumed by the first run; arguments that cannot
        # be copied cannot be given to a second run untouched. Either way: the call, once.
        def skipped() -> None:
            parity = Parity(None, plan.rtol, plan.atol)
            recorder.add(_row(name, slot, plan, shape=call.shape(), parity=parity, note=why_not))

        if call.is_async:
            return _once_async(call, skipped)
        value = call.run_as_written()
        skipped()
        return value
    call = replayable
    # The same seed on both sides: the results then depend on the chunking only.
    pinned: dict[str, Any] = {} if call.options.seed is not None else {"seed": secrets.randbits(63)}
    # What the call as written returned and left is filled in once it has run.
    template = Deferred(
        call=call,
        plan=plan,
        recorder=recorder,
        name=name,
        slot=slot,
        pristine=pristine,
        pinned=pinned,
        written=_AsWritten(None, None),
    )
    if call.is_async:
        return _benchmark_async(template, defer)
    # The call as written, on the test's own objects, comes first: the test gets its result.
    value = call.run_as_written(**pinned)
    checks = dataclasses.replace(template, written=_as_written(call, value, defer is not None))
    if defer is None:
        checks.run()
    else:
        defer(checks)
    return value


async def _once_async(call: InterceptedCall, then: Callable[[], None]) -> Any:
    value = await call.run_as_written()
    then()
    return value


async def _benchmark_async(template: Deferred, defer: Callable[[Deferred], None] | None) -> Any:
    __tracebackhide__ = True
    call = template.call
    value = await call.run_as_written(**template.pinned)
    written = _as_written(call, value, defer is not None)
    checks = dataclasses.replace(template, written=written, library=_async_library())
    if defer is None:
        await _drive_async(checks.protocol())
    else:
        defer(checks)
    return value


def _async_library() -> str:
    """The event loop library the caller runs on (``asyncio``, ``trio``), for running deferred rounds."""
    try:
        import sniffio

        return str(sniffio.current_async_library())
    except Exception:  # sniffio absent, or not called from a loop it knows: anyio's default
        return "asyncio"


@dataclasses.dataclass(frozen=True, slots=True)
class _AsWritten:
    """What the call as written gave the test, held for the checks that follow.

    :ivar value: its result (a snapshot, when checked later), or :data:`_UNCOPIED`.
    :ivar arguments: the arguments as it left them (a snapshot, when checked later), or ``None``.
    """

    value: Any
    arguments: Arguments | None


#: a result that could not be copied, so it is not compared (the rounds on copies still are)
_UNCOPIED = object()


def _as_written(call: InterceptedCall, value: Any, snapshot: bool) -> _AsWritten:
    """The call as written's result and argument state; copies of them when they are checked later.

    The test goes on using its result and arguments (it may sort the one, refill the other),
    so a check after the test's body compares copies taken now.
    """
    arguments = (call.args, call.kwargs)
    if not snapshot:
        return _AsWritten(value, arguments)
    try:
        value = copy.deepcopy(value)
    except Exception:
        value = _UNCOPIED
    copied, _ = _copy_arguments(call)
    return _AsWritten(value, copied)


@dataclasses.dataclass(kw_only=True, slots=True)
class Deferred:
    """The checks and timed rounds of one call, run after the call as written.

    :ivar pristine: a copy of the arguments taken before the call as written; each run gets its own copy of it.
    :ivar pinned: the seed given to every run.
    :ivar written: what the call as written returned and left.
    :ivar library: for an ``async def`` function, the event loop library to run them on.
    """

    call: InterceptedCall
    plan: BenchPlan
    recorder: Recorder
    name: str
    slot: CallSlot
    pristine: Arguments
    pinned: dict[str, Any]
    written: _AsWritten
    library: str | None = None

    def protocol(self) -> Protocol:
        """The steps of the checks, for :func:`_drive` or :func:`_drive_async`."""
        return _protocol(self)

    def run(self) -> None:
        """Run the checks and rounds in this thread (an ``async def`` function's in a loop of their own).

        :raises conc_ml.errors.ParityError: if a run differs from ``.sequential()``'s.
        """
        __tracebackhide__ = True
        if self.library is None:
            _drive(self.protocol())
            return
        # The test's event loop is done with; a thread of its own keeps the caller's loop
        # settings (pytest-asyncio's) untouched.
        import anyio

        failure: list[BaseException] = []

        def in_thread() -> None:
            try:
                anyio.run(_drive_async, self.protocol(), backend=self.library or "asyncio")
            except BaseException as error:
                failure.append(error)

        thread = threading.Thread(target=in_thread, name=f"conc-bench {self.name}")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]


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
        from conc_ml import AsyncParallelFunction, ParallelFunction
        from conc_ml._intercept import InterceptedCall
        from conc_ml._parallel import BoundParallelFunction

        if isinstance(func, BoundParallelFunction):
            # A method looked up on an instance: the class's function with the instance first.
            args = (func._target, *args)
            func = func._function
        if not isinstance(func, ParallelFunction | AsyncParallelFunction):
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


def _protocol(checks: Deferred) -> Protocol:
    __tracebackhide__ = True
    call, plan, recorder, name, slot = checks.call, checks.plan, checks.recorder, checks.name, checks.slot
    pristine, pinned, written = checks.pristine, checks.pinned, checks.written
    changed = written.arguments is not None and not _same_state(pristine, written.arguments)
    # the call as written joins the comparison when its result and arguments were kept
    real = (
        []
        if written.value is _UNCOPIED or written.arguments is None
        else [(written.value, written.arguments, "the call as written")]
    )
    configurations = plan.configurations() if plan.timing and not slot.repeat else []
    checker = _RoundChecker(name, slot, plan, recorder)
    if {} not in configurations:
        # The reference for the call as written: .sequential() on a copy, same seed.
        shape = call.shape(**pinned)
        arguments = copy.deepcopy(pristine)
        reference = yield from _sequential(call, arguments, pinned, checker, shape)
        difference = checker.check(shape, pinned, real, reference, arguments)
        if not configurations:
            parity = Parity(True, plan.rtol, plan.atol, difference)
            recorder.add(_row(name, slot, plan, shape=shape, parity=parity, changed=changed))
            return None
    for configuration in configurations:
        overrides = {**configuration, **pinned}
        shape = call.shape(**overrides)
        sequential_times: list[float] = []
        parallel_times: list[float] = []
        largest: float | None = 0.0
        for round_index in range(plan.warmup + plan.rounds):
            parallel_arguments = copy.deepcopy(pristine)
            parallel_value, parallel_time = yield _step(call, parallel_arguments, overrides)
            sequential_arguments = copy.deepcopy(pristine)
            start = time.perf_counter()
            sequential_value = yield from _sequential(call, sequential_arguments, overrides, checker, shape)
            sequential_time = checker.last_time if checker.last_time is not None else time.perf_counter() - start
            runs = [(parallel_value, parallel_arguments, f"round {round_index + 1}")]
            if not configuration and round_index == 0:
                runs.extend(real)
            difference = checker.check(shape, overrides, runs, sequential_value, sequential_arguments)
            largest = None if difference is None or largest is None else max(largest, difference)
            if round_index >= plan.warmup:
                sequential_times.append(sequential_time)
                parallel_times.append(parallel_time)
        recorder.add(
            _row(
                name,
                slot,
                plan,
                shape=shape,
                parity=Parity(True, plan.rtol, plan.atol, largest),
                sequential_times=sequential_times,
                parallel_times=parallel_times,
                changed=changed,
            )
        )
    return None


def _copy_arguments(call: InterceptedCall) -> tuple[Arguments | None, str]:
    """A deep copy of the call's arguments, or ``None`` and why not."""
    try:
        return copy.deepcopy((call.args, call.kwargs)), ""
    except Exception as error:
        return None, f"its arguments cannot be copied ({type(error).__name__}: {error})"


def _same_state(left: Any, right: Any) -> bool:
    """Whether two argument states are alike: equivalent values, or the same pickled state.

    Pickles settle objects without ``__eq__`` (plain class instances); a state that neither
    compares nor pickles counts as alike, since nothing then shows a difference.
    """
    try:
        if compare_parity(left, right, rtol=0.0, atol=0.0).error is None:
            return True
    except Exception:  # an object that will not compare: judged by its pickle
        pass
    try:
        import cloudpickle

        return bool(cloudpickle.dumps(left) == cloudpickle.dumps(right))
    except Exception:
        return True


def _step(call: InterceptedCall, arguments: Arguments, overrides: dict[str, Any], *, sequential: bool = False) -> Step:
    """Run ``call`` on ``arguments`` (a copy): its parallel path, or ``.sequential()``."""
    on_copy = call.with_arguments(*arguments)
    return (on_copy.run_sequential if sequential else on_copy.run, overrides)


def _sequential(
    call: InterceptedCall, arguments: Arguments, overrides: dict[str, Any], checker: _RoundChecker, shape: Shape
) -> Generator[Step, tuple[Any, float], Any]:
    """Run ``.sequential()`` on ``arguments``; its failure after a parallel success is a parity failure."""
    __tracebackhide__ = True
    try:
        value, checker.last_time = yield _step(call, arguments, overrides, sequential=True)
    except Exception as error:
        checker.fail(
            shape,
            overrides,
            f"the parallel run returned a result, but .sequential() raised {type(error).__name__}: {error}",
            None,
            cause=error,
        )
    return value


class _RoundChecker:
    """Holds parallel runs against a sequential one; a failure records a red row and raises."""

    def __init__(self, name: str, slot: CallSlot, plan: BenchPlan, recorder: Recorder):
        self.name = name
        self.slot = slot
        self.plan = plan
        self.recorder = recorder
        #: the time of the last sequential run
        self.last_time: float | None = None

    def check(
        self,
        shape: Shape,
        overrides: dict[str, Any],
        runs: list[tuple[Any, Arguments, str]],
        sequential_value: Any,
        sequential_arguments: Arguments,
    ) -> float | None:
        """Compare each ``(result, arguments after, which)`` run with the sequential one.

        :returns: the largest numeric difference of the results, ``None`` if not numeric.
        :raises conc_ml.errors.ParityError: on a result or argument state that differs.
        """
        __tracebackhide__ = True

        plan = self.plan
        largest: float | None = 0.0
        for value, arguments, which in runs:
            checked = compare_parity(value, sequential_value, rtol=plan.rtol, atol=plan.atol)
            difference = checked.max_difference
            largest = None if difference is None or largest is None else max(largest, difference)
            if checked.error is not None:
                self.fail(
                    shape,
                    overrides,
                    f"parallel result differs from .sequential() ({which}, rtol={plan.rtol:g}, "
                    f"atol={plan.atol:g}):\n{checked.error}",
                    difference,
                )
            if not _same_state(arguments, sequential_arguments):
                self.fail(
                    shape,
                    overrides,
                    f"the parallel run ({which}) left its arguments different from .sequential(): {self.name}() "
                    "changes an argument in place, and on this backend the change does not reach the caller "
                    "the same way (return the result instead of writing into an argument)",
                    None,
                )
        return largest

    def fail(
        self,
        shape: Shape,
        overrides: dict[str, Any],
        message: str,
        difference: float | None,
        *,
        cause: BaseException | None = None,
    ) -> NoReturn:
        """Record the configuration's row as failed and raise the parity error."""
        __tracebackhide__ = True
        from conc_ml.errors import ParityError

        parity = Parity(False, self.plan.rtol, self.plan.atol, difference)
        self.recorder.add(_row(self.name, self.slot, self.plan, shape=shape, parity=parity))
        error = ParityError(f"{_describe(self.name, shape, overrides)}: {message}")
        if cause is not None:
            raise error from cause
        raise error from None


def _describe(name: str, shape: Shape, overrides: dict[str, Any]) -> str:
    backend, workers, chunks = shape
    seed = overrides.get("seed")
    details = f"backend={backend}, workers={workers}, chunks={chunks if chunks is not None else '?'}"
    if seed is not None:
        details += f", seed={seed}"
    return f"conc-bench: {name}() [{details}]"


def _row(
    name: str,
    slot: CallSlot,
    plan: BenchPlan,
    *,
    shape: Shape,
    parity: Parity,
    sequential_times: Sequence[float] = (),
    parallel_times: Sequence[float] = (),
    changed: bool = False,
    note: str = "",
) -> Measurement:
    from conc_ml._system import usable_cpus

    backend, workers, chunks = shape
    return Measurement(
        name=name,
        fullname=slot.fullname,
        test=slot.fullname.rpartition("::")[0].rpartition("::")[2],
        backend=backend,
        workers=workers,
        chunks=chunks,
        cpus=usable_cpus(),
        sequential=Stats.from_times(sequential_times) if sequential_times else None,
        parallel=Stats.from_times(parallel_times) if parallel_times else None,
        parity=parity,
        sweep=len(plan.workers) > 1,
        call=slot.call,
        site=slot.site,
        changed_arguments=changed,
        note=note,
    )
