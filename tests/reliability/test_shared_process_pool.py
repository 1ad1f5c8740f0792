"""``workers`` caps the process workers of the whole program, whichever threads and awaits call.

loky keeps its reusable executor per thread: each calling thread (and each concurrent
``await``, which runs in a worker thread) would get a pool of its own.
"""

from __future__ import annotations

from pathlib import Path

from .programs import result_of, run_program, write_program

_PROGRAM = """
    import json, os, threading
    import anyio
    import conc_ml

    def pids(items):
        return [os.getpid()]

    async def async_pids(items):
        return [os.getpid()]

    seen = set()
    lock = threading.Lock()
    start = threading.Barrier(4, timeout=60)

    def caller():
        start.wait()
        for _ in range(3):
            result = conc_ml.parallel(backend="process", workers=2, chunks=4)(pids)(list(range(8)))
            with lock:
                seen.update(pid for chunk in result for pid in chunk)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    from_threads = len(seen)

    awaited = conc_ml.parallel(backend="process", workers=2, chunks=4)(async_pids)

    async def main():
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(collect)

    async def collect():
        result = await awaited(list(range(8)))
        with lock:
            seen.update(pid for chunk in result for pid in chunk)

    anyio.run(main)
    print("RESULT " + json.dumps({"from_threads": from_threads, "in_all": len(seen)}), flush=True)
"""


def test_threads_and_concurrent_awaits_share_one_pool_of_workers(tmp_path: Path) -> None:
    program = write_program(tmp_path, _PROGRAM)
    result = result_of(run_program(program, cwd=tmp_path))
    # Four threads and five awaits, each asking for two workers: at most two processes in all
    # (a pool per thread or per await would show up to eight). Fewer than two is possible: on a
    # loaded machine one worker can take every chunk before the second one starts.
    assert 1 <= result["from_threads"] <= 2
    assert result["from_threads"] <= result["in_all"] <= 2


_BESIDE_A_TIMEOUT = """
    import json, os, sys, threading, time
    import conc_ml

    marker = sys.argv[1]

    def waits_until_stopped(items):
        with open(marker, "w") as file:
            file.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return items

    outcome = {}

    def beside():
        try:
            conc_ml.parallel(backend="process", workers=2, chunks=1)(waits_until_stopped)([1])
            outcome["beside"] = "finished"
        except conc_ml.WorkerCrashedError as error:
            outcome["beside"] = str(error)

    thread = threading.Thread(target=beside)
    thread.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        conc_ml.parallel(backend="process", workers=2, chunks=1, timeout=0.5)(waits_until_stopped)([2])
    except conc_ml.ChunkTimeoutError:
        outcome["timed_out"] = True
    thread.join(timeout=60)
    outcome["next"] = conc_ml.parallel(backend="process", workers=2, chunks=2)(len)([1, 2])
    print("RESULT " + json.dumps(outcome), flush=True)
"""


def test_a_call_whose_workers_another_call_stopped_gets_a_worker_crashed_error(tmp_path: Path) -> None:
    # Stopping a running chunk means stopping the pool's workers, with the chunks of any
    # other call sharing the pool: that call must get a conc-ml error saying so.
    program = write_program(tmp_path, _BESIDE_A_TIMEOUT)
    outcome = result_of(run_program(program, cwd=tmp_path, timeout=120, argv=[str(tmp_path / "started")]))
    assert outcome["timed_out"] is True
    assert "another call sharing the process pool timed out or was interrupted" in outcome["beside"]
    assert outcome["next"] == [1, 1]


# A call abandoned on its thread (an ``await`` cancelled by Ctrl-C under trio) gives the
# pool back there while the main thread exits. This one starts giving it back once the
# interpreter's exit has begun, and takes a moment, as stopping the workers does.
_GIVEN_BACK_AT_EXIT = """
    import sys, threading, time
    import conc_ml
    from conc_ml.backends._process._backend import _shared_pool

    conc_ml.parallel(backend="process", workers=2, chunks=2)(len)([1, 2])
    lent = threading.Event()

    def given_back_at_exit():
        _shared_pool.lend(2)
        lent.set()
        while not threading._SHUTTING_DOWN:  # set as the interpreter's exit begins
            time.sleep(0.01)
        time.sleep(0.3)
        with open(sys.argv[1], "w") as marker:
            marker.write("given back")
        _shared_pool.give_back()

    threading.Thread(target=given_back_at_exit, daemon=True).start()
    lent.wait(60)
"""


def test_the_exit_lets_a_call_on_another_thread_give_the_pool_back(tmp_path: Path) -> None:
    # Frozen half-way by the end of the interpreter, it left a semaphore unlinked but not
    # unregistered, and the resource tracker printed a "leaked semlock" warning at exit.
    program = write_program(tmp_path, _GIVEN_BACK_AT_EXIT)
    marker = tmp_path / "given-back"
    run = run_program(program, cwd=tmp_path, timeout=120, argv=[str(marker)])
    assert run.returncode == 0, run.stderr
    assert marker.read_text() == "given back"
    assert run.stderr == ""
