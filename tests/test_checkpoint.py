"""``checkpoint=``: finished chunks are kept, a re-run of the same call runs only the others.

Each chunk that runs leaves a file named after its first item in a ``ran`` folder (passed
whole to every chunk, so it is part of the key like any other argument): the tests count
what ran, on every backend, from the caller.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from conc_ml import SerializationError, config, parallel
from conc_ml import _checkpoint as checkpoint_module
from conc_ml._checkpoint import content_digest, function_digest

N_CHUNKS = 8


def mark_ran(ran: str, first: object) -> None:
    Path(ran, f"{first}-{uuid.uuid4().hex}").touch()


def noisy_sums(rows: np.ndarray, ran: str, rng: np.random.Generator) -> float:
    mark_ran(ran, int(rows[0, 0]))
    return float(rows.sum()) + float(rng.random())


async def async_noisy_sums(rows: np.ndarray, ran: str, rng: np.random.Generator) -> float:
    mark_ran(ran, int(rows[0, 0]))
    return float(rows.sum()) + float(rng.random())


def runs(ran: Path) -> list[int]:
    """The first item of each chunk that ran since the last call, sorted; clears the record."""
    names = sorted(ran.iterdir())
    for name in names:
        name.unlink()
    return sorted(int(name.name.split("-")[0]) for name in names)


def entries(store: Path) -> list[Path]:
    return sorted(store.rglob("chunk-*.pkl"))


@pytest.fixture
def ran(tmp_path: Path) -> Path:
    folder = tmp_path / "ran"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "checkpoint"


ROWS = np.arange(N_CHUNKS * 3 * 2, dtype=np.float64).reshape(N_CHUNKS * 3, 2)
FIRSTS = [int(ROWS[3 * i, 0]) for i in range(N_CHUNKS)]


def test_a_second_call_loads_every_chunk_and_a_partial_one_runs_only_the_missing(
    backend: str, ran: Path, store: Path
) -> None:
    func = async_noisy_sums if backend == "async" else noisy_sums
    decorated = parallel(backend=backend, chunks=N_CHUNKS, workers=2, seed=7, checkpoint=store)(func)

    def call() -> Any:
        if backend == "async":
            return anyio.run(decorated, ROWS, str(ran))
        return decorated(ROWS, str(ran))

    first = call()
    assert runs(ran) == FIRSTS
    assert len(entries(store)) == N_CHUNKS
    assert call() == first
    assert runs(ran) == []
    for entry in entries(store)[::3]:
        entry.unlink()
    assert call() == first
    assert runs(ran) == [FIRSTS[0], FIRSTS[3], FIRSTS[6]]


def test_the_resumed_result_is_the_uninterrupted_and_the_sequential_one(ran: Path, store: Path) -> None:
    func = parallel(backend="thread", chunks=N_CHUNKS, workers=2, seed=3, combine="sum")(noisy_sums)
    uninterrupted = func(ROWS, str(ran))
    checkpointed = func.options(checkpoint=store)
    checkpointed(ROWS, str(ran))
    entries(store)[-1].unlink()
    runs(ran)
    assert checkpointed(ROWS, str(ran)) == uninterrupted == func.sequential(ROWS, str(ran))


def test_sequential_is_the_reference_and_neither_reads_nor_writes(ran: Path, store: Path) -> None:
    func = parallel(backend="thread", chunks=N_CHUNKS, seed=1, checkpoint=store)(noisy_sums)
    func.sequential(ROWS, str(ran))
    assert not store.exists()
    func(ROWS, str(ran))
    runs(ran)
    func.sequential(ROWS, str(ran))
    assert runs(ran) == FIRSTS


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("the split input", {"rows": ROWS + 1}),
        ("a broadcast input", {"ran_suffix": "-other"}),
        ("the seed", {"seed": 8}),
        ("the chunking", {"chunks": N_CHUNKS // 2}),
    ],
)
def test_another_input_seed_or_chunking_runs_from_scratch(
    ran: Path, store: Path, what: str, change: dict[str, Any]
) -> None:
    func = parallel(backend="thread", chunks=N_CHUNKS, seed=7, checkpoint=store)(noisy_sums)
    func(ROWS, str(ran))
    runs(ran)
    options = {k: v for k, v in change.items() if k in ("seed", "chunks")}
    rows = change.get("rows", ROWS)
    other_ran = Path(str(ran) + change.get("ran_suffix", ""))
    other_ran.mkdir(exist_ok=True)
    func.options(**options)(rows, str(other_ran))
    n_chunks = options.get("chunks", N_CHUNKS)
    assert len(runs(other_ran)) == n_chunks, f"a change of {what} must not reuse a kept chunk"


def test_a_changed_function_body_runs_from_scratch(ran: Path, store: Path) -> None:
    def body(rows: np.ndarray, ran: str) -> float:
        mark_ran(ran, int(rows[0, 0]))
        return float(rows.sum())

    first = parallel(backend="thread", chunks=N_CHUNKS, checkpoint=store)(body)
    assert first(ROWS, str(ran)) == [float(ROWS[3 * i : 3 * i + 3].sum()) for i in range(N_CHUNKS)]
    runs(ran)

    def body(rows: np.ndarray, ran: str) -> float:  # type: ignore[no-redef]  # same name, new body
        mark_ran(ran, int(rows[0, 0]))
        return float(rows.sum()) * 2

    edited = parallel(backend="thread", chunks=N_CHUNKS, checkpoint=store)(body)
    assert edited(ROWS, str(ran)) == [2 * float(ROWS[3 * i : 3 * i + 3].sum()) for i in range(N_CHUNKS)]
    assert runs(ran) == FIRSTS


SCALE = 1.0


def helper(value: float) -> float:
    return value * SCALE


def uses_helper(values: list[float]) -> float:
    return helper(sum(values))


def test_the_function_key_covers_its_helpers_and_module_data_but_not_line_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = function_digest(uses_helper)
    assert function_digest(uses_helper) == before
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 2.0)
    assert function_digest(uses_helper) != before
    monkeypatch.undo()
    moved = compile("\n\n\n" + "def uses_helper(values):\n    return helper(sum(values))\n", __file__, "exec")
    namespace: dict[str, Any] = {"__name__": __name__, "helper": helper}
    exec(moved, namespace)
    namespace["uses_helper"].__qualname__ = uses_helper.__qualname__
    namespace["uses_helper"].__globals__["SCALE"] = SCALE
    assert function_digest(namespace["uses_helper"]) == function_digest(uses_helper)


def test_data_read_through_another_module_or_its_class_is_part_of_the_key(store: Path) -> None:
    # A settings module of the user's, with a submodule, and a class of it: identified by
    # name like any other module's code, their data must still count by content.
    settings = types.ModuleType("user_settings")
    settings.nested = types.ModuleType("user_settings.nested")  # type: ignore[attr-defined]
    config_class = type("Config", (), {"SCALE": 5.0, "__module__": "user_settings"})
    namespace: dict[str, Any] = {"__name__": "user_script", "settings": settings, "Config": config_class}
    exec(
        "def scaled(values):\n    return [v * settings.SCALE * settings.nested.RATE * Config.SCALE for v in values]\n",
        namespace,
    )
    func = parallel(backend="thread", chunks=2, checkpoint=store)(namespace["scaled"])

    def call_with(scale: float, rate: float, class_scale: float) -> list[list[float]]:
        settings.SCALE = scale  # type: ignore[attr-defined]
        settings.nested.RATE = rate  # type: ignore[attr-defined]
        config_class.SCALE = class_scale  # type: ignore[attr-defined]
        result: list[list[float]] = func([1.0, 2.0])
        assert result == [[scale * rate * class_scale], [2 * scale * rate * class_scale]], "a stale result"
        return result

    call_with(2.0, 1.0, 5.0)
    call_with(3.0, 1.0, 5.0)
    call_with(3.0, 0.5, 5.0)
    call_with(3.0, 0.5, 7.0)
    assert len(entries(store)) == 2 * 4
    call_with(2.0, 1.0, 5.0)
    assert len(entries(store)) == 2 * 4, "the same values again find their entries"


def test_the_standard_librarys_process_state_does_not_change_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def reads_the_environment(values: list[str]) -> list[str]:
        return [os.environ.get(v, "") for v in values]

    before = function_digest(reads_the_environment)
    monkeypatch.setenv("SLURM_JOB_ID", "a-resubmitted-job")
    assert function_digest(reads_the_environment) == before


def test_content_digest_reads_array_content_not_identity() -> None:
    data = np.arange(1000.0)
    assert content_digest(data) == content_digest(data.copy())
    assert content_digest(data) != content_digest(data[::-1].copy())
    assert content_digest(np.asfortranarray(data.reshape(10, 100))) == content_digest(data.reshape(10, 100))
    assert content_digest(data.reshape(10, 100)) != content_digest(data.reshape(100, 10))
    assert content_digest(data) != content_digest(data.astype(np.float32))


def test_set_arguments_have_the_same_key_in_another_process() -> None:
    value = {"alpha", "beta", "gamma", "delta"}
    script = f"from conc_ml._checkpoint import content_digest; print(content_digest({value!r}).hex())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert other.stdout.strip() == content_digest(value).hex(), other.stderr


def test_a_corrupt_entry_runs_again_with_a_warning(ran: Path, store: Path) -> None:
    func = parallel(backend="thread", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)
    first = func(ROWS, str(ran))
    runs(ran)
    kept = entries(store)
    kept[1].write_bytes(kept[1].read_bytes()[:-10])  # truncated
    kept[4].write_bytes(b"not a pickle at all")
    with pytest.warns(RuntimeWarning, match="checkpoint entry .* is unusable") as warned:
        assert func(ROWS, str(ran)) == first
    assert len(warned) == 2
    assert {w.filename for w in warned} == {__file__}, "the warning names the caller's line"
    assert runs(ran) == [FIRSTS[1], FIRSTS[4]]
    assert len(entries(store)) == N_CHUNKS


def test_a_writer_that_dies_before_the_rename_leaves_no_entry(
    ran: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    func = parallel(backend="sequential", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)

    def die(source: str, target: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        func(ROWS, str(ran))
    monkeypatch.undo()
    assert entries(store) == []
    assert [p.name for p in store.rglob("*") if p.is_file()] == ["call.json"]


def test_temporary_files_of_a_dead_writer_are_removed(ran: Path, store: Path) -> None:
    func = parallel(backend="sequential", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)
    func(ROWS, str(ran))
    folder = entries(store)[0].parent
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60, check=True
    )
    orphan = folder / f".tmp-{int(dead.stdout)}-abc"
    orphan.write_bytes(b"half written")
    alive = folder / f".tmp-{os.getpid()}-abc"
    alive.write_bytes(b"being written")
    func(ROWS, str(ran))
    assert not orphan.exists()
    assert alive.exists()


def test_a_folder_that_cannot_be_created_fails_before_any_chunk_runs(
    ran: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    in_a_file = tmp_path / "a-file"
    in_a_file.write_text("not a folder")
    for store in (in_a_file, in_a_file / "runs"):
        func = parallel(backend="sequential", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)
        with pytest.raises(NotADirectoryError, match=r"checkpoint folder .* cannot keep results: .* No chunk ran"):
            func(ROWS, str(ran))
        assert runs(ran) == []
    assert [str(w.message) for w in recwarn] == []


def test_a_read_only_checkpoint_resumes_and_refuses_only_a_chunk_that_must_run(
    ran: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    func = parallel(backend="sequential", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)
    first = func(ROWS, str(ran))
    runs(ran)

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EROFS, "Read-only file system", str(kwargs.get("dir")))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", read_only)
    assert func(ROWS, str(ran)) == first
    assert runs(ran) == []
    entries(store)[-1].unlink()
    with pytest.raises(PermissionError, match=r"cannot keep results: Read-only file system .*chunk 7 was next"):
        func(ROWS, str(ran))
    assert runs(ran) == []


def test_a_write_that_fails_mid_run_warns_once_and_the_call_goes_on(
    ran: Path, store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    func = parallel(backend="sequential", chunks=N_CHUNKS, seed=2, checkpoint=store)(noisy_sums)
    expected = func.sequential(ROWS, str(ran))
    runs(ran)

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", disk_full)
    with pytest.warns(RuntimeWarning, match="could not be kept .* the call goes on") as warned:
        assert func(ROWS, str(ran)) == expected
    assert len([w for w in warned if "could not be kept" in str(w.message)]) == 1
    assert warned[0].filename == __file__
    assert f"{N_CHUNKS} finished chunk(s) could not be written" in caplog.text
    assert runs(ran) == FIRSTS
    assert entries(store) == []
    assert [p.name for p in store.rglob("*") if p.is_file()] == ["call.json"]


def test_stream_yields_resumed_chunks_too(ran: Path, store: Path) -> None:
    func = parallel(backend="process", chunks=N_CHUNKS, workers=2, seed=5, checkpoint=store)(noisy_sums)
    first = dict(func.stream(ROWS, str(ran)))
    entries(store)[0].unlink()
    runs(ran)
    assert dict(func.stream(ROWS, str(ran))) == first
    assert runs(ran) == [FIRSTS[0]]


def test_async_stream_and_pool_backends_from_async_code_resume(ran: Path, store: Path) -> None:
    async_func = parallel(backend="async", chunks=N_CHUNKS, seed=5, checkpoint=store)(async_noisy_sums)
    sync_func = parallel(backend="thread", chunks=N_CHUNKS, seed=5, checkpoint=store)(async_noisy_sums)

    async def main() -> tuple[dict[int, float], dict[int, float], Any]:
        first = {i: v async for i, v in async_func.stream(ROWS, str(ran))}
        entries(store)[2].unlink()
        runs(ran)
        again = {i: v async for i, v in async_func.stream(ROWS, str(ran))}
        return first, again, await sync_func(ROWS, str(ran))

    first, again, on_threads = anyio.run(main)
    assert again == first
    assert on_threads == [first[i] for i in range(N_CHUNKS)]
    assert runs(ran) == [FIRSTS[2]]


def test_a_log_line_and_the_progress_bar_say_how_many_were_resumed(
    ran: Path, store: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    func = parallel(backend="thread", chunks=N_CHUNKS, seed=5, checkpoint=store, progress=True)(noisy_sums)
    func(ROWS, str(ran))
    for entry in entries(store)[:3]:
        entry.unlink()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="conc_ml"):
        func(ROWS, str(ran))
    assert f"noisy_sums(): resumed 5 of {N_CHUNKS} chunks from checkpoint {store}" in caplog.text
    assert "5 resumed" in capsys.readouterr().err


def test_lazy_input_cut_by_chunk_size_resumes(ran: Path, store: Path) -> None:
    def first_items(items: list[int], ran: str) -> int:
        mark_ran(ran, items[0])
        return sum(items)

    func = parallel(backend="thread", chunk_size=3, checkpoint=store)(first_items)
    assert func(iter(range(10)), str(ran)) == [3, 12, 21, 9]
    entries(store)[1].unlink()
    runs(ran)
    assert func(iter(range(10)), str(ran)) == [3, 12, 21, 9]
    assert runs(ran) == [3]


def test_rng_with_fresh_entropy_cannot_be_resumed(ran: Path, store: Path) -> None:
    func = parallel(backend="thread", chunks=2, checkpoint=store)(noisy_sums)
    with pytest.raises(ValueError, match=r"seed=None .* checkpoint= needs a seed"):
        func(ROWS, str(ran))
    assert not store.exists()
    with config(seed=4):
        func(ROWS, str(ran))  # a seed from config() is as good


def test_an_unpicklable_argument_or_result_is_a_serialization_error(store: Path) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(SerializationError, match="checkpoint= identifies a call by the content"):
        parallel(backend="thread", chunks=2, checkpoint=store)(lambda items, lock: sum(items))([1, 2], lock)
    with pytest.raises(SerializationError, match="checkpoint= keeps each chunk's result as a pickle"):
        parallel(backend="thread", chunks=2, checkpoint=store)(lambda items: threading.Lock())([1, 2])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"retries": -1}, ValueError, "retries must be an int >= 0"),
        ({"retries": 1.5}, TypeError, "retries must be an int >= 0"),
        ({"retries": True}, TypeError, "retries must be an int >= 0"),
        ({"checkpoint": 3}, TypeError, "checkpoint must be a folder given as a str or os.PathLike"),
        ({"checkpoint": b"runs"}, TypeError, "checkpoint must be a folder given as a str or os.PathLike"),
        ({"checkpoint": ""}, ValueError, "checkpoint must name a folder"),
    ],
)
def test_bad_retries_or_checkpoint_are_refused_at_decoration(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parallel(**options)
    with pytest.raises(error, match=message):
        parallel(sum).options(**options)
    with pytest.raises(error, match=message), config(**options):
        pass


def test_options_and_config_layer_retries_and_checkpoint(store: Path) -> None:
    func = parallel(retries=1)(sum)
    assert func.resolved_options().retries == 1
    assert func.resolved_options().checkpoint is None
    with config(retries=3, checkpoint=store):
        assert func.resolved_options().retries == 3
        assert func.resolved_options().checkpoint == store
        assert func.options(retries=0, checkpoint=None).resolved_options().retries == 0
        assert func.options(retries=0, checkpoint=None).resolved_options().checkpoint is None


def test_conc_bench_rounds_run_their_chunks_instead_of_loading_the_checkpoint(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from conc_ml import parallel

        CHUNK_CALLS = []

        @parallel(backend="thread", chunks=2, workers=2, checkpoint="kept")
        def square(values):
            CHUNK_CALLS.append(values)
            return [v * v for v in values]

        def test_square():
            assert square([1, 2, 3, 4]) == [[1, 4], [9, 16]]
            assert len(CHUNK_CALLS) == 2  # the call as written, which saves its checkpoint

        def test_after_the_rounds():
            # after test_square's body: warmup 1 + rounds 3, each running the parallel path
            # and .sequential, 2 chunks each
            assert len(CHUNK_CALLS) == (1 + (1 + 3) * 2) * 2
        """
    )
    result = pytester.runpytest("--conc-bench", "--conc-bench-rounds=3", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert len(list((pytester.path / "kept").rglob("chunk-*.pkl"))) == 2


def test_each_chunk_counts_its_own_attempts_against_retries() -> None:
    from conc_ml import WorkerCrashedError
    from conc_ml._checkpoint import CallLedger
    from conc_ml._split import Chunk

    ledger = CallLedger(retries=1)
    first, second = Chunk(0, ([1],), 1), Chunk(1, ([2],), 1)
    crash = WorkerCrashedError("a worker died", chunk=0)
    assert not ledger.may_retry(ValueError("a user's error"), first)
    assert not ledger.may_retry(None, first)
    # A broken pool fails both chunks in flight: each may run once more, then neither.
    assert ledger.may_retry(crash, first)
    assert ledger.may_retry(crash, second)
    assert not ledger.may_retry(crash, first)
    assert not ledger.may_retry(crash, second)
    ledger.note_attempts(crash, first)
    assert crash.__notes__ == ["conc-ml: chunk 0 was attempted 2 time(s) (retries=1); its worker died every time"]
    assert not CallLedger(retries=0).may_retry(crash, first)


def test_a_crash_without_retries_says_how_to_have_the_chunk_run_again() -> None:
    from conc_ml import WorkerCrashedError
    from conc_ml._checkpoint import CallLedger
    from conc_ml._split import Chunk

    crash = WorkerCrashedError("a worker died", chunk=0)
    CallLedger(retries=0).note_attempts(crash, Chunk(0, ([1],), 1))
    assert len(crash.__notes__) == 1
    assert "retries=N (in @parallel, .options() or config()) runs a chunk whose worker died again" in crash.__notes__[0]
    # A message that already names retries= (a chunk lost to another call's timeout) gets no second hint.
    lost = WorkerCrashedError("chunk 0 was lost (retries= runs such a chunk again)", chunk=0)
    CallLedger(retries=0).note_attempts(lost, Chunk(0, ([1],), 1))
    assert getattr(lost, "__notes__", []) == []
