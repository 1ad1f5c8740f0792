"""The shared validators: what each accepts, and the message of what it refuses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from conc_ml._validate import flag, integer, number, optional_integer, optional_number


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_integer_gives_back_a_plain_int(value: Any) -> None:
    checked = integer(value, "chunks", minimum=1)
    assert checked == value
    assert type(checked) is int


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "chunks must be an int >= 1, got 0"),
        (True, TypeError, "chunks must be an int >= 1, not bool True"),
        (2.0, TypeError, "chunks must be an int >= 1, not float 2.0"),
        ("3", TypeError, "chunks must be an int >= 1, not str '3'"),
        (None, TypeError, "chunks must be an int >= 1, not NoneType None"),
    ],
)
def test_integer_refuses_with_what_is_allowed_and_what_was_given(value: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        integer(value, "chunks", minimum=1)
    assert str(info.value) == message


def test_optional_integer_takes_none_and_says_so() -> None:
    assert optional_integer(None, "workers", minimum=1) is None
    with pytest.raises(ValueError, match=r"^workers must be an int >= 1 or None, got 0$"):
        optional_integer(0, "workers", minimum=1)
    with pytest.raises(ValueError, match=r"^workers must be a positive int or None, got -2$"):
        optional_integer(-2, "workers", minimum=1, rule="a positive int or None")


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (0, {"inclusive": False}, "rate must be a number > 0, got 0"),
        (-0.5, {}, "rate must be a number >= 0, got -0.5"),
        (math.nan, {}, "rate must be a number >= 0, got nan"),
        (math.inf, {"finite": True, "rule": "a finite number >= 0"}, "rate must be a finite number >= 0, got inf"),
    ],
)
def test_number_refuses_values_out_of_range_nan_and_infinity_when_asked(
    value: float, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        number(value, "rate", minimum=0, **kwargs)
    assert str(info.value) == message


def test_number_accepts_the_minimum_when_inclusive_and_infinity_unless_finite() -> None:
    assert number(0, "backoff", minimum=0) == 0.0
    assert number(math.inf, "timeout", minimum=0, inclusive=False) == math.inf
    assert optional_number(None, "timeout", minimum=0) is None


def test_number_refuses_a_bool_and_a_string_naming_the_type_rule() -> None:
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds or None, not bool False$"):
        number(False, "timeout", minimum=0, type_rule="a number of seconds or None")
    with pytest.raises(TypeError, match=r"^timeout must be a number > 0 or None, not str '1'$"):
        optional_number("1", "timeout", minimum=0, inclusive=False)


def test_flag_takes_only_true_or_false() -> None:
    assert flag(True, "progress") is True
    with pytest.raises(TypeError, match=r"^progress must be True or False, not 1$"):
        flag(1, "progress")
