"""``conc_ml.testing`` keeps its ``__all__`` honest and imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys
import types

import conc_ml.testing
import conc_ml.testing.strategies


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }


def test_all_lists_exactly_the_public_names() -> None:
    assert (
        set(conc_ml.testing.__all__)
        == _public(conc_ml.testing)
        == {
            "assert_equivalent",
            "assert_parallel_equivalent",
        }
    )
    strategies = conc_ml.testing.strategies
    assert all(hasattr(strategies, name) for name in strategies.__all__)
    assert set(strategies.__all__) == {"SPLITTABLE_KINDS", "parallel_configs", "splittable"}


def test_importing_the_assertions_imports_neither_hypothesis_nor_optional_libraries() -> None:
    code = (
        "import sys, conc_ml.testing; "
        "print(sorted(m for m in ('hypothesis', 'pandas', 'scipy', 'sklearn') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.strip() == "[]"
