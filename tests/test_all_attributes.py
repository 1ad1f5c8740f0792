"""``__all__`` is honest: every listed name exists, every public name is listed."""

from __future__ import annotations

import types

import conc_ml
import conc_ml.errors


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_top_level_all_lists_exactly_the_public_names() -> None:
    assert set(conc_ml.__all__) == _public(conc_ml)


def test_errors_all_lists_exactly_the_error_classes() -> None:
    assert set(conc_ml.errors.__all__) == {n for n in _public(conc_ml.errors) if n[0].isupper()}


def test_errors_are_reexported_at_top_level() -> None:
    for name in conc_ml.errors.__all__:
        if name in {"RemoteTraceback", "UnpicklableRemoteError"}:
            continue
        assert getattr(conc_ml, name) is getattr(conc_ml.errors, name)
