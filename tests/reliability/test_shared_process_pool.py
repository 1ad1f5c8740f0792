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
    # Four threads and five awaits, each asking for two workers: two processes in all.
    assert result == {"from_threads": 2, "in_all": 2}
