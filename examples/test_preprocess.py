"""Tests of the preprocessing example: chunk-invariant on threads, and useful features."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from preprocess import BANDS, SAMPLE_RATE, extract_features, fit_scaling, make_signals

from conc_ml.testing import assert_parallel_equivalent


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    # 301 rows: chunks of unequal sizes, and with CHUNK_ROWS=256 a second chunk of 45 rows.
    return make_signals(301, length=512, seed=3)


@pytest.mark.parametrize("chunks", [1, 2, 7, 301])
def test_any_chunking_equals_the_whole_array(small: tuple[np.ndarray, np.ndarray], chunks: int) -> None:
    rows, _ = small
    center, scale = fit_scaling(rows)
    chunked = extract_features.options(chunks=chunks).sequential(rows, center=center, scale=scale)
    whole = extract_features.__wrapped__(rows, center=center, scale=scale)
    assert chunked.shape == (len(rows), len(BANDS) + 3)
    np.testing.assert_array_equal(chunked, whole)


def test_threads_give_the_whole_array_result_at_full_size() -> None:
    # 32 MiB, 16 chunks: the size at which threads pay off, and the row of `make demo`'s table.
    rows, _ = make_signals(4096, length=4 * SAMPLE_RATE, seed=4)
    center, scale = fit_scaling(rows)
    features = extract_features(rows, center=center, scale=scale)
    np.testing.assert_array_equal(features, extract_features.__wrapped__(rows, center=center, scale=scale))


def test_checked_with_whole_true(small: tuple[np.ndarray, np.ndarray]) -> None:
    rows, _ = small
    center, scale = fit_scaling(rows)
    assert_parallel_equivalent(
        extract_features, rows, center=center, scale=scale, backends="thread", chunks=(1, 3, 8), whole=True
    )


def test_the_band_power_of_the_tone_separates_the_classes(small: tuple[np.ndarray, np.ndarray]) -> None:
    rows, labels = small
    center, scale = fit_scaling(rows)
    band_8_13 = extract_features.sequential(rows, center=center, scale=scale)[:, 2]
    assert band_8_13[labels == 0].min() > band_8_13[labels == 1].max()


def test_bad_input_is_refused_with_the_allowed_shape() -> None:
    with pytest.raises(ValueError, match="2-d array"):
        extract_features.sequential(np.zeros(10), center=0.0, scale=1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        extract_features.sequential(np.zeros((4, 8)), center=0.0, scale=0.0)


def test_the_script_runs_standalone_and_reports_agreement() -> None:
    # A subprocess, as a user runs it: __main__ functions then travel to workers by value.
    script = Path(__file__).with_name("preprocess.py")
    run = subprocess.run(
        [sys.executable, str(script), "--signals", "600", "--length", "256"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "chunked == whole array: True" in run.stdout
