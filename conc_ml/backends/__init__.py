"""Backends: where chunks run, looked up by name.

Built-in backends are imported lazily, on first use, so that ``import conc_ml`` stays
cheap and a missing optional dependency is reported by name with an install hint rather
than at import time. Third-party backends register through the ``conc_ml.backends``
entry-point group (the entry point loads a class implementing :class:`Backend`) or at
run time with :func:`register_backend`. The interface is in :mod:`._base`; the reference
(``docs/reference.md``) walks through a third-party backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .._runner import ChunkOutcome, ChunkTask, run_chunk
from ..errors import BackendUnavailableError
from ._base import (
    AwaitedChunks,
    Backend,
    BackendSetting,
    CallInfo,
    ChunkRunner,
    EventLoopBackend,
    EventLoopRunner,
    ExecutorLendingBackend,
    ExecutorRunner,
    LentExecutorBackend,
)

__all__ = [
    "AwaitedChunks",
    "Backend",
    "BackendSetting",
    "CallInfo",
    "ChunkOutcome",
    "ChunkRunner",
    "ChunkTask",
    "EventLoopBackend",
    "EventLoopRunner",
    "ExecutorLendingBackend",
    "ExecutorRunner",
    "available_backends",
    "backend_setting",
    "check_backend_name",
    "checked_settings",
    "get_backend",
    "register_backend",
    "run_chunk",
    "setting_names",
]

ENTRY_POINT_GROUP = "conc_ml.backends"


@dataclasses.dataclass(frozen=True, slots=True)
class _BackendEntry:
    load: Callable[[], Callable[[], Backend | ExecutorLendingBackend]]
    requires: tuple[str, ...] = ()
    install_hint: str = ""


def _builtin(module: str, cls: str) -> Callable[[], Callable[[], Backend | ExecutorLendingBackend]]:
    def load() -> Callable[[], Backend | ExecutorLendingBackend]:
        return getattr(importlib.import_module(f"conc_ml.backends.{module}"), cls)  # type: ignore[no-any-return]

    return load


_registry: dict[str, _BackendEntry] = {
    "sequential": _BackendEntry(_builtin("_sequential", "SequentialBackend")),
    "thread": _BackendEntry(_builtin("_thread", "ThreadBackend")),
    "process": _BackendEntry(_builtin("_process._backend", "ProcessBackend"), ("joblib",), "pip install joblib"),
    "async": _BackendEntry(_builtin("_async", "AsyncBackend"), ("anyio",), "pip install anyio"),
    "dask": _BackendEntry(_builtin("_dask", "DaskBackend"), ("distributed",), "pip install 'conc-ml[dask]'"),
}
_instances: dict[str, Backend] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register_backend(
    name: str, factory: Callable[[], Backend | ExecutorLendingBackend], *, replace: bool = False
) -> None:
    """Make a backend available under ``name``.

    :param name: the name users pass as ``backend=``.
    :param factory: called once, with no arguments, to create the backend (a class works):
        a :class:`Backend`, or the earlier form that lends an executor
        (:class:`ExecutorLendingBackend`).
    :param replace: allow replacing an existing registration.
    :raises ValueError: if ``name`` is taken and ``replace`` is false, or is ``"auto"``.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name must be a non-empty str other than 'auto', got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    with _lock:
        _load_entry_points()
        if name in _registry and not replace:
            raise ValueError(f"a backend named {name!r} is already registered; pass replace=True to replace it")
        _registry[name] = _BackendEntry(lambda: factory)
        _instances.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import importlib.metadata  # 3 MiB and 20 ms: only when a backend name is not built in

    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in _registry:
            _registry[entry_point.name] = _BackendEntry(entry_point.load)


def _known_names() -> str:
    return ", ".join(sorted(_registry))


def check_backend_name(name: str) -> None:
    """Check that ``name`` is a known backend whose dependencies are installed.

    Cheap: nothing is imported (``importlib.util.find_spec`` only).

    :raises BackendUnavailableError: naming the known backends, or the install hint.
    """
    with _lock:
        if name not in _registry:  # built-in names are always there: no entry points needed
            _load_entry_points()
        entry = _registry.get(name)
    if entry is None:
        raise BackendUnavailableError(f"unknown backend {name!r}; expected one of: auto, {_known_names()}")
    missing = [module for module in entry.requires if importlib.util.find_spec(module) is None]
    if missing:
        raise BackendUnavailableError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: {entry.install_hint}"
        )


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, created on first use.

    :raises BackendUnavailableError: if the name is unknown or its dependencies are missing.
    """
    backend = _instances.get(name)
    if backend is not None:
        return backend
    check_backend_name(name)
    with _lock:
        backend = _instances.get(name)
        if backend is None:
            entry = _registry[name]
            try:
                factory = entry.load()
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"backend {name!r} could not be imported ({exc}); install it with: {entry.install_hint}"
                ) from exc
            backend = _as_backend(name, factory())
            _instances[name] = backend
    return backend


def _as_backend(name: str, made: object) -> Backend:
    """The backend ``made`` by a factory, the earlier executor-lending form adapted.

    :raises TypeError: if ``made`` implements neither form, or declares
        ``runs_in_event_loop`` without ``open_in_event_loop``.
    """
    if isinstance(made, Backend):
        if made.runs_in_event_loop and not isinstance(made, EventLoopBackend):
            raise TypeError(
                f"backend {name!r} declares runs_in_event_loop but has no open_in_event_loop(workers, settings)"
            )
        return made
    if isinstance(made, ExecutorLendingBackend):
        return LentExecutorBackend(made)
    missing = sorted(
        member
        for member in (
            "crosses_processes",
            "can_stop_running",
            "runs_in_event_loop",
            "settings",
            "before_call",
            "open_runner",
            "translate_error",
        )
        if not hasattr(made, member)
    )
    raise TypeError(
        f"backend {name!r} ({type(made).__qualname__}) does not implement conc_ml.backends.Backend: "
        f"it lacks {', '.join(missing)}"
    )


def backend_setting(name: str) -> tuple[str, BackendSetting] | None:
    """The backend that declares the ``config()`` setting ``name``, and the setting; ``None`` if none does.

    Backends already in use are asked first; others are loaded only when they must be.
    One that cannot be loaded (not installed, or broken) is not asked: its own calls say
    what is wrong with it, and a ``config()`` for another backend must not fail on it.
    """
    for backend_name in [*_instances, *sorted(set(_registered_names()) - set(_instances))]:
        try:
            backend = get_backend(backend_name)
        except Exception:
            continue
        setting = backend.settings.get(name)
        if setting is not None:
            return backend_name, setting
    return None


def checked_settings(backend: Backend, settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """``settings`` once the backend's schema accepted the values of the settings it declares.

    Settings of other backends pass through unchecked: a setting matters to the backend
    that reads it (``config(address=...)`` is dask's, whatever backend a call uses).

    :raises TypeError: if a value has a type the setting does not accept.
    :raises ValueError: if a value has the right type but is not allowed.
    """
    for name, value in settings.items():
        setting = backend.settings.get(name)
        if setting is not None:
            setting.validate(name, value)
    return settings


def setting_names() -> tuple[list[str], list[str]]:
    """Every ``config()`` setting the installed backends declare, and the backends that could not be loaded."""
    names: set[str] = set()
    unavailable = []
    for backend_name in sorted(_registered_names()):
        try:
            names.update(get_backend(backend_name).settings)
        except Exception:  # not installed, or broken: see backend_setting
            unavailable.append(backend_name)
    return sorted(names), unavailable


def _registered_names() -> list[str]:
    with _lock:
        _load_entry_points()
        return list(_registry)


def available_backends() -> dict[str, bool]:
    """Every known backend name, and whether its dependencies are installed."""
    with _lock:
        _load_entry_points()
        names = sorted(_registry)
    status = {}
    for name in names:
        try:
            check_backend_name(name)
        except BackendUnavailableError:
            status[name] = False
        else:
            status[name] = True
    return status
