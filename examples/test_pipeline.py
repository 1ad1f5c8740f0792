"""Tests of the pipeline example: the overlapped run gives the staged run's models, in flat memory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pipeline import (
    LIVE_BATCHES,
    calibrate,
    ensemble_accuracy,
    fetch_batch,
    run_pipelined,
    run_staged,
    serve_batches,
)

import conc_ml

N_BATCHES = 40


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with serve_batches(N_BATCHES + 1, latency=0.005, rows=128) as address:
        yield address


def same_models(left: list[tuple[int, object]], right: list[tuple[int, object]]) -> bool:
    return [i for i, _ in left] == [i for i, _ in right] and all(
        np.array_equal(a[-1].coef_, b[-1].coef_)  # type: ignore[index]
        for (_, a), (_, b) in zip(left, right, strict=True)
    )


def test_pipelined_equals_staged_and_holds_few_batches(address: tuple[str, int]) -> None:
    center, scale, test = calibrate(address, batch_id=N_BATCHES)
    batch_ids = list(range(N_BATCHES))
    # Enough epochs that training a batch outweighs sending it to a worker and back.
    epochs = 400
    # Two workers per stage whatever the machine, so that the bound below holds everywhere.
    with conc_ml.config(workers=2):
        LIVE_BATCHES.reset_peak()
        pipelined = run_pipelined(batch_ids, address, center, scale, epochs=epochs)
        pipelined_peak = LIVE_BATCHES.peak
        LIVE_BATCHES.reset_peak()
        staged = run_staged(batch_ids, address, center, scale, epochs=epochs)
        staged_peak = LIVE_BATCHES.peak

    assert [i for i, _ in pipelined] == batch_ids
    assert same_models(pipelined, staged)
    assert ensemble_accuracy(pipelined, test) > 0.9
    # A few chunks in flight per stage and worker: far fewer than the batches.
    assert pipelined_peak <= 16
    assert staged_peak >= N_BATCHES


def test_a_missing_batch_fails_with_the_server_answer(address: tuple[str, int]) -> None:
    with pytest.raises(LookupError, match="404") as caught:
        fetch_batch.map([0, N_BATCHES + 5], address=address)
    # Not retried: a batch the server does not have will not appear on a second try.
    assert "raised by item 1 of fetch_batch.map() after 1 attempt" in caught.value.__notes__[-1]


def test_the_server_is_gone_after_the_block() -> None:
    with serve_batches(1, latency=0.0, rows=2) as address:
        batch = fetch_batch.__wrapped__(0, address=address)
    assert batch.signals.shape[0] == 2
    with pytest.raises(ConnectionRefusedError):
        fetch_batch.__wrapped__(0, address=address)


def test_the_script_runs_standalone_and_reports_agreement() -> None:
    # A subprocess, as a user runs it: __main__ functions then travel to workers by value.
    script = Path(__file__).with_name("pipeline.py")
    run = subprocess.run(
        [sys.executable, str(script), "--batches", "6", "--latency", "0.001"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "pipelined == staged: True" in run.stdout
