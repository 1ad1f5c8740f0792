"""Tests of the preprocessing example: chunk-invariant on threads, and useful features."""

from __future__ import annotations

import numpy as np
import pytest
from preprocess import BANDS, extract_features, fit_scaling, make_signals


@pytest.fixture(scope="module")
def signals() -> tuple[np.ndarray, np.ndarray]:
    # 301 rows: chunks of unequal sizes, and a last chunk of one row with CHUNK_ROWS=256.
    return make_signals(301, length=512, seed=3)


@pytest.mark.parametrize("chunks", [1, 2, 7, 301])
@pytest.mark.parametrize("backend", ["thread", "sequential"])
def test_any_chunking_equals_the_whole_array(signals: tuple[np.ndarray, np.ndarray], chunks: int, backend: str) -> None:
    rows, _ = signals
    center, scale = fit_scaling(rows)
    chunked = extract_features.options(backend=backend, chunks=chunks, workers=2)(rows, center=center, scale=scale)
    whole = extract_features.__wrapped__(rows, center=center, scale=scale)
    assert chunked.shape == (len(rows), len(BANDS) + 3)
    np.testing.assert_array_equal(chunked, whole)


def test_checked_with_whole_true(signals: tuple[np.ndarray, np.ndarray]) -> None:
    testing = pytest.importorskip("conc_ml.testing", reason="conc_ml.testing arrives with issue 5")
    rows, _ = signals
    center, scale = fit_scaling(rows)
    testing.assert_parallel_equivalent(
        extract_features, rows, center=center, scale=scale, backends=("thread",), chunks=(1, 3, 8), whole=True
    )


def test_the_band_power_of_the_tone_separates_the_classes(signals: tuple[np.ndarray, np.ndarray]) -> None:
    rows, labels = signals
    center, scale = fit_scaling(rows)
    features = extract_features(rows, center=center, scale=scale)
    band_8_13 = features[:, 2]
    assert band_8_13[labels == 0].min() > band_8_13[labels == 1].max()


def test_bad_input_is_refused_with_the_allowed_shape() -> None:
    with pytest.raises(ValueError, match="2-d array"):
        extract_features(np.zeros(10), center=0.0, scale=1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        extract_features(np.zeros((4, 8)), center=0.0, scale=0.0)
