"""warm_up starts the process pool ahead of the first call and imports what the functions need in every worker."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

import conc_ml
from conc_ml import parallel
from conc_ml.backends._process._forkserver import modules_used_by


@parallel(backend="process", workers=2, combine="concat")
def _norms(rows: np.ndarray[Any, Any]) -> list[float]:
    return [float(np.linalg.norm(row)) for row in rows]


def _uses_json_in_a_closure() -> Any:
    dumps = json.dumps

    def inner(value: Any) -> str:
        return dumps(value)

    return inner


def test_modules_used_by_finds_the_functions_module_and_its_globals_modules() -> None:
    found = modules_used_by(_norms)
    assert __name__ in found
    assert "numpy" in found
    assert "json" in modules_used_by(_uses_json_in_a_closure())


def test_modules_used_by_leaves_out_main_and_builtins() -> None:
    def local() -> int:
        return len([])

    local.__module__ = "__main__"
    assert modules_used_by(local) == []


def _loaded_modules(_: Any) -> tuple[int, bool]:
    import sys

    return os.getpid(), "conc_ml.backends._process._shared_memory" in sys.modules and "email.message" in sys.modules


def test_warm_up_imports_the_modules_in_the_workers_the_calls_then_use() -> None:
    conc_ml.warm_up(_norms, modules=["email.message"], timeout=60)
    probe = parallel(backend="process", workers=2, chunks=2)(_loaded_modules)
    results = probe([0, 1])
    assert all(loaded for _, loaded in results)
    assert _norms(np.ones((4, 3))) == [pytest.approx(3**0.5)] * 4


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_warm_up_rejects_a_pool_size_that_is_not_a_positive_integer(workers: Any) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        conc_ml.warm_up(workers=workers)


def test_warm_up_without_waiting_returns_and_the_first_call_works() -> None:
    conc_ml.warm_up(_norms, wait=False)
    assert _norms(np.zeros((2, 2))) == [0.0, 0.0]
