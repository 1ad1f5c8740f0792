"""Scale a large array of signals and extract spectral features from it, on threads.

numpy releases the GIL inside its array loops and FFTs, so threads run these chunks
truly in parallel, without copying the array into other processes. The work is
*chunk-invariant*: each output row depends on its own input row only, plus statistics
computed once over the whole array and passed whole to every chunk. So the result is
the same however the rows are cut, and equal to the undecorated function run on the
whole array, which ``conc_ml.testing.assert_parallel_equivalent(..., whole=True)``
checks (see ``examples/test_preprocess.py``).

Run it::

    python examples/preprocess.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from conc_ml import parallel

#: samples per second of every signal
SAMPLE_RATE = 256
#: frequency bands (Hz, [low, high)) whose power becomes a feature
BANDS = ((1, 4), (4, 8), (8, 13), (13, 30), (30, 60), (60, 128))
#: the tone, in Hz, that tells the two classes apart
TONES = (10.0, 20.0)


def make_signals(n_signals: int, length: int = 2 * SAMPLE_RATE, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy signals, each carrying one of two tones; returns ``(signals, labels)``.

    :param n_signals: rows of the array.
    :param length: samples per signal.
    :param seed: seed of the data.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n_signals)
    t = np.arange(length) / SAMPLE_RATE
    tone = np.take(TONES, labels)[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n_signals, 1))
    signals = 3.0 + 2.0 * np.sin(2 * np.pi * tone * t + phase) + rng.normal(scale=2.0, size=(n_signals, length))
    return signals, labels


def fit_scaling(signals: np.ndarray) -> tuple[float, float]:
    """Centre and scale of the whole array (one pass, before any chunking).

    Statistics over all rows cannot be computed chunk by chunk without changing the
    answer; computed once and passed whole, they keep the features chunk-invariant.

    :param signals: the whole array.
    """
    return float(signals.mean()), float(signals.std())


def _band_columns(length: int) -> list[tuple[int, int]]:
    frequencies = np.fft.rfftfreq(length, d=1 / SAMPLE_RATE)
    return [(int(np.searchsorted(frequencies, low)), int(np.searchsorted(frequencies, high))) for low, high in BANDS]


#: rows per chunk: 2 MiB of 1024-sample signals, so that each pass over a chunk stays in cache
CHUNK_ROWS = 256


@parallel(backend="thread", chunk_size=CHUNK_ROWS, combine="concat")
def extract_features(signals: np.ndarray, *, center: float, scale: float) -> np.ndarray:
    """One row of features per signal: log band powers, then mean, std and peak.

    :param signals: rows of samples (a chunk of them, when called through conc-ml).
    :param center: subtracted from every sample (from :func:`fit_scaling`).
    :param scale: every sample is divided by it after centring.
    :raises ValueError: if ``signals`` is not two-dimensional or ``scale`` is not positive.
    """
    if signals.ndim != 2:
        raise ValueError(f"signals must be a 2-d array (signals x samples), got {signals.ndim} dimension(s)")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    scaled = (signals - center) / scale
    power = np.abs(np.fft.rfft(scaled, axis=1)) ** 2 / signals.shape[1]
    bands = [power[:, low:high].sum(axis=1) for low, high in _band_columns(signals.shape[1])]
    return np.column_stack(
        [np.log1p(np.column_stack(bands)), scaled.mean(axis=1), scaled.std(axis=1), np.abs(scaled).max(axis=1)]
    )


def best_time(work: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs of ``work``, in seconds (after one run to warm up)."""
    work()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(n_signals: int = 16_000, length: int = 4 * SAMPLE_RATE) -> None:
    """Extract features on threads and alone, check they agree, report the time of each."""
    signals, labels = make_signals(n_signals, length)
    center, scale = fit_scaling(signals)
    features = extract_features(signals, center=center, scale=scale)
    whole = extract_features.__wrapped__(signals, center=center, scale=scale)

    threads_s = best_time(lambda: extract_features(signals, center=center, scale=scale))
    sequential_s = best_time(lambda: extract_features.sequential(signals, center=center, scale=scale))
    whole_s = best_time(lambda: extract_features.__wrapped__(signals, center=center, scale=scale))

    # The 10-13 Hz band tells the classes apart: a one-feature classifier shows it.
    alpha = features[:, 2]
    guess = (alpha > np.median(alpha)).astype(int)
    size_mib = signals.nbytes / 2**20
    print(f"{signals.shape[0]} x {signals.shape[1]} signals ({size_mib:.0f} MiB) -> features {features.shape}")
    print(f"chunked == whole array: {np.array_equal(features, whole)}")
    print(f"one band power separates the classes: accuracy {np.mean(guess == (labels == 0)):.3f}")
    print(f"best of 5: thread backend {threads_s:.3f} s, same chunks one by one {sequential_s:.3f} s, ", end="")
    print(f"whole array at once {whole_s:.3f} s; speedup {sequential_s / threads_s:.2f}x / {whole_s / threads_s:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Extract features from an array of signals on threads.")
    parser.add_argument("--signals", type=int, default=16_000, help="rows of the array (16000)")
    parser.add_argument("--length", type=int, default=4 * SAMPLE_RATE, help="samples per signal (1024)")
    arguments = parser.parse_args()
    main(arguments.signals, arguments.length)
