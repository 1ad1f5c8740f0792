"""Tests of the ensemble example: accurate, reproducible, and the same on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from train_ensemble import MEMBERS, accuracy, ensemble_predict, make_data, same_members, train_members

#: large enough that each member takes tens of milliseconds to train (a chunk much shorter
#: than that is mostly the cost of sending it: parallel would not pay), small enough for a test
N_ROWS = 16_000
SIZES = {"features": 400, "epochs": 15}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return make_data(N_ROWS)


def test_ensemble_is_more_accurate_than_its_members(data: tuple[np.ndarray, ...]) -> None:
    rows_train, rows_test, labels_train, labels_test = data
    members = train_members(rows_train, labels_train, **SIZES)
    assert len(members) == MEMBERS
    member_scores = [accuracy(m.predict(rows_test), labels_test) for m in members]
    ensemble_score = accuracy(ensemble_predict(members, rows_test), labels_test)
    assert min(member_scores) > 0.6
    assert ensemble_score > max(member_scores)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_parallel_equals_sequential(data: tuple[np.ndarray, ...], backend: str) -> None:
    rows_train, _, labels_train, _ = data
    members = train_members.options(backend=backend, workers=2)(rows_train, labels_train, **SIZES)
    reference = train_members.sequential(rows_train, labels_train, **SIZES)
    assert same_members(members, reference)


def test_the_seed_decides_the_members(data: tuple[np.ndarray, ...]) -> None:
    rows_train, _, labels_train, _ = data
    seed_0 = train_members.sequential(rows_train, labels_train, **SIZES)
    seed_1 = train_members.options(seed=1).sequential(rows_train, labels_train, **SIZES)
    assert not same_members(seed_0, seed_1)
    assert same_members(seed_0, train_members.sequential(rows_train, labels_train, **SIZES))


def test_an_empty_ensemble_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one fitted member"):
        ensemble_predict([], np.zeros((1, 20)))
