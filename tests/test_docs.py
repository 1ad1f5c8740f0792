"""The documentation cannot rot: every code block runs, and the site builds without warnings.

Each page of ``docs/`` (and the README) is one test. Its code blocks run in order in one
namespace, as a reader would paste them into one session:

- ``python`` blocks are executed;
- ``pycon`` blocks (``>>>`` prompts with the output below) run as doctests, so the output
  shown is the output produced;
- ``console``, ``text``, ``toml``, ``ini`` and ``json`` blocks are shown, not run;
- a block without a language is an error, so that nothing escapes by accident.

An HTML comment on the line before a block changes that, with a reason a reader can see
in the page's source::

    <!-- docs-test: skip because it needs a GPU -->
    <!-- docs-test: requires conc_ml.io_bound -->

The second form runs the block as soon as the name can be imported, so documentation
written ahead of a feature starts being checked the day the feature lands.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import importlib.util
import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts), ROOT / "README.md"]

#: modules whose every name in ``__all__`` the reference must document (once they exist)
PUBLIC_MODULES = ("conc_ml", "conc_ml.testing", "conc_ml.testing.strategies")
EXECUTED = {"python", "pycon"}
#: the build ``make docs`` runs: warnings are errors
SPHINX = (sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html")
SHOWN = {"console", "text", "toml", "ini", "json", "yaml"}
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<verb>skip|requires)\s+(?P<argument>.+?)\s*-->")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a page."""

    page: Path
    line: int  # 1-based line of the block's first code line in the page
    language: str
    code: str
    skip_reason: str | None


def _display(page: Path) -> Path:
    return page.relative_to(ROOT) if page.is_relative_to(ROOT) else page


def _docs_conf() -> Any:
    # The Sphinx configuration decides which "requires" blocks the built pages show; the
    # tests use the same rule, so that the two never disagree on what is skipped.
    spec = importlib.util.spec_from_file_location("_conc_ml_docs_conf", DOCS / "conf.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_importable: Callable[[str], bool] = _docs_conf().importable


def _skip_reason(marker: str | None) -> str | None:
    if marker is None:
        return None
    match = _MARKER.fullmatch(marker.strip())
    if match is None:
        return None
    if match["verb"] == "skip":
        return match["argument"]
    name = match["argument"]
    return None if _importable(name) else f"needs {name}, which cannot be imported yet"


def code_blocks(page: Path, text: str | None = None, first_line: int = 0) -> list[CodeBlock]:
    """The fenced blocks of ``page``, including those nested in MyST directives.

    :param page: the Markdown file.
    :param text: its text (or a directive's body), read from ``page`` when ``None``.
    :param first_line: 0-based line of ``text`` in the page.
    :raises ValueError: on a block without a language, or a language this test does not know.
    """
    if text is None:
        text = page.read_text(encoding="utf-8")
    blocks: list[CodeBlock] = []
    previous_html: str | None = None
    for token in MarkdownIt("commonmark").parse(text):
        if token.type == "html_block":
            previous_html = token.content
            continue
        if token.type != "fence":
            previous_html = None
            continue
        assert token.map is not None
        start = first_line + token.map[0] + 1  # the line after the opening fence, 0-based
        info = token.info.strip()
        language = info.split()[0] if info else ""
        where = f"{_display(page)}:{start + 1}"
        if language.startswith("{"):
            # A MyST directive: its body may hold blocks of its own (a note, a tab...).
            blocks += code_blocks(page, token.content, start)
        elif language in EXECUTED or language in SHOWN:
            blocks.append(CodeBlock(page, start + 1, language, token.content, _skip_reason(previous_html)))
        elif not language:
            raise ValueError(f"{where}: a code block without a language; name one of {sorted(EXECUTED | SHOWN)}")
        else:
            raise ValueError(f"{where}: code block language {language!r} is not one of {sorted(EXECUTED | SHOWN)}")
        previous_html = None
    return blocks


def run_block(block: CodeBlock, namespace: dict[str, Any]) -> None:
    """Run one ``python`` or ``pycon`` block in ``namespace``.

    :raises AssertionError: if a ``pycon`` block's output differs from the one shown.
    """
    filename = str(block.page)
    if block.language == "python":
        # Padding keeps the page's line numbers in tracebacks.
        exec(compile("\n" * (block.line - 1) + block.code, filename, "exec"), namespace)
        return
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.code, namespace, f"{block.page.name}:{block.line}", filename, block.line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    namespace.update(test.globs)  # DocTest works on a copy; later blocks see what this one defined
    if runner.failures:
        raise AssertionError(
            f"the output shown in {block.page.name}:{block.line} is not what runs:\n{report.getvalue()}"
        )


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_code_block_runs(page: Path) -> None:
    blocks = [b for b in code_blocks(page) if b.language in EXECUTED]
    if not blocks:
        pytest.skip("no Python on this page")
    # Run as a script would be, so that blocks guarded by `if __name__ == "__main__":` run too.
    namespace: dict[str, Any] = {"__name__": "__main__"}
    skipped: dict[str, list[int]] = {}
    for block in blocks:
        if block.skip_reason is not None:
            skipped.setdefault(block.skip_reason, []).append(block.line)
            continue
        run_block(block, namespace)
    if sum(map(len, skipped.values())) == len(blocks):
        pytest.skip("; ".join(f"{reason} (lines {', '.join(map(str, lines))})" for reason, lines in skipped.items()))


# -- the test of the test -------------------------------------------------------


def test_blocks_are_found_with_their_markers_and_lines(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# title\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip it needs a GPU -->\n```python\ny = 2\n```\n\n"
        "<!-- docs-test: requires conc_ml.no_such_thing -->\n```pycon\n>>> 1\n1\n```\n\n"
        ":::{note}\n```python\nz = 3\n```\n:::\n\n````{tip}\n```console\n$ make docs\n```\n````\n",
        encoding="utf-8",
    )
    blocks = code_blocks(page)
    assert [(b.line, b.language, b.code, b.skip_reason) for b in blocks] == [
        (4, "python", "x = 1\n", None),
        (9, "python", "y = 2\n", "it needs a GPU"),
        (14, "pycon", ">>> 1\n1\n", "needs conc_ml.no_such_thing, which cannot be imported yet"),
        (20, "python", "z = 3\n", None),
        (26, "console", "$ make docs\n", None),
    ]


def test_a_block_without_a_language_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```\nprint('where am I run?')\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="without a language"):
        code_blocks(page)


def test_a_wrong_output_fails(tmp_path: Path) -> None:
    block = CodeBlock(tmp_path / "p.md", 1, "pycon", ">>> 1 + 1\n3\n", None)
    with pytest.raises(AssertionError, match="is not what runs"):
        run_block(block, {})
    run_block(CodeBlock(tmp_path / "p.md", 1, "pycon", ">>> 1 + 1\n2\n", None), {})


def test_names_defined_in_one_block_reach_the_next(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    run_block(CodeBlock(tmp_path / "p.md", 1, "pycon", ">>> def f():\n...     return 41\n", None), namespace)
    run_block(CodeBlock(tmp_path / "p.md", 5, "python", "answer = f() + 1\n", None), namespace)
    run_block(CodeBlock(tmp_path / "p.md", 9, "pycon", ">>> answer\n42\n", None), namespace)


def test_a_failing_block_points_at_its_page_line(tmp_path: Path) -> None:
    block = CodeBlock(tmp_path / "p.md", 7, "python", "x = 1\nraise KeyError(x)\n", None)
    with pytest.raises(KeyError) as caught:
        run_block(block, {})
    assert caught.traceback[-1].lineno + 1 == 8


# -- the site -------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_without_warnings_and_documents_every_public_name(tmp_path: Path) -> None:
    build = subprocess.run(
        [*SPHINX, "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    reference = (tmp_path / "html" / "reference.html").read_text(encoding="utf-8")
    public = [(module, importlib.import_module(module)) for module in PUBLIC_MODULES if _importable(module)]
    missing = [
        f"{name}.{attr}" for name, module in public for attr in module.__all__ if f'id="{name}.{attr}"' not in reference
    ]
    assert not missing, f"docs/reference.md does not document: {', '.join(missing)}"
