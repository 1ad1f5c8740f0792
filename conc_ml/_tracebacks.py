"""Source lines in tracebacks that come back from worker processes.

cloudpickle sends a function that cannot be imported by name (one defined in the
script being run, in a notebook, a lambda, a nested function) by value, and renames its
code's file ``<dynamic-code>`` on the way: a worker's traceback then shows
``File "<dynamic-code>", line 12, in helper`` and no source. The caller still has the
code objects and the files: this puts the file name and the source line back.
"""

from __future__ import annotations

import linecache
import re
import sys
import types
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["with_source_lines"]

_DYNAMIC_FRAME = re.compile(r'^(?P<indent>\s*)File "<dynamic-code>", line (?P<line>\d+), in (?P<name>.+)$')
#: how many objects the search for code objects visits at most
_MAX_VISITS = 10_000


def _code_objects(roots: Iterable[object]) -> Iterator[types.CodeType]:
    """Every code object reachable from ``roots``: functions, their wrappers, classes, nested code."""
    seen: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < _MAX_VISITS:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.CodeType):
            yield obj
            stack.extend(const for const in obj.co_consts if isinstance(const, types.CodeType))
        elif isinstance(obj, types.FunctionType):
            stack.append(obj.__code__)
        elif isinstance(obj, types.MethodType | classmethod | staticmethod):
            stack.append(obj.__func__)
        elif isinstance(obj, property):
            stack.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, type):
            stack.extend(vars(obj).values())
        wrapped = getattr(obj, "__wrapped__", None) if not isinstance(obj, type | types.CodeType) else None
        if wrapped is not None:
            stack.append(wrapped)


def _roots(func: object) -> list[object]:
    """The function and what its module defines (helpers it calls are sent by value too)."""
    roots: list[object] = [func]
    module_name = getattr(func, "__module__", None) or "__main__"
    for name in {module_name, "__main__"}:
        module = sys.modules.get(name)
        if module is not None:
            roots.extend(value for value in vars(module).values() if getattr(value, "__module__", None) == name)
    return roots


def _span(code: types.CodeType) -> tuple[int, int]:
    lines = [line for _, _, line in code.co_lines() if line is not None]
    return code.co_firstlineno, max(lines, default=code.co_firstlineno)


def with_source_lines(traceback_text: str, func: Any) -> str:
    """``traceback_text`` with each ``<dynamic-code>`` frame given its file and source line.

    A frame is matched to a code object of ``func`` or of its module by name and line
    span; a frame that matches none, or more than one file, is left as it was.
    """
    if '"<dynamic-code>"' not in traceback_text:
        return traceback_text
    try:
        codes = list(_code_objects(_roots(func)))
    except Exception:  # an odd object in the module: the traceback stays as it came
        return traceback_text
    out = []
    for line in traceback_text.splitlines(keepends=True):
        match = _DYNAMIC_FRAME.match(line.rstrip("\n"))
        if match is None:
            out.append(line)
            continue
        number, name, indent = int(match["line"]), match["name"], match["indent"]
        files = {
            code.co_filename for code in codes if code.co_name == name and _span(code)[0] <= number <= _span(code)[1]
        }
        if len(files) != 1:
            out.append(line)
            continue
        filename = files.pop()
        out.append(f'{indent}File "{filename}", line {number}, in {name}\n')
        source = linecache.getline(filename, number).strip()
        if source:
            out.append(f"{indent}  {source}\n")
    return "".join(out)
