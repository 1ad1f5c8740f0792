"""pytest entry point of conc-ml: the hooks, the ``conc_bench`` fixture and marker.

- ``pytest --conc-bench``: during each test's call phase, every top-level call to a
  ``@parallel`` function runs as written, once, on the test's own arguments (the test gets
  its result, and its arguments end as that call leaves them). When the test's body has
  returned (or each hypothesis example), ``.sequential`` and the parallel path run on deep
  copies of the arguments taken before it, with the same seed, ``--conc-bench-warmup``
  untimed and ``--conc-bench-rounds`` timed rounds: the test sees none of their side
  effects. A result, or an argument state, that differs fails the test with
  :class:`conc_ml.errors.ParityError`.
  Calls from fixtures, ``.stream()``, calls inside workers, calls made through
  pytest-benchmark's ``benchmark`` fixture and excluded functions are not intercepted.
  Without the flag nothing is intercepted.
- ``conc_bench(func, *args, name=None, **kwargs)``: the same for one explicit call; without
  ``--conc-bench`` one untimed round checks parity.
- ``@pytest.mark.conc_bench(rounds=, warmup=, min_speedup=, rtol=, atol=, backends=, workers=, exclude=)``.
- Under pytest-xdist, workers check parity without timing and the controller reports; a
  timing gate asked for there is a usage error, since it could not check anything.
- Hypothesis tests: under the flag the ``conc-bench`` profile (the loaded profile without a
  deadline) is loaded, and each call site gets one row: the first example is timed, the
  others are checked and counted.

``conc_ml`` itself is imported inside hooks only when a test needs it, so that projects
that never pass ``--conc-bench`` pay nothing at start-up. The options live in
:mod:`.options`, the end of the run in :mod:`.session`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from .fixture import BenchPlan, ConcBench, Deferred, Recorder, benchmark_call, function_name
from .options import FIELDS, MARKER_KEYWORDS, OptionError, Settings, marker_values, parse_settings
from .session import BenchSession
from .stats import Measurement

if TYPE_CHECKING:
    from conc_ml._intercept import InterceptedCall

__all__ = ["Settings"]

MARKER = "conc_bench"
HYPOTHESIS_PROFILE = "conc-bench"
_WORKER_OUTPUT_KEY = "conc_bench_rows"
#: the report's widest line, whatever the terminal's width
MAX_WIDTH = 100
#: the hypothesis profile that was loaded before ``--conc-bench`` loaded its own
_RESTORE_PROFILE = "conc-bench-previous"
#: modules whose frames are not a call site: conc-ml's own, and the plugin's
_OWN_MODULES = ("conc_ml.", "pytest_conc_ml.")

SESSION = pytest.StashKey[BenchSession]()
PLAN = pytest.StashKey[BenchPlan]()
RECORDER = pytest.StashKey[Recorder]()


# -- options -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``conc-bench`` options, each with its ini equivalent."""
    group = parser.getgroup("conc-bench", "conc-ml: check parallel == sequential and measure speedups")
    group.addoption(
        "--conc-bench",
        action="store_true",
        default=None,
        dest="conc_bench",
        help="run every @parallel call made by a test sequentially and in parallel: check parity, time both",
    )
    parser.addini("conc_bench", "same as --conc-bench", type="bool", default=False)
    for field in FIELDS:
        group.addoption(field.flag, dest=field.dest, metavar=field.metavar, default=None, help=field.help)
        parser.addini(field.dest, f"same as {field.flag}", default="")


def _settings(config: pytest.Config) -> Settings:
    flag = config.getoption("conc_bench")
    enabled = bool(flag) if flag is not None else bool(config.getini("conc_bench"))
    command_line = {field.dest: config.getoption(field.dest) for field in FIELDS}
    ini = {field.dest: config.getini(field.dest) for field in FIELDS}
    try:
        return parse_settings(enabled, command_line, ini, invocation_dir=config.invocation_params.dir)
    except OptionError as error:
        raise pytest.UsageError(str(error)) from None


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this run hands its tests to pytest-xdist workers (``-n 2``, ``-n auto``, ``--dist``)."""
    if hasattr(config, "workerinput"):
        return False
    return getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx", None))


# -- configuration -----------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Check the options, declare the marker, and refuse gates that could not check anything."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}({', '.join(f'{k}=' for k in MARKER_KEYWORDS)}): conc-bench settings for this test",
    )
    settings = _settings(config)
    session = BenchSession(
        settings, xdist_worker=hasattr(config, "workerinput"), xdist_controller=_xdist_controller(config)
    )
    if settings.enabled and session.xdist_controller:
        _refuse_untimed_gates(settings)
    if settings.enabled and settings.compare is not None and not session.xdist_worker:
        session.baseline = _load_baseline(config, settings.compare)
    config.stash[SESSION] = session
    # before hypothesis' own pytest_configure, which loads --hypothesis-profile
    _register_hypothesis_profile(config, load=False)


def _refuse_untimed_gates(settings: Settings) -> None:
    """Under pytest-xdist nothing is timed: a speedup gate or a save would check or keep nothing."""
    asked = [
        flag
        for flag, value in (
            ("--conc-bench-min-speedup", settings.min_speedup),
            ("--conc-bench-compare-fail", settings.compare_fail),
            ("--conc-bench-save", settings.save),
        )
        if value is not None
    ]
    if asked:
        raise pytest.UsageError(
            f"{', '.join(asked)} cannot work under pytest-xdist: its workers share the CPUs, so conc-bench "
            "times nothing there (parity is still checked). Run the timed job without -n (add -p no:xdist or "
            "-n 0 when addopts sets -n)"
        )


def _load_baseline(config: pytest.Config, name: str) -> list[Measurement]:
    from .storage import load_saved, saved_names

    try:
        return load_saved(config.rootpath, name)
    except FileNotFoundError:
        known = saved_names(config.rootpath)
        listing = ", ".join(known) if known else "none yet; save one with --conc-bench-save=NAME"
        raise pytest.UsageError(
            f"--conc-bench-compare: no run saved as {name!r} in {config.rootpath / '.conc_bench'}; "
            f"saved runs: {listing}"
        ) from None
    except ValueError as error:
        raise pytest.UsageError(f"--conc-bench-compare: {error}") from None


def _register_hypothesis_profile(config: pytest.Config, *, load: bool) -> None:
    """Register the ``conc-bench`` hypothesis profile, the loaded one without a deadline; maybe load it.

    A call that runs a dozen times in one example would otherwise fail with
    ``DeadlineExceeded``. Importing hypothesis costs a quarter of a second, so it happens
    only where the profile can matter: hypothesis already imported, ``--conc-bench`` on,
    or the profile asked for with ``--hypothesis-profile``.
    """
    enabled = config.stash[SESSION].settings.enabled
    wanted = getattr(config.option, "hypothesis_profile", None) == HYPOTHESIS_PROFILE
    if "hypothesis" not in sys.modules and not wanted and not enabled:
        return
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - hypothesis is a dependency of conc-ml
        return
    current = settings.default
    checks = [*current.suppress_health_check, HealthCheck.too_slow] if current is not None else [HealthCheck.too_slow]
    settings.register_profile(
        HYPOTHESIS_PROFILE, parent=current, deadline=None, suppress_health_check=list(dict.fromkeys(checks))
    )
    if load:
        settings.register_profile(_RESTORE_PROFILE, parent=current)
        settings.load_profile(HYPOTHESIS_PROFILE)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``--conc-bench``, load the ``conc-bench`` hypothesis profile.

    Here, after hypothesis' own plugin and the conftests have loaded theirs, so that it is
    their profile without a deadline; ``--hypothesis-profile=conc-bench`` was loaded by
    hypothesis itself, from the registration in :func:`pytest_configure`.
    """
    config = session.config
    wanted = getattr(config.option, "hypothesis_profile", None) == HYPOTHESIS_PROFILE
    if config.stash[SESSION].settings.enabled and not wanted:
        _register_hypothesis_profile(config, load=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put back the hypothesis profile that ``--conc-bench`` replaced (pytest may run again in-process)."""
    bench = config.stash.get(SESSION, None)
    if bench is None or not bench.settings.enabled or "hypothesis" not in sys.modules:
        return
    from hypothesis import settings

    try:
        settings.load_profile(_RESTORE_PROFILE)
    except Exception:  # InvalidArgument: this run never replaced the profile
        return


# -- per test ------------------------------------------------------------------------------


def _plan_for(item: pytest.Item) -> BenchPlan:
    plan = item.stash.get(PLAN, None)
    if plan is None:
        session = item.config.stash[SESSION]
        settings = session.settings
        values: dict[str, Any] = {
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "rtol": settings.rtol,
            "atol": settings.atol,
            "backends": settings.backends,
            "workers": settings.workers,
            "min_speedup": settings.min_speedup,
            "exclude": settings.exclude,
        }
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            try:
                values.update(marker_values(marker.args, marker.kwargs, f"@pytest.mark.{MARKER} on {item.nodeid}"))
            except OptionError as error:
                pytest.fail(str(error), pytrace=False)
        plan = BenchPlan(timing=session.timing, **values)
        item.stash[PLAN] = plan
    return plan


def _recorder_for(item: pytest.Item) -> Recorder:
    recorder = item.stash.get(RECORDER, None)
    if recorder is None:
        session = item.config.stash[SESSION]
        name = getattr(item, "name", item.nodeid)
        # hypothesis marks the tests it drives; they call their functions once per example
        per_site = bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))
        recorder = Recorder(item.nodeid, name, session.add, per_site=per_site)
        item.stash[RECORDER] = recorder
    return recorder


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check the test's ``conc_bench`` marker before anything runs: a bad keyword is an error."""
    if item.get_closest_marker(MARKER) is not None or item.config.stash[SESSION].settings.enabled:
        plan = _plan_for(item)
        session = item.config.stash[SESSION]
        if plan.min_speedup is not None and session.settings.enabled and session.xdist_worker:
            pytest.fail(
                f"min_speedup={plan.min_speedup:g} cannot be checked under pytest-xdist: nothing is timed there "
                "(its workers share the CPUs); run this test without -n",
                pytrace=False,
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, object]:
    """Under ``--conc-bench``, route the test's ``@parallel`` calls through the benchmark.

    During the test's body each call runs as written, once; its checks and timed rounds
    run when the body is done (after each example of a hypothesis test), so that the test
    sees nothing of them, not even their side effects.
    """
    session = item.config.stash[SESSION]
    if not session.settings.enabled:
        return (yield)
    from conc_ml._intercept import intercept_calls

    plan = _plan_for(item)
    recorder = _recorder_for(item)
    root = item.config.rootpath
    pending = _Pending()

    def interceptor(call: InterceptedCall) -> Any:
        __tracebackhide__ = True
        name = function_name(call)
        caller = sys._getframe(1)
        if _made_through_pytest_benchmark(caller):
            session.leave_alone("made through pytest-benchmark's benchmark fixture, which times it", name)
            return call.run_as_written()
        if plan.excludes(call.function):
            session.leave_alone("excluded with exclude=", name)
            return call.run_as_written()
        return benchmark_call(call, plan, recorder, name, _call_site(caller, root), defer=pending.add)

    with intercept_calls(interceptor), _checks_after_each_example(item, pending):
        try:
            result = yield
        except Exception as error:
            # The checks may explain the failure (a parallel result unlike the sequential one).
            pending.run_after(error)
            raise
        except BaseException:  # skipped, xfail, Ctrl-C: nothing to check
            pending.drop()
            raise
        pending.run()
    _check_min_speedup(plan, recorder)
    return result


class _Pending:
    """The checks of the calls a test made, waiting for its body (or hypothesis example) to end."""

    def __init__(self) -> None:
        self._checks: list[Deferred] = []
        self._lock = threading.Lock()

    def add(self, checks: Deferred) -> None:
        with self._lock:
            self._checks.append(checks)

    def _take(self) -> list[Deferred]:
        with self._lock:
            taken, self._checks = self._checks, []
        return taken

    def run(self) -> None:
        """Run the waiting checks in the order of their calls; the first parity failure is raised."""
        __tracebackhide__ = True
        taken = self._take()
        for checks in taken:
            try:
                checks.run()
            except BaseException:
                with self._lock:  # the rest stay unchecked: the test fails anyway
                    self._checks = []
                raise

    def run_after(self, error: Exception) -> None:
        """Run the checks of a test that failed; a parity failure becomes a note on its error."""
        try:
            self.run()
        except Exception as parity:
            error.add_note(f"conc-bench: the calls this test made were also checked: {type(parity).__name__}: {parity}")

    def drop(self) -> None:
        self._take()


@contextlib.contextmanager
def _checks_after_each_example(item: pytest.Item, pending: _Pending) -> Iterator[None]:
    """Run the checks at the end of each hypothesis example, inside it, so that hypothesis shrinks a failure."""
    handle = getattr(getattr(item, "obj", None), "hypothesis", None)
    inner = getattr(handle, "inner_test", None)
    if handle is None or inner is None:
        yield
        return

    @functools.wraps(inner)
    def example(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            result = inner(*args, **kwargs)
        except Exception:
            pending.drop()
            raise
        pending.run()
        return result

    handle.inner_test = example
    try:
        yield
    finally:
        handle.inner_test = inner


def _made_through_pytest_benchmark(frame: FrameType | None) -> bool:
    """Whether pytest-benchmark's fixture is on the stack: it calibrates and times calls itself."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("pytest_benchmark."):
            return True
        frame = frame.f_back
    return False


def _call_site(frame: FrameType | None, root: Path) -> str:
    """``path:line`` of the first frame outside conc-ml and the plugin: where the test made the call."""
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not module.startswith(_OWN_MODULES) and module != "conc_ml":
            path = Path(frame.f_code.co_filename)
            try:
                shown = path.relative_to(root).as_posix()
            except ValueError:
                shown = path.name
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def _check_min_speedup(plan: BenchPlan, recorder: Recorder) -> None:
    __tracebackhide__ = True
    if plan.min_speedup is None:
        return
    slow = [row for row in recorder.rows if row.speedup is not None and row.speedup < plan.min_speedup]
    if slow:
        lines = [
            f"  {row.name} [{row.backend}, {row.workers} workers, {row.chunks} chunks]: "
            f"median speedup {row.speedup:.2f}x < required {plan.min_speedup:.2f}x"
            for row in slow
        ]
        pytest.fail(
            "conc-bench: median speedup below the bar (--conc-bench-min-speedup / min_speedup=):\n" + "\n".join(lines),
            pytrace=False,
        )


@pytest.fixture
def conc_bench(request: pytest.FixtureRequest) -> ConcBench:
    """Benchmark a ``@parallel`` function explicitly: ``conc_bench(func, *args, name=None, **kwargs)``.

    Checks that the parallel result equals ``.sequential``'s (always), times both under
    ``--conc-bench``, and returns the result of the call as written. Callable several times per test.
    """
    return ConcBench(_plan_for(request.node), _recorder_for(request.node))


# -- pytest-xdist --------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Collect the rows a pytest-xdist worker measured (parity only: workers do not time)."""
    session = node.config.stash[SESSION]
    payload = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if payload:
        session.rows.extend(Measurement.from_dict(entry) for entry in json.loads(payload))


# -- end of the run ------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hand a worker's rows to the controller; on the controller, finish the conc-bench session."""
    config = session.config
    bench = config.stash.get(SESSION, None)
    if bench is None:
        return
    if bench.xdist_worker:
        if bench.rows:
            config.workeroutput[_WORKER_OUTPUT_KEY] = json.dumps([row.as_dict() for row in bench.rows])  # type: ignore[attr-defined]
        return
    if not bench.settings.enabled:
        return
    bench.finish(config.rootpath)
    if bench.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the conc-bench section: the table, the comparison and where files went."""
    bench = config.stash.get(SESSION, None)
    if bench is None or bench.xdist_worker or not bench.settings.enabled:
        return
    terminalreporter.write_sep("-", "conc-bench")
    # Lines beyond 100 columns read badly even on a wide terminal.
    width = min(config.get_terminal_writer().fullwidth, MAX_WIDTH)
    bench.display(terminalreporter.write_line, width)
