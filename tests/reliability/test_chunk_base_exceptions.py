"""``sys.exit()`` and other ``BaseException``\\ s in a chunk come back as errors of the call, with the chunk's note.

``sys.exit(3)`` in a chunk used to end the caller's program with status 3 and no word on
the process and thread backends. ``KeyboardInterrupt`` raised in a process worker,
``GeneratorExit``, a user's own ``BaseException`` subclass and a ``MemoryError`` met while
sending a result back came back without the note naming the chunk (and, from a process,
without the remote traceback).
"""

from __future__ import annotations

from typing import Any

import pytest

from .programs import result_of, run_program, write_program

_PROGRAM = """
    import json, sys
    import conc_ml

    class Custom(BaseException):
        pass

    class TooLargeToSend:
        def __reduce__(self):
            raise MemoryError("the result does not fit in memory once pickled")

    def fail(items, how):
        if 1 in items:
            if how == "exit":
                sys.exit(3)
            if how == "keyboard":
                raise KeyboardInterrupt("raised by the chunk")
            if how == "generator":
                raise GeneratorExit("raised by the chunk")
            if how == "custom":
                raise Custom("raised by the chunk")
            if how == "huge":
                return TooLargeToSend()
        return items

    cases = [(b, how) for b in ("sequential", "thread", "process") for how in ("exit", "generator", "custom")]
    cases += [("process", "keyboard"), ("process", "huge")]
    outcomes = {}
    for backend, how in cases:
        func = conc_ml.parallel(backend=backend, workers=2, chunks=2)(fail)
        try:
            func([0, 1], how)
            outcomes[f"{backend}-{how}"] = None
        except BaseException as error:
            outcomes[f"{backend}-{how}"] = {
                "type": type(error).__name__,
                "message": str(error),
                "notes": getattr(error, "__notes__", []),
                "cause": type(error.__cause__).__name__,
                "cause_of_cause": type(getattr(error.__cause__, "__cause__", None)).__name__,
                "code": getattr(error, "code", None),
            }
    after = conc_ml.parallel(backend="process", workers=2, chunks=2)(fail)([0, 1], "none")
    print("RESULT " + json.dumps({"outcomes": outcomes, "after": after}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("base-exceptions")
    result = result_of(run_program(write_program(folder, _PROGRAM), cwd=folder))
    # The program went on to the end: no chunk ended it.
    assert result["after"] == [[0], [1]]
    return result["outcomes"]  # type: ignore[no-any-return]


def _noted(outcome: dict[str, Any], backend: str) -> bool:
    return any(f"chunk 1 of 2 (1 items) of fail() on backend {backend!r}" in note for note in outcome["notes"])


@pytest.mark.parametrize("backend", ["sequential", "thread", "process"])
def test_sys_exit_in_a_chunk_is_a_chunk_exit_error_not_the_end_of_the_program(
    outcomes: dict[str, Any], backend: str
) -> None:
    outcome = outcomes[f"{backend}-exit"]
    assert outcome["type"] == "ChunkExitError"
    assert outcome["code"] == 3
    assert "called sys.exit(3)" in outcome["message"]
    assert _noted(outcome, backend)
    assert outcome["cause"] == "SystemExit"
    if backend == "process":
        assert outcome["cause_of_cause"] == "RemoteTraceback"


@pytest.mark.parametrize("backend", ["sequential", "thread", "process"])
@pytest.mark.parametrize(("how", "kind"), [("generator", "GeneratorExit"), ("custom", "Custom")])
def test_other_base_exceptions_come_back_as_their_own_type_with_the_note(
    outcomes: dict[str, Any], backend: str, how: str, kind: str
) -> None:
    outcome = outcomes[f"{backend}-{how}"]
    assert outcome["type"] == kind
    assert _noted(outcome, backend)
    if backend == "process":
        assert outcome["cause"] == "RemoteTraceback"


def test_keyboard_interrupt_raised_in_a_process_chunk_comes_back_with_the_note(outcomes: dict[str, Any]) -> None:
    outcome = outcomes["process-keyboard"]
    assert outcome["type"] == "KeyboardInterrupt"
    assert _noted(outcome, "process")
    assert outcome["cause"] == "RemoteTraceback"


def test_an_error_sending_a_result_back_names_the_chunk(outcomes: dict[str, Any]) -> None:
    outcome = outcomes["process-huge"]
    assert outcome["type"] == "MemoryError"
    assert any("chunk 1 of 2 (1 items) of fail() or its result was sent" in note for note in outcome["notes"])
    assert "Traceback" in outcome["cause"]  # the worker's traceback, as loky sends it
