"""The types users see: mypy reveals what ``tests/typing/*_reveals.py`` says it must.

Each case file holds ``reveal_type(expr)  # revealed: TYPE`` lines (``TYPE`` as mypy
writes it, less the ``builtins.`` and ``conc_ml._parallel.`` prefixes); mypy runs once over
it with the project's strict settings, and every revealed type must be the one written,
with no other error (``assert_type`` lines fail as errors when they do not hold).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "tests" / "typing").glob("*_reveals.py"))
_EXPECTED = re.compile(r"reveal_type\(.*#\s*revealed:\s*(?P<type>.+?)\s*$")
#: prefixes left out of the expected types, so that they read as the code does
_PREFIXES = re.compile(r"\b(?:builtins|conc_ml\._parallel)\.")
_REPORTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>note|error): (?P<message>.*)$")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_revealed_types_are_the_expected_ones(case: Path) -> None:
    api = pytest.importorskip("mypy.api")
    expected = {
        number: match["type"]
        for number, text in enumerate(case.read_text(encoding="utf-8").splitlines(), start=1)
        if (match := _EXPECTED.search(text)) is not None
    }
    assert expected, f"{case.name} reveals nothing"
    stdout, stderr, _ = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", "--show-absolute-path", str(case)]
    )
    revealed: dict[int, str] = {}
    errors = []
    for text in stdout.splitlines():
        match = _REPORTED.match(text)
        if match is None or Path(match["file"]) != case:
            continue
        line, message = int(match["line"]), match["message"]
        if match["kind"] == "note" and message.startswith("Revealed type is "):
            revealed[line] = _PREFIXES.sub("", message.removeprefix("Revealed type is ").strip('"'))
        elif match["kind"] == "error":
            errors.append(text)
    assert not stderr, stderr
    assert not errors, "\n".join(errors)
    wrong = {
        f"line {line}": (f"expected {expected[line]}", f"revealed {revealed.get(line)}")
        for line in expected
        if revealed.get(line) != expected[line]
    }
    assert not wrong, wrong
