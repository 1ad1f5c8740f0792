"""Shared fixtures: behavioural tests run once per backend through ``backend``."""

from __future__ import annotations

import pytest

#: the backends every behavioural test runs on (dask has its own, slower, suite)
BACKENDS = ("sequential", "thread", "process", "async")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend; a test using it runs once per backend."""
    return str(request.param)
