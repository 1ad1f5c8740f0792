"""Running a small user program in a fresh, bounded Python process, as the reliability tests do.

The fork server, the process pool and the resource trackers live once per program:
checking what they do needs a program of its own, which cannot hang or kill pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import conc_ml

REPO_ROOT = Path(conc_ml.__file__).resolve().parent.parent

__all__ = ["REPO_ROOT", "program_environment", "result_of", "run_program", "write_program"]


def program_environment(**extra: str) -> dict[str, str]:
    """This environment, with this checkout importable and conc-ml's own variables removed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONC_ML_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def write_program(folder: Path, source: str, name: str = "program.py") -> Path:
    """Write ``source`` (dedented) to ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def run_program(
    path: Path,
    *,
    cwd: Path,
    timeout: float = 90,
    env: dict[str, str] | None = None,
    argv: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the program at ``path`` with ``argv`` in ``cwd``; killed after ``timeout`` seconds (the test then fails)."""
    return subprocess.run(
        [sys.executable, str(path), *argv],
        cwd=cwd,
        env=program_environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def result_of(run: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a program printed on its one ``RESULT`` line."""
    assert run.returncode == 0, f"exit status {run.returncode}\n{run.stdout}\n{run.stderr}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0].removeprefix("RESULT "))
