"""Process workers are forked from conc-ml's fork server, which has imported their modules once.

Each test runs a small program in a fresh interpreter, since the server is started once
per program and its preload list is fixed from then on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from conc_ml.backends._process import _forkserver

pytestmark = pytest.mark.skipif(not _forkserver._fork_server_available(), reason="no fork server on this platform")

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(script))
    env = {key: value for key, value in os.environ.items() if key != "CONC_ML_START_METHOD"}
    env.update(environment, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    return subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _result(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0][len("RESULT ") :])


# A script written without the ``if __name__ == "__main__"`` guard, as in a notebook.
_UNGUARDED = """
    import json, os
    import conc_ml

    print("top level ran", flush=True)

    def where(items):
        return [os.getpid(), os.getppid()]

    result = conc_ml.parallel(backend="process", workers=2, chunks=2)(where)([1, 2])
    print("RESULT " + json.dumps({"caller": os.getpid(), "workers": result}), flush=True)
"""


@pytest.mark.parametrize("method", ["forkserver", "loky"])
def test_workers_never_run_the_callers_script_again(tmp_path: Path, method: str) -> None:
    run = _run(_UNGUARDED, tmp_path, CONC_ML_START_METHOD=method)
    result = _result(run)
    assert run.stdout.count("top level ran") == 1, run.stdout
    assert len(result["workers"]) == 2
    parents = {parent for _, parent in result["workers"]}
    if method == "forkserver":
        # forked from the server, a child of the caller, not from the caller itself
        assert result["caller"] not in parents
        assert len(parents) == 1
    else:
        assert parents == {result["caller"]}
    assert result["caller"] not in {pid for pid, _ in result["workers"]}
    assert "leaked" not in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_the_server_imports_the_functions_modules_once_and_workers_start_with_them(tmp_path: Path) -> None:
    # ``heavy`` stands for scikit-learn: it records which process imported it.
    (tmp_path / "heavy.py").write_text("import os\nIMPORTED_BY = os.getpid()\n")
    (tmp_path / "work.py").write_text(
        textwrap.dedent(
            """
            import os
            import heavy

            def importer(items):
                return [heavy.IMPORTED_BY, os.getppid(), os.getpid()]
            """
        )
    )
    script = """
        import json, os
        import conc_ml
        from work import importer

        result = conc_ml.parallel(backend="process", workers=2, chunks=4)(importer)([1, 2, 3, 4])
        print("RESULT " + json.dumps(result), flush=True)
    """
    chunks = _result(_run(script, tmp_path))
    assert len(chunks) == 4
    for imported_by, parent, worker in chunks:
        # imported in the server (the workers' parent), not in each worker
        assert imported_by == parent
        assert imported_by != worker


def test_a_module_that_fails_to_import_does_not_break_the_pool(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('this module cannot be imported')\n")
    (tmp_path / "exits.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "fine.py").write_text("import os\nIMPORTED_BY = os.getpid()\n")
    script = """
        import json, os
        import conc_ml

        conc_ml.warm_up(modules=["boom", "exits", "fine", "not_a_module_anywhere"], workers=2, timeout=60)

        def probe(items):
            import fine
            return [fine.IMPORTED_BY == os.getppid(), sum(items)]

        def needs_boom(items):
            import boom

        result = conc_ml.parallel(backend="process", workers=2, chunks=2)(probe)([1, 2])
        print("RESULT " + json.dumps(result), flush=True)
        try:
            conc_ml.parallel(backend="process", workers=2, chunks=2)(needs_boom)([1, 2])
        except RuntimeError as error:
            print("chunk error:", error, flush=True)
    """
    run = _run(script, tmp_path)
    assert _result(run) == [[True, 1], [True, 2]]
    # The module's own error reaches the chunk that imports it.
    assert "chunk error: this module cannot be imported" in run.stdout


def test_warm_up_without_waiting_preloads_in_the_server(tmp_path: Path) -> None:
    (tmp_path / "fine.py").write_text("import os\nIMPORTED_BY = os.getpid()\n")
    script = """
        import json, os
        import conc_ml

        conc_ml.warm_up(modules=["fine"], workers=2, wait=False)

        def probe(items):
            import fine
            return [fine.IMPORTED_BY == os.getppid()]

        result = conc_ml.parallel(backend="process", workers=2, chunks=2)(probe)([1, 2])
        print("RESULT " + json.dumps(result), flush=True)
    """
    assert _result(_run(script, tmp_path)) == [[True], [True]]


def test_an_unknown_start_method_is_a_clear_error(tmp_path: Path) -> None:
    script = """
        import conc_ml
        try:
            conc_ml.parallel(backend="process", workers=2, chunks=2)(sum)([1, 2])
        except ValueError as error:
            print("RESULT " + __import__("json").dumps(str(error)), flush=True)
    """
    message = _result(_run(script, tmp_path, CONC_ML_START_METHOD="spawnish"))
    assert "CONC_ML_START_METHOD='spawnish'" in message
    assert "forkserver, loky" in message


def test_the_server_ends_with_its_caller(tmp_path: Path) -> None:
    script = """
        import json, os, psutil
        import conc_ml

        conc_ml.parallel(backend="process", workers=2, chunks=2)(sum)([1, 2])
        tree = [p.pid for p in psutil.Process().children(recursive=True)]
        print("RESULT " + json.dumps(tree), flush=True)
    """
    tree = _result(_run(script, tmp_path))
    assert tree, "the call started no process"
    processes = []
    for pid in tree:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"processes outlived their caller: {alive}"
