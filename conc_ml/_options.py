"""Options of ``@parallel``: validation, layering and the ``config()`` context.

Options arrive in layers. Each layer is validated once, when it is created (a decorator
at decoration time, ``config()`` on entry, ``.options()`` when called), and a call merges
the layers with this precedence, highest first::

    .options()  >  config()  >  decorator arguments  >  environment  >  built-in defaults
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import numbers
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeAlias, cast

import numpy as np

from ._system import nested_calls_allowed, usable_cpus
from ._validate import flag, integer, optional_integer, optional_number

__all__ = [
    "COMBINE_NAMES",
    "ParallelOptions",
    "config",
    "current_config",
    "environment_layer",
    "validate_layer",
]

Combine: TypeAlias = Literal["list", "concat", "sum", "mean"] | Callable[[list[Any]], Any]
Split: TypeAlias = str | int | tuple[str, ...] | None
Seed: TypeAlias = int | np.random.SeedSequence | None

COMBINE_NAMES = ("list", "concat", "sum", "mean")

#: settings of conc-ml itself that ``config()`` accepts beside the ``@parallel`` keywords;
#: each backend declares its own (``Backend.settings``: ``address=`` for dask, ...)
CORE_SETTINGS = ("allow_nested",)

_ENV_BACKEND = "CONC_ML_BACKEND"
_ENV_WORKERS = "CONC_ML_WORKERS"


@dataclasses.dataclass(frozen=True, slots=True)
class ParallelOptions:
    """The fully resolved options of one ``@parallel`` call."""

    backend: str = "auto"
    chunks: int | None = None
    chunk_size: int | None = None
    workers: int | None = None
    split: Split = None
    combine: Combine = "list"
    seed: Seed = None
    timeout: float | None = None
    progress: bool = False
    retries: int = 0
    checkpoint: str | os.PathLike[str] | None = None
    #: backend settings from ``config()`` (``address=`` for dask, ...)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolved_workers(self) -> int:
        """Pool size: the ``workers`` option, else the usable CPUs."""
        return self.workers if self.workers is not None else usable_cpus()


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(ParallelOptions) if f.name != "settings")


def _backend_setting_names(names: list[str]) -> set[str]:
    """Those of ``names`` that some backend declares as a setting (its value is checked when it is used)."""
    if not names:
        return set()
    from .backends import backend_setting

    return {name for name in names if backend_setting(name) is not None}


def _unknown_keywords(unknown: list[str], where: str, *, settings: bool) -> TypeError:
    allowed = list(OPTION_NAMES)
    missing = ""
    if settings:
        from .backends import setting_names

        names, unavailable = setting_names()
        allowed += [*CORE_SETTINGS, *names]
        if unavailable:
            missing = (
                f" (the settings of backends {', '.join(unavailable)} are unknown: "
                "they are not installed or could not be loaded)"
            )
    return TypeError(
        f"{where} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
        f"expected some of: {', '.join(allowed)}{missing}"
    )


def validate_layer(layer: Mapping[str, Any], *, where: str, settings: bool = False) -> dict[str, Any]:
    """Check one layer of options and return it as a plain dict.

    :param layer: option names to values, as a user wrote them.
    :param where: what the user called (``"@parallel"``, ``"config()"``), for messages.
    :param settings: accept settings too (``config()``): conc-ml's own, and those a
        backend declares (``Backend.settings``), whose values that backend checks when a
        call uses it (see :func:`conc_ml.backends.checked_settings`).
    :raises TypeError: on an unknown name or a value of the wrong type.
    :raises ValueError: on a value out of range.
    :raises BackendUnavailableError: on an unknown backend name.
    """
    unknown = sorted(set(layer) - set(OPTION_NAMES) - set(CORE_SETTINGS if settings else ()))
    declared = _backend_setting_names(unknown) if settings else set()
    unknown = [name for name in unknown if name not in declared]
    if unknown:
        raise _unknown_keywords(unknown, where, settings=settings)
    out = dict(layer)
    for name, check in _CHECKS.items():
        if name in out:
            out[name] = check(out[name])
    if out.get("chunks") is not None and out.get("chunk_size") is not None:
        raise ValueError("chunks and chunk_size are exclusive; give one of them")
    return out


def _validate_backend(backend: object) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str naming a backend, not {type(backend).__name__}")
    if backend != "auto":
        from .backends import check_backend_name

        check_backend_name(backend)
    return backend


def _validate_size(name: str) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        return optional_integer(value, name, minimum=1, rule="a positive int or None")

    return check


def _validate_combine(combine: object) -> Combine:
    if not callable(combine) and combine not in COMBINE_NAMES:
        raise ValueError(
            f"combine must be one of {', '.join(map(repr, COMBINE_NAMES))} or a callable "
            f"taking the list of chunk results, got {combine!r}"
        )
    return cast(Combine, combine)


def _validate_seed(seed: object) -> Seed:
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return seed
    seed_rule = "seed must be an int >= 0, a numpy.random.SeedSequence or None"
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{seed_rule}, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{seed_rule}, got {seed!r} (numpy's SeedSequence takes no negative entropy)")
    return int(seed)


def _validate_timeout(timeout: object) -> float | None:
    return optional_number(
        timeout,
        "timeout",
        minimum=0,
        inclusive=False,
        finite=True,
        rule="a finite number of seconds > 0 (or None for no limit)",
        type_rule="a number of seconds or None",
    )


def _validate_retries(retries: object) -> int:
    return integer(retries, "retries", minimum=0, rule="an int >= 0 (0: no retry)")


def _validate_checkpoint(checkpoint: object) -> str | os.PathLike[str] | None:
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str | os.PathLike) or not isinstance(os.fspath(checkpoint), str):
        raise TypeError(
            f"checkpoint must be a folder given as a str or os.PathLike (or None), not {type(checkpoint).__name__}"
        )
    if not os.fspath(checkpoint):
        raise ValueError("checkpoint must name a folder, got an empty path; use None for no checkpoint")
    return checkpoint


def _validate_split(split: object) -> Split:
    if split is None or isinstance(split, str):
        return split
    if isinstance(split, bool):
        raise TypeError("split must be a parameter name, a position or a tuple of names, not a bool")
    if isinstance(split, numbers.Integral):
        if split < 0:
            raise ValueError(f"split position must be >= 0, got {split}")
        return int(split)
    if isinstance(split, tuple | list):
        if not split or not all(isinstance(s, str) for s in split):
            raise TypeError(f"split as a sequence must be a non-empty tuple of parameter names, got {split!r}")
        if len(set(split)) != len(split):
            raise ValueError(f"split names must be distinct, got {split!r}")
        return tuple(split)
    raise TypeError(f"split must be a parameter name, a position or a tuple of names, not {type(split).__name__}")


#: each option's check, in the order they run (the first bad value is the one reported)
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "backend": _validate_backend,
    "chunks": _validate_size("chunks"),
    "chunk_size": _validate_size("chunk_size"),
    "workers": _validate_size("workers"),
    "split": _validate_split,
    "combine": _validate_combine,
    "seed": _validate_seed,
    "timeout": _validate_timeout,
    "progress": lambda value: flag(value, "progress"),
    "retries": _validate_retries,
    "checkpoint": _validate_checkpoint,
    "allow_nested": lambda value: flag(value, "allow_nested"),
}


def environment_layer() -> dict[str, Any]:
    """Options set process-wide through ``CONC_ML_BACKEND`` and ``CONC_ML_WORKERS``.

    Read at each call (cheap), so that tests and notebooks may change them.

    :raises ValueError: if a variable holds a value that is not allowed.
    """
    layer: dict[str, Any] = {}
    backend = os.environ.get(_ENV_BACKEND, "").strip()
    if backend:
        layer["backend"] = backend
    workers = os.environ.get(_ENV_WORKERS, "").strip()
    if workers:
        try:
            layer["workers"] = int(workers)
        except ValueError:
            raise ValueError(f"{_ENV_WORKERS} must be a positive integer, got {workers!r}") from None
    return validate_layer(layer, where=f"environment ({_ENV_BACKEND}/{_ENV_WORKERS})")


_config_layer: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("conc_ml_config", default=None)


def current_config() -> Mapping[str, Any]:
    """The options set by the innermost ``config()`` block in this context.

    Inside a chunk of a call made with ``allow_nested=True``, the code runs as if inside
    ``config(allow_nested=True)``, unless a ``config()`` block of its own says otherwise.
    """
    layer = _config_layer.get() or {}
    if "allow_nested" not in layer and nested_calls_allowed():
        return {**layer, "allow_nested": True}
    return layer


@contextlib.contextmanager
def config(**options: Any) -> Iterator[None]:
    """Change the defaults of ``@parallel`` calls made inside the block.

    Takes the keywords of :func:`conc_ml.parallel` and backend settings
    (``address=`` or ``client=`` for dask, ``allow_nested=True`` to let a ``@parallel``
    function called inside a worker run its own chunks in parallel). Blocks nest; the
    setting is a :mod:`contextvars` context, so threads and async tasks each see their own.

    :raises TypeError: on an unknown keyword or a value of the wrong type.
    :raises ValueError: on a value out of range.
    """
    layer = validate_layer(options, where="config()", settings=True)
    merged = dict(current_config())
    for exclusive, other in (("chunks", "chunk_size"), ("chunk_size", "chunks")):
        if layer.get(exclusive) is not None:
            merged.pop(other, None)
    merged.update(layer)
    token = _config_layer.set(merged)
    try:
        yield
    finally:
        _config_layer.reset(token)


def merge_layers(*layers: Mapping[str, Any]) -> ParallelOptions:
    """Merge option layers, lowest precedence first, into resolved options.

    ``chunks`` and ``chunk_size`` are one choice: a higher layer setting either one
    replaces what a lower layer set for the other.
    """
    values: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in OPTION_NAMES:
                settings[key] = value
                continue
            if key == "chunks" and value is not None:
                values.pop("chunk_size", None)
            elif key == "chunk_size" and value is not None:
                values.pop("chunks", None)
            values[key] = value
    return ParallelOptions(**values, settings=settings)
