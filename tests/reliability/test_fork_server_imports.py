"""Process workers import exactly what the caller would, never a same-named file of the working directory.

The fork server (and so every worker forked from it) must use the caller's ``sys.path``:
a ``helpers.py`` or a ``threadpoolctl.py`` that lies in the directory the program is run
from, but not in the script's, must neither be run nor used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conc_ml.backends._process import _forkserver

from .programs import program_environment, result_of, run_program, write_program

pytestmark = pytest.mark.skipif(not _forkserver._fork_server_available(), reason="no fork server on this platform")

_PROGRAM = """
    import json
    import conc_ml
    import helpers

    def work(items):
        return [helpers.double(i) for i in items]

    f = conc_ml.parallel(backend="process", workers=2, chunks=2)(work)
    print("RESULT " + json.dumps({"sequential": f.sequential([1, 2, 3, 4]), "process": f([1, 2, 3, 4])}), flush=True)
"""


def test_workers_import_the_scripts_module_not_the_working_directorys(tmp_path: Path) -> None:
    script = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    write_program(script, "def double(x):\n    return 2 * x\n", "helpers.py")
    write_program(elsewhere, "def double(x):\n    return 1000 * x\n", "helpers.py")
    # Executed if anything imports threadpoolctl with the working directory first on the path.
    write_program(elsewhere, "import sys\nsys.stderr.write('FOREIGN CODE RAN\\n')\n", "threadpoolctl.py")
    program = write_program(script, _PROGRAM)
    run = run_program(program, cwd=elsewhere)
    assert result_of(run) == {"sequential": [[2, 4], [6, 8]], "process": [[2, 4], [6, 8]]}
    assert "FOREIGN CODE RAN" not in run.stderr, run.stderr


_TEST_MODULE = """
    import conc_ml
    import helpers

    def work(items):
        return [helpers.double(i) for i in items]

    def test_work():
        f = conc_ml.parallel(backend="process", workers=2, chunks=2)(work)
        assert f([1, 2, 3, 4]) == f.sequential([1, 2, 3, 4]) == [[2, 4], [6, 8]]
"""


@pytest.mark.parametrize("way", ["python -m", "python -m pytest", "pytest", "exec"])
def test_workers_import_what_the_caller_does_however_python_is_started(tmp_path: Path, way: str) -> None:
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    write_program(project, "def double(x):\n    return 2 * x\n", "helpers.py")
    write_program(elsewhere, "def double(x):\n    return 1000 * x\n", "helpers.py")
    program = write_program(project, _PROGRAM)
    test_file = write_program(project, _TEST_MODULE, "test_work.py")
    pytest_script = str(Path(sys.executable).with_name("pytest"))
    commands = {
        # The working directory is the caller's first path entry: the project's folder here.
        "python -m": ([sys.executable, "-m", "program"], project),
        # pytest puts the test file's folder first; python -m puts the working directory second.
        "python -m pytest": (
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
            elsewhere,
        ),
        "pytest": ([pytest_script, "-q", "-p", "no:cacheprovider", str(test_file)], elsewhere),
        # A notebook-style run: the working directory ('') is on the path, after the project.
        "exec": (
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(project)!r}); exec(open({str(program)!r}).read())",
            ],
            elsewhere,
        ),
    }
    command, cwd = commands[way]
    run = subprocess.run(
        command, cwd=cwd, env=program_environment(), capture_output=True, text=True, timeout=120, check=False
    )
    if way.endswith("pytest"):
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        assert result_of(run) == {"sequential": [[2, 4], [6, 8]], "process": [[2, 4], [6, 8]]}
