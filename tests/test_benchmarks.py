"""The benchmark suite's own plumbing: options, memory accounting, the table (nothing timed here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import memory
from benchmarks.__main__ import _parse
from benchmarks.report import markdown_table
from benchmarks.workloads import RUNNERS, WORKLOADS, Settings, checksum, make_data


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--workloads", "train,nope"], "unknown workload"),
        (["--runners", "dask"], "unknown runner"),
    ],
)
def test_bad_options_are_refused_with_what_is_allowed(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parse(argv)
    assert message in capsys.readouterr().err


def test_the_large_array_workloads_give_the_loops_result_through_conc_ml() -> None:
    settings = Settings(workers=2, medians_mb=2, medians_tasks=8, medians_chunks=2, results_count=2, results_mb=2)
    for workload in ("medians", "results"):
        data = make_data(workload, settings)
        expected = checksum(workload, RUNNERS["sequential"](workload, settings).run(data), data)
        runner = RUNNERS["conc-ml"](workload, settings)
        runner.warm = False
        runner.prepare()
        runner.start(data)
        try:
            assert checksum(workload, runner.run(data), data) == expected, workload
        finally:
            runner.close()


def test_every_workload_names_known_runners_and_starts_with_the_loop() -> None:
    for runners in WORKLOADS.values():
        assert runners[0] == "sequential"
        assert set(runners) <= set(RUNNERS)


def test_shm_files_count_by_the_pid_in_their_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memory, "SHM_FOLDER", str(tmp_path))
    pid = os.getpid()
    (tmp_path / f"conc-ml-{pid}-abc").write_bytes(b"x" * 8192)
    (tmp_path / f"joblib_memmapping_folder_{pid}_x").mkdir()
    (tmp_path / f"joblib_memmapping_folder_{pid}_x" / "a.pkl").write_bytes(b"y" * 4096)
    (tmp_path / f"conc-ml-{pid}1-other").write_bytes(b"z" * 4096)
    assert memory.shm_bytes_of([pid]) >= 8192 + 4096
    assert memory.shm_bytes_of([pid]) < 8192 + 4096 + 4096
    assert memory.shm_bytes_of([pid + 7]) == 0


def test_the_small_workloads_give_the_loops_result_and_the_table_shows_parity() -> None:
    settings = Settings(workers=1, tiny_items=50, broadcast_mb=1, broadcast_tasks=4)
    rows = []
    for workload in ("tiny", "broadcast"):
        data = make_data(workload, settings)
        result = RUNNERS["sequential"](workload, settings).run(data)
        rows.append(
            {
                "workload": workload,
                "label": "sequential",
                "median_s": 0.5,
                "first_s": 1.5,
                "speedup": 1.0,
                "first_speedup": 0.33,
                "peak_memory_mib": 100.0,
                "memory_ratio": 1.0,
                "parity": checksum(workload, result, data) == checksum(workload, list(result), data),
            }
        )
    table = markdown_table(rows, settings)
    assert "**50 tiny items (x*x)** (1 workers)" in table
    assert "| sequential | 500 ms | 1.00x | 1.50 s | 0.33x | 100 MiB | 1.00x | yes |" in table


def test_the_checkpoint_benchmark_runs_small_and_reports_the_same_result(tmp_path: Path) -> None:
    from benchmarks import checkpoint

    text = checkpoint.main(
        ["--chunks", "4", "--result-mb", "0.01", "--repeats", "1", "--rounds", "1", "--folder", str(tmp_path)]
    )
    assert "| 4 chunks x 0.01 MB results, process, 2 workers |" in text
    assert text.splitlines()[2].endswith("| yes |")
    assert list(tmp_path.iterdir()) == [], "the benchmark removes its checkpoints"


def test_the_checkpoint_benchmark_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import checkpoint

    with pytest.raises(SystemExit):
        checkpoint.main(["--chunks", "0"])
    assert "--chunks must be >= 1" in capsys.readouterr().err


def test_the_process_tree_benchmark_names_each_process_and_the_shared_copy() -> None:
    import subprocess
    import sys

    # In its own process: the tree it lists is then the call's alone, not the test session's.
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.process_tree", "--mb", "4", "--calls", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in completed.stdout.splitlines()[2:]]
    roles = [role for role, _ in rows]
    mib = [float(value.removesuffix(" MiB").replace(",", "")) for _, value in rows]
    assert roles[0] == "caller"
    assert roles.count("worker") == 2
    assert "fork server" in roles
    assert roles[-2:] == ["/dev/shm files of the tree", "total"]
    assert mib[-2] >= 3.7, "the 4 MB array's one copy in shared memory (3.8 MiB)"
    assert mib[-1] == pytest.approx(sum(mib[:-1]), abs=0.2)
