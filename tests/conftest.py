"""Shared fixtures: behavioural tests run once per backend through ``backend``."""

from __future__ import annotations

import pytest

#: the backends every behavioural test runs on (dask has its own, slower, suite)
BACKENDS = ("sequential", "thread", "process", "async")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend; a test using it runs once per backend."""
    return str(request.param)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, naming them, if non-daemon threads are left: they would hang the exit."""
    import threading
    import time

    deadline = time.monotonic() + 15
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"non-daemon threads left at the end of the run: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
