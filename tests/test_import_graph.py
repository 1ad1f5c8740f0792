"""conc_ml and pytest_conc_ml import one another without a cycle, lazy imports included.

Dependencies point one way: pure pieces at the bottom, backends above them, the decorators
and the plugin on top. A cycle makes import order matter, and an import moved into a
function to dodge it is still a cycle, so imports inside functions count here too. Only
imports under ``if TYPE_CHECKING:`` do not: the type checker alone runs them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import conc_ml

ROOT = Path(conc_ml.__file__).resolve().parent.parent
PACKAGES = ("conc_ml", "pytest_conc_ml")


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = (path, is_package)
    return found


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node``, except what only runs for the type checker."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _within(name: str, modules: dict[str, tuple[Path, bool]]) -> str:
    """The module of ``packages`` that importing ``name`` runs (``""``: none, a third-party import)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Each module's imports of the other modules of ``packages``, at any depth in its code."""
    modules = _modules(root, packages)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        targets: list[str] = []
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node.level, node.module)
                # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        graph[module] = {known for target in targets if (known := _within(target, modules)) not in ("", module)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "\n".join(f"  {module} -> {', '.join(sorted(graph[module] & members))}" for module in component)


def test_conc_ml_and_its_plugin_import_without_a_cycle() -> None:
    graph = import_graph()
    assert "conc_ml._parallel" in graph
    assert "pytest_conc_ml.plugin" in graph
    found = cycles(graph)
    assert not found, "import cycles (lazy imports count):\n" + "\n\n".join(_describe(graph, c) for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_an_import_inside_a_function_closes_a_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def helper():\n    from .high import thing\n    return thing\n",
            "pkg/high.py": "from . import low\nthing = 1\n",
        },
    )
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.high", "pkg.low"]]


def test_an_import_for_the_type_checker_only_does_not(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/low.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import Thing\n"
                "else:\n    import json\n"
            ),
            "pkg/high.py": "from .sub.low import *\nfrom .sub import low\nclass Thing: ...\n",
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.high"] == {"pkg.sub.low"}
    assert graph["pkg.sub.low"] == set()
    assert cycles(graph) == []


# What ``import conc_ml`` and a ``@parallel`` call on processes load: the caller and the
# workers' fork server both import conc_ml, so what it loads for nothing costs twice.
_LOADED = """
import json, sys
import conc_ml

def double(items):
    return [2 * item for item in items]

if __name__ == "__main__":
    result = conc_ml.parallel(backend="process", workers=2, chunks=2, combine="concat")(double)([1, 2, 3])
    loaded = sorted(name for name in ("anyio", "importlib.metadata", "conc_ml._io_bound") if name in sys.modules)
    print(json.dumps({"result": result, "loaded": loaded}))
"""


def test_a_process_call_loads_neither_anyio_nor_the_entry_points(tmp_path: Path) -> None:
    # Before: conc_ml imported anyio for io_bound and read every installed package's
    # metadata (the backend entry points) to check the name "process": 4 MiB and 40 ms.
    path = tmp_path / "program.py"
    path.write_text(_LOADED)
    run = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"result": [2, 4, 6], "loaded": []}


def test_io_bound_and_its_classes_are_there_when_asked_for() -> None:
    from conc_ml import AsyncIOBoundFunction, IOBoundFunction, io_bound
    from conc_ml._io_bound import io_bound as defined

    assert io_bound is defined is conc_ml.io_bound
    assert isinstance(io_bound(len), IOBoundFunction)
    assert AsyncIOBoundFunction.__module__ == "conc_ml._io_bound"
    assert {"io_bound", "IOBoundFunction", "AsyncIOBoundFunction", "parallel"} <= set(dir(conc_ml))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        conc_ml.nothing_here  # noqa: B018 - the attribute access is the test
