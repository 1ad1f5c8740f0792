"""The plugin's parity check: one walk of conc_ml.testing's comparer per round."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from conc_ml.errors import ParityError
from pytest_conc_ml import parity


def test_one_walk_gives_the_verdict_and_the_largest_difference() -> None:
    checked = parity.compare(np.array([1.0, 2.0]), np.array([1.0, 2.5]), rtol=0.5, atol=0.0)
    assert checked.error is None
    assert checked.max_difference == pytest.approx(0.5)
    failed = parity.compare([np.array([1.0])], [np.array([np.nan])], rtol=0.0, atol=0.0)
    assert isinstance(failed.error, ParityError)
    assert "result[0][0]: actual 1.0, expected nan" in str(failed.error)


def test_generators_and_estimators_agree_with_the_verdict() -> None:
    # Equal by the comparer, so the report's difference is 0, not "cannot subtract".
    assert parity.max_difference(np.random.default_rng(3), np.random.default_rng(3)) == 0.0
    x = np.arange(8.0).reshape(4, 2)
    y = np.array([1.0, 2.0, 3.0, 5.0])
    fitted = LinearRegression().fit(x, y), LinearRegression().fit(x, y)
    assert parity.max_difference(*fitted) == 0.0
    assert parity.compare(*fitted, rtol=0.0, atol=0.0).error is None
