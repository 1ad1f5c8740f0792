"""A stream the script leaves suspended in a variable does not hold the program's exit.

``for r in f.stream(x): break`` closes the stream at once; ``s = f.stream(x)`` then
``next(s)`` keeps it open until the interpreter tears down its modules, where any import
fails ("Exception ignored ... sys.meta_path is None") after loky's exit handler has
waited for the chunks still running. conc-ml closes such a stream at exit instead, unless
another thread of the program may still read it.
"""

from __future__ import annotations

from pathlib import Path

from .programs import result_of, run_program, write_program

_LEFT_IN_A_VARIABLE = """
    import json, os, time
    import conc_ml

    def work(items):
        if items[0] == 0:
            return items
        with open(f"pid-{items[0]}", "w") as file:
            file.write(str(os.getpid()))
        time.sleep(600)
        return items

    if __name__ == "__main__":
        stream = conc_ml.parallel(backend="process", workers=2, chunks=4)(work).stream([0, 1, 2, 3])
        first = next(stream)
        print("RESULT " + json.dumps({"first": first}), flush=True)
"""


def test_a_stream_left_in_a_variable_is_closed_at_exit_and_stops_its_chunks(tmp_path: Path) -> None:
    # Without the close at exit, the program waits for the 600 s chunk: run_program's
    # timeout ends the test.
    run = run_program(write_program(tmp_path, _LEFT_IN_A_VARIABLE), cwd=tmp_path, timeout=60)
    assert result_of(run) == {"first": [0, [0]]}
    assert "Exception ignored" not in run.stderr, run.stderr
    for pid_file in tmp_path.glob("pid-*"):
        assert not Path(f"/proc/{pid_file.read_text()}").exists(), "a worker outlived the program"


_READ_BY_ANOTHER_THREAD = """
    import json, threading
    import conc_ml

    def work(items):
        return items

    if __name__ == "__main__":
        stream = conc_ml.parallel(backend="process", workers=2, chunks=8)(work).stream(list(range(8)))
        got = [next(stream)]
        release = threading.Event()

        def read_the_rest():
            release.wait(60)
            got.extend(stream)
            print("RESULT " + json.dumps(sorted(index for index, _ in got)), flush=True)

        threading.Thread(target=read_the_rest).start()
        release.set()
"""


def test_a_stream_another_thread_reads_is_not_closed_at_exit(tmp_path: Path) -> None:
    # The main thread ends while a thread of the program still reads the stream it began.
    run = run_program(write_program(tmp_path, _READ_BY_ANOTHER_THREAD), cwd=tmp_path, timeout=60)
    assert result_of(run) == list(range(8))
