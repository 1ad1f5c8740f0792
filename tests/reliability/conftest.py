"""Fixtures of the fault-injection tests, and the check that the suite leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conc_ml

from .census import settled_census, take_census

SCENARIO_SCRIPT = Path(__file__).with_name("fault_scenarios.py")
REPO_ROOT = Path(conc_ml.__file__).resolve().parent.parent


def scenario_command(name: str, *args: str) -> list[str]:
    """The command line that runs one scenario of ``fault_scenarios.py``."""
    return [sys.executable, str(SCENARIO_SCRIPT), name, *args]


def scenario_environment(folder: Path) -> dict[str, str]:
    """The environment of a scenario: this checkout importable, temporary files in ``folder``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # A private temporary folder: anything left in it after the scenario is a leak.
    env["TMPDIR"] = str(folder)
    env.pop("CONC_ML_BACKEND", None)
    env.pop("CONC_ML_WORKERS", None)
    return env


def parse_result(stdout: str) -> dict[str, Any]:
    """The ``RESULT`` line a scenario printed."""
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise AssertionError(f"the scenario printed no RESULT line; its output was:\n{stdout}")


@pytest.fixture(scope="package")
def run_scenario(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run a scenario in a fresh Python process (bounded) and return its result.

    Each run gets a private temporary folder, which must be empty when it ends.
    """

    def run(name: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        folder = tmp_path_factory.mktemp(name)
        completed = subprocess.run(
            scenario_command(name, *args),
            env=scenario_environment(folder),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert completed.returncode == 0, f"scenario {name} failed:\n{completed.stdout}\n{completed.stderr}"
        left = sorted(path.name for path in folder.iterdir())
        assert not left, f"scenario {name} left temporary files behind: {left}"
        return parse_result(completed.stdout)

    return run


def _shut_down_loky() -> None:
    # The process pool is kept warm across calls on purpose: shut it down before counting.
    from conc_ml.backends._process._backend import shut_down_pool

    shut_down_pool()


@pytest.fixture(scope="package", autouse=True)
def _suite_leaves_nothing_behind() -> Iterator[None]:
    """Fail if a process, thread, fd, segment or temp file outlives the tests of this folder.

    The baseline is taken after the process backend has been used once (its resource
    tracker and imports are then in place) and its pool shut down; at the end the pool
    is shut down again and whatever remains is compared, allowing 10 s for it to end.
    """
    conc_ml.parallel(backend="process", workers=1, chunks=1)(sum)([1])
    _shut_down_loky()
    before = take_census()
    yield
    after = settled_census(before, settle=_shut_down_loky)
    leaked = after.leaked_since(before)
    assert not leaked, f"the reliability tests left behind: {leaked}"
