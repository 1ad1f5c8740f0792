"""The interception slot the plugin uses: what an intercepted call tells about itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conc_ml import parallel
from conc_ml._intercept import InterceptedCall, intercept_calls
from conc_ml.backends._process import _forkserver


def total(xs: list[int], scale: int = 1) -> int:
    return sum(xs) * scale


def _intercepted(func: Any, *args: Any, **kwargs: Any) -> InterceptedCall:
    seen: list[InterceptedCall] = []
    with intercept_calls(seen.append):
        func(*args, **kwargs)
    assert len(seen) == 1
    return seen[0]


def test_shape_gives_backend_workers_and_chunks_of_the_run() -> None:
    call = _intercepted(parallel(backend="thread", workers=3, chunks=4)(total), list(range(10)))
    assert call.shape() == ("thread", 3, 4)
    assert call.shape(chunks=2, workers=2) == ("thread", 2, 2)
    assert call.shape(backend="sequential", chunk_size=3) == ("sequential", 3, 4)


def test_shape_of_a_call_that_cannot_be_bound_shows_the_options() -> None:
    call = _intercepted(parallel(backend="thread", workers=2, chunks=4)(total), list(range(4)), 1, 2)
    assert call.shape() == ("thread", 2, 4)


def test_shape_opens_no_checkpoint_and_preloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preloaded: list[list[str]] = []
    monkeypatch.setattr(_forkserver, "preload", lambda modules: preloaded.append(list(modules)) or True)
    monkeypatch.setattr(_forkserver, "started", lambda: False)
    store = tmp_path / "store"
    func = parallel(backend="process", workers=2, chunks=2, checkpoint=store)(total)
    call = _intercepted(func, [1, 2, 3])
    assert call.shape() == ("process", 2, 2)
    assert not store.exists()
    assert preloaded == []
