"""Sphinx configuration of the conc-ml documentation (MyST Markdown, furo theme).

Built by ``make docs`` with warnings as errors; ``tests/test_docs.py`` builds it too,
and runs every code block of every page.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document this checkout's conc_ml, not whichever one is installed.
sys.path.insert(0, str(ROOT))

import conc_ml  # noqa: E402

project = "conc-ml"
author = "conc-ml developers"
copyright = "conc-ml developers"
release = conc_ml.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"conc-ml {release}"
pygments_style = "sphinx"
pygments_dark_style = "monokai"

#: pages that other parts of the project add; listed in a toctree only once they exist
PAGES_ADDED_ELSEWHERE = ("performance", "scaling-out")

_REQUIRES = re.compile(
    r"<!-- sphinx: requires (?P<name>[\w./-]+) -->\n(?P<body>.*?)<!-- sphinx: end requires -->\n?", re.S
)


def available(name: str) -> bool:
    """Whether ``name`` exists now: a file (a path from the repository root), else an importable name."""
    if "/" in name:
        return (ROOT / name).is_file()
    return importable(name)


def importable(name: str) -> bool:
    """Whether the dotted ``name`` (a module, or an attribute of one) can be imported now."""
    module_name, _, attribute = name.rpartition(".")
    try:
        importlib.import_module(name)
    except ImportError:
        if not module_name:
            return False
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return False
        return hasattr(module, attribute)
    return True


def _drop_what_does_not_exist_yet(app: Any, docname: str, source: list[str]) -> None:
    # Reference sections for modules still being written would fail the build (autodoc
    # cannot import them), as would toctree entries for pages not written yet. Both
    # appear by themselves once what they name exists.
    text = _REQUIRES.sub(lambda m: m["body"] if available(m["name"]) else "", source[0])
    for page in PAGES_ADDED_ELSEWHERE:
        if not (DOCS / f"{page}.md").exists():
            text = re.sub(rf"^{re.escape(page)}\n", "", text, flags=re.M)
            # A link to it keeps its words and loses its target.
            text = re.sub(rf"\[([^\]]*)\]\((?:\.\./)*{re.escape(page)}\.md(?:#[\w-]*)?\)", r"\1", text)
    source[0] = text


def setup(app: Any) -> dict[str, Any]:
    """Register the filter above."""
    app.connect("source-read", _drop_what_does_not_exist_yet)
    return {"parallel_read_safe": True}
