"""Checks of user-given values, shared by every entry point, with one shape of message.

``@parallel``, ``config()``, ``@io_bound``, ``warm_up`` and ``conc_ml.testing`` take
counts, sizes and durations; each is checked here, so that a bool is never taken for an
int anywhere, and every message reads the same way: what the value must be, then what it
was (``chunks must be a positive int or None, got 0``). Imports nothing of conc-ml.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["flag", "integer", "number", "optional_integer", "optional_number"]


def integer(value: object, name: str, *, minimum: int, rule: str | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool) of at least ``minimum``.

    :param name: how the user knows the value (``"chunks"``, ``"@io_bound: retries"``).
    :param rule: what the value must be, for messages; default ``"an int >= minimum"``.
    :raises TypeError: if ``value`` is not an integer, or is a bool.
    :raises ValueError: if it is below ``minimum``.
    """
    rule = rule or f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {rule}, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return int(value)


def optional_integer(value: object, name: str, *, minimum: int, rule: str | None = None) -> int | None:
    """As :func:`integer`, with ``None`` allowed (and given back)."""
    return None if value is None else integer(value, name, minimum=minimum, rule=rule or f"an int >= {minimum} or None")


def number(
    value: object,
    name: str,
    *,
    minimum: float,
    inclusive: bool = True,
    finite: bool = False,
    rule: str | None = None,
    type_rule: str | None = None,
) -> float:
    """``value`` as a float, if it is a real number (not a bool, not NaN) of at least ``minimum``.

    :param inclusive: whether ``minimum`` itself is allowed.
    :param finite: whether infinity is refused.
    :param rule: what the value must be, for messages; default ``"a number >= minimum"``.
    :param type_rule: what the value must be, for the message of a value that is no number.
    :raises TypeError: if ``value`` is not a real number, or is a bool.
    :raises ValueError: if it is NaN, below ``minimum`` (or equal to it when not
        ``inclusive``), or infinite when ``finite``.
    """
    rule = rule or f"a number {'>=' if inclusive else '>'} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {type_rule or rule}, not {type(value).__name__} {value!r}")
    as_float = float(value)
    if (
        math.isnan(as_float)
        or as_float < minimum
        or (as_float == minimum and not inclusive)
        or (finite and math.isinf(as_float))
    ):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return as_float


def optional_number(
    value: object,
    name: str,
    *,
    minimum: float,
    inclusive: bool = True,
    finite: bool = False,
    rule: str | None = None,
    type_rule: str | None = None,
) -> float | None:
    """As :func:`number`, with ``None`` allowed (and given back)."""
    if value is None:
        return None
    rule = rule or f"a number {'>=' if inclusive else '>'} {minimum:g} or None"
    return number(value, name, minimum=minimum, inclusive=inclusive, finite=finite, rule=rule, type_rule=type_rule)


def flag(value: object, name: str) -> bool:
    """``value``, if it is ``True`` or ``False`` (not merely truthy).

    :raises TypeError: if it is anything else.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value
