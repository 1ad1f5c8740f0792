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
#: items of a list or tuple looked at for open files (files in a list are seldom alone)
_FILE_CHECK_ITEMS = 10
#: values of a dict, or attributes of an object, looked at for open files
_FILE_CHECK_WIDTH = 100
#: how deep the look for open files goes into containers and attributes
_FILE_CHECK_DEPTH = 4
#: objects looked at for open files in one argument, at most
_FILE_CHECK_VISITS = 200
#: values that hold no file and need no look inside
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), range, types.ModuleType, type)
#: top-level packages whose objects are not entered: arrays, frames, matrices hold no files
_NOT_ENTERED = frozenset({"numpy", "pandas", "scipy", "pyarrow", "torch"})


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


def _open_file_in(value: Any) -> tuple[str, Any] | None:
    """The first open file found in ``value``, with its path from ``value`` (``"['db'].log"``).

    A bounded search, cheap enough for every call (a split list of a million rows is not
    walked): the first items of a list, tuple or dict, the attributes of an object, a few
    levels deep and a few hundred objects at most; objects of numeric libraries (arrays,
    frames) are not entered.
    """
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    seen: set[int] = set()
    visits = 0
    while stack and visits < _FILE_CHECK_VISITS:
        path, current, depth = stack.pop()
        if id(current) in seen or isinstance(current, _LEAVES):
            continue
        seen.add(id(current))
        visits += 1
        if _is_open_file(current):
            return path, current
        if depth >= _FILE_CHECK_DEPTH or type(current).__module__.split(".")[0] in _NOT_ENTERED:
            continue
        try:
            state = getattr(current, "__dict__", None)
        except Exception:  # a proxy whose attribute lookup fails: nothing to look into
            state = None
        parts: list[tuple[str, Any]]
        if isinstance(current, list | tuple):
            parts = [(f"[{i}]", item) for i, item in enumerate(itertools.islice(current, _FILE_CHECK_ITEMS))]
        elif isinstance(current, Mapping):
            parts = [(f"[{k!r}]", v) for k, v in itertools.islice(current.items(), _FILE_CHECK_WIDTH)]
        elif isinstance(state, dict):
            items = itertools.islice(state.items(), _FILE_CHECK_WIDTH)
            parts = [(f".{name}", item) for name, item in items]
        else:
            parts = []
        # Reversed, so that the first part is looked at first.
        stack.extend((path + step, part, depth + 1) for step, part in reversed(parts))
    return None


def refuse_open_files(arguments: Mapping[str, Any], function_name: str, backend_name: str) -> None:
    """Refuse open file objects among a call's arguments, for a backend that pickles them.

    Looks into each argument as :func:`_open_file_in` does: through containers and the
    attributes of objects (an instance whose method is decorated is its ``self`` argument).

    :raises SerializationError: naming the argument, where the file is in it, and the fix.
    """
    for name, value in arguments.items():
        found = _open_file_in(value)
        if found is None:
            continue
        path, candidate = found
        file_name = getattr(candidate, "name", None)
        shown = f" ({file_name!r})" if file_name is not None else ""
        raise SerializationError(
            f"argument {name!r} of {function_name}(): {name}{path} is an open file{shown}, which a "
            f"{backend_name!r} worker would receive as a copy of its contents read now, not as the file. "
            "Pass the path and open the file inside the function, or use backend='thread'"
        )
