"""The JSON document of a run, and saved runs under ``.conc_bench/`` to compare against."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import Comparison
from .stats import Measurement

__all__ = [
    "STORAGE_DIR",
    "commit_info",
    "compare_rows",
    "document",
    "load_saved",
    "machine_info",
    "save_run",
    "saved_path",
    "valid_run_name",
    "write_json",
]

STORAGE_DIR = ".conc_bench"
#: the version of the JSON layout; bumped when a field changes meaning
#: (2: pytest-benchmark's ``stats``/``group``/``extra_info`` per timed row, raw times, untimed rows apart)
SCHEMA_VERSION = 2

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def valid_run_name(name: str) -> bool:
    """Whether ``name`` can name a saved run (letters, digits, ``.``, ``_``, ``-``; no path)."""
    return bool(_RUN_NAME.match(name)) and len(name) <= 100


def machine_info() -> dict[str, Any]:
    """What the figures depend on: host, CPU counts, Python, and the main libraries' versions."""
    from conc_ml import __version__
    from conc_ml._system import usable_cpus

    uname = platform.uname()
    info: dict[str, Any] = {
        "node": uname.node,
        "processor": uname.processor or uname.machine,
        "machine": uname.machine,
        "system": uname.system,
        "release": uname.release,
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "cpu": {"count": os.cpu_count(), "usable": usable_cpus()},
        "conc_ml_version": __version__,
    }
    try:
        import numpy

        info["numpy_version"] = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return info


def commit_info(directory: Path) -> dict[str, Any]:
    """The git commit of ``directory`` and whether the tree has uncommitted changes.

    :returns: ``{"id": None, "dirty": None, ...}`` outside a git checkout or without git.
    """
    info: dict[str, Any] = {"id": None, "dirty": None, "branch": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return info
    info["id"] = commit
    status = git("status", "--porcelain", "--untracked-files=no")
    info["dirty"] = None if status is None else bool(status)
    info["branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    return info


def document(rows: Sequence[Measurement], *, settings: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The JSON document of a run: machine, commit, settings and one entry per row.

    Laid out as pytest-benchmark's files, so that ``pytest-benchmark compare`` reads it:
    ``benchmarks`` holds the timed rows, each with a ``stats`` entry of the parallel run;
    rows that were only checked for parity (no times) are under ``untimed``.
    """
    return {
        "version": SCHEMA_VERSION,
        "datetime": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine_info": machine_info(),
        "commit_info": commit_info(root),
        "settings": dict(settings),
        "benchmarks": [row.as_dict() for row in rows if row.speedup is not None],
        "untimed": [row.as_dict() for row in rows if row.speedup is None],
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path``, creating its folder; a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def saved_path(root: Path, name: str) -> Path:
    """Where the run saved as ``name`` lives."""
    return root / STORAGE_DIR / f"{name}.json"


def save_run(root: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Save a run's document as ``name`` under ``.conc_bench/`` (git-ignored by its own file)."""
    folder = root / STORAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by pytest --conc-bench-save; saved runs are machine-specific\n*\n")
    path = saved_path(root, name)
    write_json(path, data)
    return path


def saved_names(root: Path) -> list[str]:
    """Names of the runs saved under ``root``."""
    folder = root / STORAGE_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def load_saved(root: Path, name: str) -> list[Measurement]:
    """The rows of the run saved as ``name``.

    :raises FileNotFoundError: if no run was saved under that name.
    :raises ValueError: if the file is not a saved conc-bench run.
    """
    path = saved_path(root, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [*data["benchmarks"], *data.get("untimed", [])]
        return [Measurement.from_dict(entry) for entry in entries]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a saved conc-bench run: {error}") from error


def compare_rows(rows: Sequence[Measurement], before: Sequence[Measurement]) -> list[Comparison]:
    """Pair each timed row of this run with the row of ``before`` that has the same key."""
    earlier = {row.key(): row for row in before if row.speedup is not None}
    return [Comparison(row, earlier[row.key()]) for row in rows if row.speedup is not None and row.key() in earlier]
