"""What can be sent to a worker process, and where exactly in an argument it fails.

Used on the way out of a call that failed to pickle (to name the object and its path,
``data[3]`` or ``config['lock']``, not only the argument), and before a call to a
backend that crosses processes (to refuse open files, which cloudpickle would send as
a copy of their contents).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import itertools
import types
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import SerializationError

__all__ = ["Unpicklable", "locate_unpicklable", "refuse_open_files"]

#: how deep the search goes into containers and attributes
_SEARCH_DEPTH = 8
#: items of one container tried at most
_SEARCH_WIDTH = 10_000
#: values of a dict argument checked for open files (a list: its first item only)
_FILE_CHECK_WIDTH = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Unpicklable:
    """The innermost object that cannot be pickled, and the path to it from the argument.

    :ivar steps: index, key and attribute steps from the argument to the object, as text
        (``[3]``, ``['lock']``, ``.session``); the first one is an index into the chunk
        when the argument was split.
    :ivar value: the object itself.
    """

    steps: tuple[str | int, ...]
    value: Any

    def path(self, root: str, offset: int = 0) -> str:
        """The path as Python would write it, the first index moved by ``offset`` (the chunk's start)."""
        text = root
        for position, step in enumerate(self.steps):
            if isinstance(step, int):
                text += f"[{step + offset if position == 0 else step}]"
            else:
                text += step
        return text

    def describe(self) -> str:
        """The object's type, as ``module.name``."""
        cls = type(self.value)
        return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _pickles(value: Any) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


def _parts(value: Any) -> Iterator[tuple[str | int, Any]]:
    """The parts pickling ``value`` pickles, each with its step from ``value``."""
    if isinstance(value, list | tuple):
        yield from enumerate(itertools.islice(value, _SEARCH_WIDTH))
    elif isinstance(value, Mapping):
        for key, item in itertools.islice(value.items(), _SEARCH_WIDTH):
            yield f"[{key!r}]", item
    elif isinstance(value, set | frozenset):
        for item in itertools.islice(value, _SEARCH_WIDTH):
            yield " (a member)", item
    elif isinstance(value, types.FunctionType):
        # A function sent by value takes the globals and closure variables it uses along.
        try:
            variables = inspect.getclosurevars(value)
        except (TypeError, ValueError):
            return
        for name, item in {**variables.globals, **variables.nonlocals}.items():
            if not isinstance(item, types.ModuleType):
                yield f" (its variable {name!r})", item
    else:
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            for name, item in itertools.islice(state.items(), _SEARCH_WIDTH):
                yield f".{name}", item


def locate_unpicklable(value: Any) -> Unpicklable | None:
    """The innermost part of ``value`` that cannot be pickled, or ``None`` if ``value`` pickles."""
    if _pickles(value):
        return None
    steps: list[str | int] = []
    current = value
    for _ in range(_SEARCH_DEPTH):
        for step, part in _parts(current):
            if not _pickles(part):
                steps.append(step)
                current = part
                break
        else:
            break
    return Unpicklable(tuple(steps), current)


def _is_open_file(value: object) -> bool:
    # In-memory buffers pickle as what they are; a file on disk would arrive as a copy
    # of its contents read at send time, detached from the file.
    return isinstance(value, io.IOBase) and not isinstance(value, io.BytesIO | io.StringIO)


def refuse_open_files(arguments: Mapping[str, Any], function_name: str, backend_name: str) -> None:
    """Refuse open file objects among a call's arguments, for a backend that pickles them.

    Looks at each argument, the first item of a list or tuple, and the values of a dict:
    cheap enough for every call, and where files are passed in practice.

    :raises SerializationError: naming the argument and the file, with the fix.
    """
    for name, value in arguments.items():
        candidates: list[tuple[str, Any]] = [(name, value)]
        if isinstance(value, list | tuple) and value:
            candidates.append((f"{name}[0]", value[0]))
        elif isinstance(value, dict):
            candidates += [(f"{name}[{k!r}]", v) for k, v in itertools.islice(value.items(), _FILE_CHECK_WIDTH)]
        for path, candidate in candidates:
            if _is_open_file(candidate):
                file_name = getattr(candidate, "name", None)
                shown = f" ({file_name!r})" if file_name is not None else ""
                raise SerializationError(
                    f"argument {name!r} of {function_name}(): {path} is an open file{shown}, which a "
                    f"{backend_name!r} worker would receive as a copy of its contents read now, not as the file. "
                    "Pass the path and open the file inside the function, or use backend='thread'"
                )
