"""pytest entry point of conc-ml: options, the ``conc_bench`` fixture and marker, and the hooks.

- ``pytest --conc-bench``: during each test's call phase, every top-level call to a
  ``@parallel`` function runs ``.sequential`` and the parallel path with the same seed,
  ``--conc-bench-warmup`` untimed and ``--conc-bench-rounds`` timed rounds; a result that
  differs fails the test with :class:`conc_ml.errors.ParityError`; the test receives the
  parallel result. Calls from fixtures' set-up, ``.stream()`` and calls inside workers are
  not intercepted. Without the flag nothing is intercepted.
- ``conc_bench(func, *args, name=None, **kwargs)``: the same for one explicit call; without
  ``--conc-bench`` one untimed round checks parity.
- ``@pytest.mark.conc_bench(rounds=, min_speedup=, rtol=, atol=, backends=, workers=)``.
- Under pytest-xdist, workers check parity without timing and the controller reports.
- The hypothesis profile ``conc-bench`` (no deadline) is registered for property tests
  that call parallel code: select it with ``--hypothesis-profile=conc-bench``.

``conc_ml`` itself is imported inside hooks only when a test needs it, so that projects
that never pass ``--conc-bench`` pay nothing at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .fixture import BenchPlan, ConcBench, Recorder, benchmark_call, function_name
from .report import Comparison, Line, comparison_lines, report_lines
from .stats import Measurement

__all__ = ["Settings"]

MARKER = "conc_bench"
MARKER_KEYWORDS = ("atol", "backends", "min_speedup", "rounds", "rtol", "workers")
HYPOTHESIS_PROFILE = "conc-bench"
_WORKER_OUTPUT_KEY = "conc_bench_rows"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The run's conc-bench options, parsed and checked once."""

    enabled: bool = False
    rounds: int = 5
    warmup: int = 1
    min_speedup: float | None = None
    backends: tuple[str, ...] = ()
    workers: tuple[int, ...] = ()
    rtol: float = 0.0
    atol: float = 0.0
    json: Path | None = None
    save: str | None = None
    compare: str | None = None
    compare_fail: float | None = None
    plot: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        data = dataclasses.asdict(self)
        for key in ("json", "plot"):
            data[key] = None if data[key] is None else str(data[key])
        data["backends"] = list(self.backends)
        data["workers"] = list(self.workers)
        return data


@dataclasses.dataclass
class SessionState:
    """What the plugin keeps for one pytest run."""

    settings: Settings
    #: this process is a pytest-xdist worker: check parity, do not time
    xdist_worker: bool
    rows: list[Measurement] = dataclasses.field(default_factory=list)
    #: rows arrived from pytest-xdist workers (so they were not timed)
    from_xdist: bool = False
    baseline: list[Measurement] | None = None
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    regressions: list[str] = dataclasses.field(default_factory=list)
    notes: list[Line] = dataclasses.field(default_factory=list)


STATE = pytest.StashKey[SessionState]()
PLAN = pytest.StashKey[BenchPlan]()
RECORDER = pytest.StashKey[Recorder]()


# -- options -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Option:
    flag: str
    metavar: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


_OPTIONS = (
    _Option("--conc-bench-rounds", "N", "timed rounds per call and configuration (default 5)"),
    _Option("--conc-bench-warmup", "N", "untimed rounds before them (default 1)"),
    _Option("--conc-bench-min-speedup", "X", "fail a test whose median speedup is below X"),
    _Option("--conc-bench-backends", "A,B", "run each call on each of these backends"),
    _Option("--conc-bench-workers", "1,2,4", "run each call with each worker count (scaling sweep)"),
    _Option("--conc-bench-rtol", "R", "relative tolerance of the parity check (default 0)"),
    _Option("--conc-bench-atol", "A", "absolute tolerance of the parity check (default 0)"),
    _Option("--conc-bench-json", "PATH", "write the measurements as JSON to PATH"),
    _Option("--conc-bench-save", "NAME", "save the measurements as .conc_bench/NAME.json"),
    _Option("--conc-bench-compare", "NAME", "compare speedups with the run saved as NAME"),
    _Option("--conc-bench-compare-fail", "PCT", "fail the run if a speedup fell by more than PCT percent"),
    _Option("--conc-bench-plot", "PATH", "plot speedup against workers to PATH (.png or .svg; needs matplotlib)"),
)


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
    for option in _OPTIONS:
        group.addoption(option.flag, dest=option.dest, metavar=option.metavar, default=None, help=option.help)
        parser.addini(option.dest, f"same as {option.flag}", default="")


def _raw(config: pytest.Config, dest: str) -> tuple[str, str] | None:
    """The option's raw text and where it came from, command line first, then ini."""
    value = config.getoption(dest)
    if value is not None:
        flag = "--" + dest.replace("_", "-")
        if not str(value).strip():
            raise pytest.UsageError(f"{flag} needs a value, got an empty one")
        return str(value).strip(), flag
    ini = config.getini(dest)
    if isinstance(ini, str) and ini.strip():
        return ini.strip(), f"ini option {dest}"
    return None


def _int(text: str, source: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"{source} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise pytest.UsageError(f"{source} must be an integer >= {minimum}, got {value}")
    return value


def _number(text: str, source: str, *, positive: bool = False) -> float:
    allowed = "a number > 0" if positive else "a number >= 0"
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"{source} must be {allowed}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise pytest.UsageError(f"{source} must be {allowed}, got {text!r}")
    return value


def _names(text: str, source: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise pytest.UsageError(f"{source} must list backend names separated by commas, got {text!r}")
    return _checked_backends(names, source)


def _checked_backends(names: tuple[str, ...], source: str) -> tuple[str, ...]:
    from conc_ml.backends import check_backend_name
    from conc_ml.errors import BackendUnavailableError

    for name in names:
        try:
            check_backend_name(name)
        except BackendUnavailableError as error:
            raise pytest.UsageError(f"{source}: {error}") from None
    if len(set(names)) != len(names):
        raise pytest.UsageError(f"{source} names a backend twice: {', '.join(names)}")
    return names


def _counts(text: str, source: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise pytest.UsageError(f"{source} must list worker counts (integers >= 1) separated by commas, got {text!r}")
    counts = tuple(_int(part, source, minimum=1) for part in parts)
    if len(set(counts)) != len(counts):
        raise pytest.UsageError(f"{source} lists a worker count twice: {text}")
    return counts


def parse_settings(config: pytest.Config) -> Settings:
    """Read and check the conc-bench options.

    :raises pytest.UsageError: on a value that is not allowed, saying what is.
    """
    cli_flag = config.getoption("conc_bench")
    enabled = bool(cli_flag) if cli_flag is not None else bool(config.getini("conc_bench"))
    values: dict[str, Any] = {"enabled": enabled}

    def get(dest: str, parse: Callable[[str, str], Any]) -> None:
        raw = _raw(config, dest)
        if raw is not None:
            values[dest.removeprefix("conc_bench_")] = parse(*raw)

    get("conc_bench_rounds", lambda t, s: _int(t, s, minimum=1))
    get("conc_bench_warmup", lambda t, s: _int(t, s, minimum=0))
    get("conc_bench_min_speedup", _number)
    get("conc_bench_backends", _names)
    get("conc_bench_workers", _counts)
    get("conc_bench_rtol", _number)
    get("conc_bench_atol", _number)
    get("conc_bench_json", lambda t, s: _path(config, t))
    get("conc_bench_save", _run_name)
    get("conc_bench_compare", _run_name)
    get("conc_bench_compare_fail", lambda t, s: _number(t, s, positive=True))
    get("conc_bench_plot", _plot_path(config))
    settings = Settings(**values)

    if settings.compare_fail is not None and settings.compare is None:
        raise pytest.UsageError("--conc-bench-compare-fail needs --conc-bench-compare=NAME (the run to compare with)")
    if not enabled:
        # Output options on the command line without the flag would silently do nothing.
        for dest in ("conc_bench_json", "conc_bench_save", "conc_bench_compare", "conc_bench_plot"):
            if config.getoption(dest) is not None:
                flag = "--" + dest.replace("_", "-")
                raise pytest.UsageError(f"{flag} needs --conc-bench (without it nothing is timed)")
    return settings


def _path(config: pytest.Config, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def _run_name(text: str, source: str) -> str:
    from .storage import valid_run_name

    if not valid_run_name(text):
        raise pytest.UsageError(
            f"{source} must be a name of letters, digits, '.', '_' or '-' (no path, at most 100 characters), "
            f"got {text!r}"
        )
    return text


def _plot_path(config: pytest.Config) -> Callable[[str, str], Path]:
    def parse(text: str, source: str) -> Path:
        from .plot import PLOT_SUFFIXES, matplotlib_missing

        path = _path(config, text)
        if path.suffix.lower() not in PLOT_SUFFIXES:
            raise pytest.UsageError(f"{source} must end in {' or '.join(PLOT_SUFFIXES)}, got {text!r}")
        if matplotlib_missing():
            raise pytest.UsageError(
                f"{source} needs matplotlib, which is not installed; install it with: pip install 'conc-ml[plot]'"
            )
        return path

    return parse


# -- configuration -----------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Check the options, declare the marker, and register the hypothesis profile."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(rounds=, min_speedup=, rtol=, atol=, backends=, workers=): conc-bench settings for this test",
    )
    settings = parse_settings(config)
    state = SessionState(settings=settings, xdist_worker=hasattr(config, "workerinput"))
    if settings.enabled and settings.compare is not None and not state.xdist_worker:
        state.baseline = _load_baseline(config, settings.compare)
    config.stash[STATE] = state
    _register_hypothesis_profile(config)


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


def _register_hypothesis_profile(config: pytest.Config) -> None:
    """Register the ``conc-bench`` hypothesis profile: no deadline, since parallel calls vary in time.

    Importing hypothesis costs a quarter of a second, so it happens only where the profile
    can matter: hypothesis already imported, ``--conc-bench`` on, or the profile asked for.
    """
    wanted = getattr(config.option, "hypothesis_profile", None) == HYPOTHESIS_PROFILE
    if "hypothesis" not in sys.modules and not wanted and not config.stash[STATE].settings.enabled:
        return
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - hypothesis is a dependency of conc-ml
        return
    settings.register_profile(HYPOTHESIS_PROFILE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- per test ------------------------------------------------------------------------------


def _marker_plan(item: pytest.Item, settings: Settings, timing: bool) -> BenchPlan:
    """The test's plan: the options, with the ``conc_bench`` marker's keywords on top."""
    values: dict[str, Any] = {
        "rounds": settings.rounds,
        "warmup": settings.warmup,
        "rtol": settings.rtol,
        "atol": settings.atol,
        "backends": settings.backends,
        "workers": settings.workers,
        "min_speedup": settings.min_speedup,
    }
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        values.update(_marker_values(marker, item.nodeid))
    return BenchPlan(timing=timing, **values)


def _marker_values(marker: pytest.Mark, nodeid: str) -> dict[str, Any]:
    where = f"@pytest.mark.{MARKER} on {nodeid}"
    if marker.args:
        raise _MarkerError(f"{where} takes keywords only ({', '.join(MARKER_KEYWORDS)}), got {marker.args!r}")
    unknown = sorted(set(marker.kwargs) - set(MARKER_KEYWORDS))
    if unknown:
        raise _MarkerError(
            f"{where}: unknown keyword(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(MARKER_KEYWORDS)}"
        )
    out: dict[str, Any] = {}
    for key, value in marker.kwargs.items():
        source = f"{where}: {key}="
        if key == "rounds":
            out[key] = _marker_int(value, source, minimum=1)
        elif key in ("rtol", "atol", "min_speedup"):
            if value is None and key == "min_speedup":
                out[key] = None
            elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise _MarkerError(f"{source} must be a number >= 0, got {value!r}")
            else:
                out[key] = float(value)
        elif key == "backends":
            names = (value,) if isinstance(value, str) else value
            if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
                raise _MarkerError(f"{source} must be a backend name or a list of them, got {value!r}")
            try:
                out[key] = _checked_backends(tuple(names), source)
            except pytest.UsageError as error:
                raise _MarkerError(str(error)) from None
        else:  # workers
            counts = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(counts, list | tuple) or not counts:
                raise _MarkerError(f"{source} must be a worker count or a list of them, got {value!r}")
            out[key] = tuple(_marker_int(c, source, minimum=1) for c in counts)
            if len(set(out[key])) != len(out[key]):
                raise _MarkerError(f"{source} lists a worker count twice: {value!r}")
    return out


class _MarkerError(Exception):
    """A ``conc_bench`` marker with a keyword or value that is not allowed."""


def _marker_int(value: object, source: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _MarkerError(f"{source} must be an integer >= {minimum}, got {value!r}")
    return value


def _plan_for(item: pytest.Item) -> BenchPlan:
    plan = item.stash.get(PLAN, None)
    if plan is None:
        state = item.config.stash[STATE]
        timing = state.settings.enabled and not state.xdist_worker
        try:
            plan = _marker_plan(item, state.settings, timing)
        except _MarkerError as error:
            pytest.fail(str(error), pytrace=False)
        item.stash[PLAN] = plan
    return plan


def _recorder_for(item: pytest.Item) -> Recorder:
    recorder = item.stash.get(RECORDER, None)
    if recorder is None:
        state = item.config.stash[STATE]
        name = getattr(item, "name", item.nodeid)
        recorder = Recorder(item.nodeid, name, state.rows.append)
        item.stash[RECORDER] = recorder
    return recorder


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check the test's ``conc_bench`` marker before anything runs: a bad keyword is an error."""
    if item.get_closest_marker(MARKER) is not None or item.config.stash[STATE].settings.enabled:
        _plan_for(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, object]:
    """Under ``--conc-bench``, route the test's ``@parallel`` calls through the benchmark."""
    state = item.config.stash[STATE]
    if not state.settings.enabled:
        return (yield)
    from conc_ml._intercept import InterceptedCall, intercept_calls

    plan = _plan_for(item)
    recorder = _recorder_for(item)

    def interceptor(call: InterceptedCall) -> Any:
        __tracebackhide__ = True
        return benchmark_call(call, plan, recorder, function_name(call))

    with intercept_calls(interceptor):
        result = yield
    _check_min_speedup(plan, recorder)
    return result


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
    ``--conc-bench``, and returns the parallel result. Callable several times per test.
    """
    return ConcBench(_plan_for(request.node), _recorder_for(request.node))


# -- pytest-xdist --------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Collect the rows a pytest-xdist worker measured (parity only: workers do not time)."""
    state = node.config.stash[STATE]
    payload = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if payload:
        state.rows.extend(Measurement.from_dict(entry) for entry in json.loads(payload))
        state.from_xdist = True


# -- end of the run ------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write JSON, save, compare and plot; a speedup regression beyond the bar fails the run."""
    config = session.config
    state = config.stash.get(STATE, None)
    if state is None:
        return
    if state.xdist_worker:
        if state.rows:
            config.workeroutput[_WORKER_OUTPUT_KEY] = json.dumps([row.as_dict() for row in state.rows])  # type: ignore[attr-defined]
        return
    settings = state.settings
    if not settings.enabled:
        return
    from . import storage

    data: Mapping[str, Any] | None = None
    if settings.json is not None or settings.save is not None:
        data = storage.document(state.rows, settings=settings.as_dict(), root=config.rootpath)
    if settings.json is not None and data is not None:
        storage.write_json(settings.json, data)
        state.notes.append((f"conc-bench: JSON written to {settings.json}", {}))
    if state.baseline is not None:
        state.comparisons = storage.compare_rows(state.rows, state.baseline)
        if settings.compare_fail is not None:
            bar = settings.compare_fail
            for item in state.comparisons:
                change = item.change
                if change is not None and -change > bar:
                    state.regressions.append(
                        f"{item.row.fullname} [{item.row.backend}, {item.row.workers} workers]: speedup "
                        f"{item.before.speedup:.2f}x -> {item.row.speedup:.2f}x ({change:+.1f}%, bar -{bar:g}%)"
                    )
            if state.regressions:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if settings.save is not None and data is not None:
        path = storage.save_run(config.rootpath, settings.save, data)
        state.notes.append((f"conc-bench: saved as {settings.save!r} ({path})", {}))
    if settings.plot is not None:
        from .plot import plot_speedups

        if any(row.speedup is not None for row in state.rows):
            drawn = plot_speedups(state.rows, settings.plot)
            state.notes.append((f"conc-bench: plot of {drawn} series written to {settings.plot}", {}))
        else:
            state.notes.append((f"conc-bench: nothing timed, no plot written to {settings.plot}", {"yellow": True}))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the conc-bench section: the table, the comparison and where files went."""
    state = config.stash.get(STATE, None)
    if state is None or state.xdist_worker or not state.settings.enabled:
        return
    write: Callable[..., None] = terminalreporter.write_line
    terminalreporter.write_sep("-", "conc-bench")
    if state.from_xdist:
        write(
            "conc-bench: WARNING: timing is off under pytest-xdist (workers share the CPUs); parity was still "
            "checked. Run without -n to measure speedups.",
            yellow=True,
        )
    if not state.rows:
        write("conc-bench: the tests that ran made no @parallel call")
    else:
        timing = any(row.speedup is not None for row in state.rows)
        for text, markup in report_lines(state.rows, header=_header(state), timing=timing):
            write(text, **markup)
    if state.baseline is not None and state.settings.compare is not None:
        write("")
        lines = comparison_lines(
            state.comparisons, baseline=state.settings.compare, fail_percent=state.settings.compare_fail
        )
        for text, markup in lines:
            write(text, **markup)
    for regression in state.regressions:
        write(f"conc-bench: REGRESSION {regression}", red=True, bold=True)
    for text, markup in state.notes:
        write(text, **markup)


def _header(state: SessionState) -> str:
    settings = state.settings
    cpus = state.rows[0].cpus if state.rows else "?"
    parts = [
        f"conc-bench: {cpus} usable CPUs",
        f"rounds={settings.rounds}",
        f"warmup={settings.warmup}",
        f"rtol={settings.rtol:g}",
        f"atol={settings.atol:g}",
    ]
    if settings.backends:
        parts.append("backends=" + ",".join(settings.backends))
    if settings.workers:
        parts.append("workers=" + ",".join(map(str, settings.workers)))
    if settings.min_speedup is not None:
        parts.append(f"min_speedup={settings.min_speedup:g}")
    parts.append("timer=perf_counter")
    return ", ".join(parts)
