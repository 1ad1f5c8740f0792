"""Long runs survive: a killed caller resumes from its finished chunks, a dead worker's chunk runs again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import parse_result, scenario_environment

SCRIPT = Path(__file__).with_name("long_run_scenarios.py")
#: bound on one scenario process (a busy machine starts workers slowly)
SCENARIO_TIMEOUT_S = 120
N_CHUNKS = 8


def run(folder: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Output goes through files, not pipes: the workers of a killed caller inherit them, and
    # reading a pipe would wait for those orphans to end.
    with (folder / f"{name}.out").open("w+") as out, (folder / f"{name}.err").open("w+") as err:
        completed = subprocess.run(
            [sys.executable, str(SCRIPT), name, *args],
            env=scenario_environment(folder),
            stdout=out,
            stderr=err,
            text=True,
            timeout=SCENARIO_TIMEOUT_S,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(completed.args, completed.returncode, out.read(), err.read())


def _living(pids: list[int]) -> list[psutil.Process]:
    living = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                living.append(process)
        except psutil.NoSuchProcess:
            pass
    return living


def _end_orphans(pids: list[int]) -> None:
    """End what the killed caller left: its idle workers and fork server, then its resource tracker.

    Idle loky workers outlive a caller killed with SIGKILL until their idle timeout: not
    left to a shared machine. The resource tracker, ended last, frees the caller's
    semaphores once every other holder of its pipe is gone.
    """
    trackers = [p for p in _living(pids) if any("resource_tracker" in part for part in p.cmdline())]
    others = [p for p in _living(pids) if p not in trackers]
    for process in others:
        process.terminate()
    psutil.wait_procs(others, timeout=10)
    _, alive = psutil.wait_procs(trackers, timeout=10)
    for process in [*alive, *_living([p.pid for p in others])]:
        process.kill()


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("killed")
    store, ran, fresh = folder / "store", folder / "ran", folder / "fresh"
    ran.mkdir()
    fresh.mkdir()
    pids = folder / "pids.json"
    killed = run(folder, "killed_caller", str(store), str(ran), str(pids))
    assert killed.returncode == -9, f"the caller should have been killed:\n{killed.stdout}\n{killed.stderr}"
    _end_orphans(json.loads(pids.read_text()))
    outcome = {"kept": len(list(store.rglob("chunk-*.pkl")))}
    for path in ran.iterdir():
        path.unlink()
    again = run(folder, "resumed", str(store), str(ran), str(fresh))
    assert again.returncode == 0, f"the re-run failed:\n{again.stdout}\n{again.stderr}"
    return {**outcome, **parse_result(again.stdout)}


def test_a_caller_killed_after_five_chunks_kept_exactly_those(killed_then_resumed: dict[str, Any]) -> None:
    assert killed_then_resumed["kept"] == 5


def test_the_re_run_runs_only_the_three_others(killed_then_resumed: dict[str, Any]) -> None:
    assert len(killed_then_resumed["ran"]) == N_CHUNKS - 5


def test_the_resumed_result_is_the_uninterrupted_and_the_sequential_one(killed_then_resumed: dict[str, Any]) -> None:
    result = killed_then_resumed["result"]
    assert result == killed_then_resumed["uninterrupted"]
    assert result == killed_then_resumed["sequential"]


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("crashes")
    completed = run(folder, "crashes", str(folder / "died"))
    assert completed.returncode == 0, f"scenario failed:\n{completed.stdout}\n{completed.stderr}"
    return parse_result(completed.stdout)


def test_a_worker_killed_once_with_retries_1_gives_the_right_result(crashes: dict[str, Any]) -> None:
    assert crashes["died_once"], "the first attempt should have killed its worker"
    assert crashes["retried"] == [1, 5, 9, 13]


def test_a_chunk_in_flight_when_the_pool_broke_is_run_again(crashes: dict[str, Any]) -> None:
    assert crashes["with_neighbour"] == [1, 5]
    assert crashes["neighbour_attempts"] == 2


def test_spent_retries_raise_worker_crashed_error_saying_how_many_attempts(crashes: dict[str, Any]) -> None:
    exhausted = crashes["exhausted"]
    assert "with exit code 3" in exhausted["message"]
    attempts = [note for note in exhausted["notes"] if "was attempted" in note]
    assert len(attempts) == 1
    assert "attempted 3 time(s) (retries=2)" in attempts[0]
    assert crashes["next_call"] == [1, 5, 9, 13]


def test_a_crash_without_retries_says_that_retries_would_run_it_again(crashes: dict[str, Any]) -> None:
    no_retries = crashes["no_retries"]
    assert "with exit code 3" in no_retries["message"]
    hints = [note for note in no_retries["notes"] if "retries=N" in note]
    assert len(hints) == 1
    assert "runs a chunk whose worker died again" in hints[0]
