"""Decorated functions as methods: the descriptor side of ``@parallel`` and ``@io_bound``.

A decorator applied in a class body returns an object, not a function, so Python does not
bind it to the instance by itself: the wrapper has to be a descriptor, as
:class:`functools.partialmethod` is. ``__get__`` on an instance gives a wrapper bound to
it, whose calls pass the instance as the first argument, like any argument that is not
split (process workers receive a pickled copy of it). Decorating a ``classmethod`` binds
the class instead; decorating a ``staticmethod`` binds nothing. Applying ``classmethod``
or ``staticmethod`` on top of the decorator works too.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["MethodKind", "bind_target", "implicit_parameter", "unwrap_method"]

#: names of a leading parameter that receives the instance or the class, never data
IMPLICIT_NAMES = ("self", "cls")


class MethodKind(enum.Enum):
    """How a decorated function binds when it is looked up on a class or an instance."""

    FUNCTION = "function"  # a plain function: bound to the instance, as ``def`` in a class is
    CLASS = "classmethod"
    STATIC = "staticmethod"


def unwrap_method(target: Any) -> tuple[Callable[..., Any], MethodKind]:
    """The function inside a ``classmethod`` or ``staticmethod`` object, and which it was."""
    if isinstance(target, classmethod):
        return target.__func__, MethodKind.CLASS
    if isinstance(target, staticmethod):
        return target.__func__, MethodKind.STATIC
    return target, MethodKind.FUNCTION


def implicit_parameter(signature: inspect.Signature, kind: MethodKind) -> str | None:
    """The leading parameter that receives the instance or class, or ``None``.

    It is the first parameter of a decorated ``classmethod``, or a first positional
    parameter named ``self`` or ``cls`` (the decorator runs in the class body, before the
    class exists, so the name is all there is to go by; that rule also covers
    ``classmethod`` applied on top of the decorator).
    """
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not params or kind is MethodKind.STATIC:
        return None
    if kind is MethodKind.CLASS or params[0].name in IMPLICIT_NAMES:
        return params[0].name
    return None


def bind_target(kind: MethodKind, instance: object, owner: type | None) -> object | None:
    """What a lookup binds the function to: the instance, the class, or ``None`` (no binding)."""
    if kind is MethodKind.STATIC:
        return None
    if kind is MethodKind.CLASS:
        return owner if owner is not None else type(instance)
    return instance
