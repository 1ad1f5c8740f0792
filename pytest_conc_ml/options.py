"""The conc-bench options: one validator per field, shared by the command line, ini files and the marker.

A value typed on the command line or in an ini file is text; a marker keyword is a Python
value. Each field reads text into the value a marker would give (``"1,2"`` -> ``[1, 2]``)
and then runs the same validator, so the three sources accept the same values and say
the same thing about a bad one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FIELDS", "MARKER_KEYWORDS", "OptionError", "Settings", "marker_values", "parse_settings"]


class OptionError(ValueError):
    """A conc-bench option or marker keyword with a value that is not allowed."""


#: reads a command-line or ini text into the value a marker keyword would hold
Reader = Callable[[str], object]
#: checks a value and returns it in its canonical form; ``source`` names where it came from
Validator = Callable[[object, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One conc-bench option.

    :ivar name: the settings field (``rounds``); the marker keyword when ``marker`` is set.
    :ivar metavar: the placeholder shown by ``--help``.
    :ivar help: the ``--help`` text.
    :ivar validate: the single check of a value, whatever its source.
    :ivar read: turns text into the value ``validate`` expects.
    :ivar marker: whether ``@pytest.mark.conc_bench`` takes it as a keyword.
    :ivar output: an output option, meaningless without ``--conc-bench``.
    """

    name: str
    metavar: str
    help: str
    validate: Validator
    read: Reader = str
    marker: bool = False
    output: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag, ``--conc-bench-rounds``."""
        return "--conc-bench-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse destination and the ini name, ``conc_bench_rounds``."""
        return "conc_bench_" + self.name

    def parse_text(self, text: str, source: str) -> Any:
        """Read and check a command-line or ini value.

        :raises OptionError: if the value is not allowed, saying what is.
        """
        return self.validate(self.read(text.strip()), source)


# -- the validators --------------------------------------------------------------------------


def _integer(minimum: int) -> Validator:
    def validate(value: object, source: str) -> int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise OptionError(f"{source} must be an integer >= {minimum}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise OptionError(f"{source} must be an integer >= {minimum}, got {value!r}")
        return value

    return validate


def _number(*, positive: bool = False, optional: bool = False) -> Validator:
    allowed = "a number > 0" if positive else "a number >= 0"

    def validate(value: object, source: str) -> float | None:
        if value is None and optional:
            return None
        text = value
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise OptionError(f"{source} must be {allowed}, got {text!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(f"{source} must be {allowed}, got {text!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise OptionError(f"{source} must be {allowed}, got {text!r}")
        return float(value)

    return validate


def _comma_list(text: str) -> object:
    return [part.strip() for part in text.split(",") if part.strip()]


def _backends(value: object, source: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise OptionError(f"{source} must list backend names (a name or a list of them), got {value!r}")
    from conc_ml.backends import check_backend_name
    from conc_ml.errors import BackendUnavailableError

    for name in names:
        try:
            check_backend_name(name)
        except BackendUnavailableError as error:
            raise OptionError(f"{source}: {error}") from None
    if len(set(names)) != len(names):
        raise OptionError(f"{source} names a backend twice: {', '.join(names)}")
    return tuple(names)


def _workers(value: object, source: str) -> tuple[int, ...]:
    counts = [value] if isinstance(value, int | str) and not isinstance(value, bool) else value
    if not isinstance(counts, list | tuple) or not counts:
        raise OptionError(f"{source} must list worker counts (integers >= 1), got {value!r}")
    checked = tuple(_integer(1)(count, source) for count in counts)
    if len(set(checked)) != len(checked):
        raise OptionError(f"{source} lists a worker count twice: {', '.join(map(str, checked))}")
    return checked


def _exclude(value: object, source: str) -> bool | tuple[str, ...]:
    """``True`` (every call of the test), or function names and ``fnmatch`` patterns."""
    if isinstance(value, bool):
        return value
    items = [value] if not isinstance(value, list | tuple) else list(value)
    names: list[str] = []
    for item in items:
        if isinstance(item, str) and item.strip():
            names.append(item.strip())
            continue
        # a decorated function stands for its qualified name
        wrapped = getattr(item, "__wrapped__", None)
        qualname = getattr(wrapped, "__qualname__", None)
        if not isinstance(qualname, str):
            raise OptionError(
                f"{source} must be True or function names (qualified, fnmatch patterns allowed) or "
                f"@parallel functions, got {item!r}"
            )
        names.append(qualname)
    if not names:
        raise OptionError(f"{source} must name at least one function, got {value!r}")
    return tuple(names)


def _path(value: object, source: str) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise OptionError(f"{source} must be a path, got {value!r}")
    return Path(value).expanduser()


def _plot_path(value: object, source: str) -> Path:
    from .plot import PLOT_SUFFIXES, matplotlib_missing

    path = _path(value, source)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise OptionError(f"{source} must end in {' or '.join(PLOT_SUFFIXES)}, got {str(value)!r}")
    if matplotlib_missing():
        raise OptionError(
            f"{source} needs matplotlib, which is not installed; install it with: pip install 'conc-ml[plot]'"
        )
    return path


def _run_name(value: object, source: str) -> str:
    from .storage import valid_run_name

    if not isinstance(value, str) or not valid_run_name(value):
        raise OptionError(
            f"{source} must be a name of letters, digits, '.', '_' or '-' (no path, at most 100 characters), "
            f"got {value!r}"
        )
    return value


FIELDS: tuple[Field, ...] = (
    Field("rounds", "N", "timed rounds per call and configuration (default 5)", _integer(1), marker=True),
    Field("warmup", "N", "untimed rounds before them (default 1)", _integer(0), marker=True),
    Field(
        "min_speedup",
        "X",
        "fail a test whose median speedup is below X (not under pytest-xdist)",
        _number(optional=True),
        marker=True,
    ),
    Field("backends", "A,B", "run each call on each of these backends", _backends, _comma_list, marker=True),
    Field("workers", "1,2,4", "run each call with each worker count (scaling sweep)", _workers, _comma_list, True),
    Field("rtol", "R", "relative tolerance of the parity check (default 0)", _number(), marker=True),
    Field("atol", "A", "absolute tolerance of the parity check (default 0)", _number(), marker=True),
    Field(
        "exclude",
        "F,G",
        "leave calls of these functions alone (qualified names, fnmatch patterns): run once, as written",
        _exclude,
        _comma_list,
        marker=True,
    ),
    Field("json", "PATH", "write the measurements as JSON to PATH", _path, output=True),
    Field("save", "NAME", "save the measurements as .conc_bench/NAME.json (merged into it)", _run_name, output=True),
    Field("compare", "NAME", "compare speedups with the run saved as NAME", _run_name, output=True),
    Field(
        "compare_fail",
        "PCT",
        "fail the run if a speedup fell by more than PCT percent and more than its measured spread",
        _number(positive=True),
    ),
    Field(
        "plot",
        "PATH",
        "plot speedup against workers to PATH (.png or .svg; needs matplotlib)",
        _plot_path,
        output=True,
    ),
)

_BY_NAME = {field.name: field for field in FIELDS}
MARKER_KEYWORDS = tuple(sorted(field.name for field in FIELDS if field.marker))


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
    exclude: tuple[str, ...] = ()
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
        for key in ("backends", "workers", "exclude"):
            data[key] = list(data[key])
        return data


def parse_settings(
    enabled: bool,
    command_line: Mapping[str, object],
    ini: Mapping[str, object],
    *,
    invocation_dir: Path,
) -> Settings:
    """Read and check the conc-bench options, command line first, then ini.

    :param enabled: ``--conc-bench`` or the ``conc_bench`` ini option.
    :param command_line: the parsed command line by destination (``None`` when not given).
    :param ini: the ini values by name (``""`` when not set).
    :param invocation_dir: relative paths are taken from here.
    :raises OptionError: on a value that is not allowed, saying what is.
    """
    values: dict[str, Any] = {"enabled": enabled}
    for field in FIELDS:
        given = command_line.get(field.dest)
        if given is not None:
            if not str(given).strip():
                raise OptionError(f"{field.flag} needs a value, got an empty one")
            value = field.parse_text(str(given), field.flag)
        else:
            text = ini.get(field.dest)
            if not isinstance(text, str) or not text.strip():
                continue
            value = field.parse_text(text, f"ini option {field.dest}")
        if field.name == "exclude" and value is True:
            raise OptionError(f"{field.flag} must name functions; to turn conc-bench off, leave out --conc-bench")
        if isinstance(value, Path) and not value.is_absolute():
            value = invocation_dir / value
        values[field.name] = value
    settings = Settings(**values)
    if settings.compare_fail is not None and settings.compare is None:
        raise OptionError("--conc-bench-compare-fail needs --conc-bench-compare=NAME (the run to compare with)")
    if not enabled:
        # Output options on the command line without the flag would silently do nothing.
        for field in FIELDS:
            if field.output and command_line.get(field.dest) is not None:
                raise OptionError(f"{field.flag} needs --conc-bench (without it nothing is timed)")
    return settings


def marker_values(args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the keywords of a ``conc_bench`` marker with the options' own validators.

    :param where: names the marker in messages (``@pytest.mark.conc_bench on test_x.py::test_y``).
    :raises OptionError: on a positional argument, an unknown keyword, or a value not allowed.
    """
    if args:
        raise OptionError(f"{where} takes keywords only ({', '.join(MARKER_KEYWORDS)}), got {args!r}")
    unknown = sorted(set(kwargs) - set(MARKER_KEYWORDS))
    if unknown:
        raise OptionError(
            f"{where}: unknown keyword(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(MARKER_KEYWORDS)}"
        )
    return {key: _BY_NAME[key].validate(value, f"{where}: {key}=") for key, value in kwargs.items()}
