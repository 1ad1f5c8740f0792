"""Shared fixtures: behavioural tests run once per backend through ``backend``."""

from __future__ import annotations

import threading
import time

import pytest

#: the backends every behavioural test runs on (dask has its own, slower, suite)
BACKENDS = ("sequential", "thread", "process", "async")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend; a test using it runs once per backend."""
    return str(request.param)


#: non-daemon threads whose library joins them at exit: loky's manager of its warm pool
THREADS_JOINED_AT_EXIT = frozenset({"ExecutorManagerThread"})


def _threads_that_would_hang_the_exit() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
        and not thread.daemon
        and thread.is_alive()
        and thread.name not in THREADS_JOINED_AT_EXIT
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, naming them, if non-daemon threads are left: they would hang the exit."""
    deadline = time.monotonic() + 15
    for thread in _threads_that_would_hang_the_exit():
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [thread.name for thread in _threads_that_would_hang_the_exit()]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"non-daemon threads left at the end of the run: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
