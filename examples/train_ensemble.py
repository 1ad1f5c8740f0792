"""Train one scikit-learn model per chunk of the data on processes, and vote.

Bagging by hand: the rows are cut into chunks, and each chunk trains its own classifier
in a worker process (random Fourier features followed by a logistic regression fitted by
stochastic gradient descent), on a bootstrap sample drawn from the chunk's own random
stream. The fitted models come back to be combined into a soft-voting ensemble, which is
more accurate than any of its members. The seeded streams
make the ensemble the same whatever the backend, the worker count or the order in which
chunks finish, so ``train_members.sequential`` is the reference it can be checked against.

Run it::

    python examples/train_ensemble.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from sklearn.datasets import make_classification
from sklearn.kernel_approximation import RBFSampler
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline

from conc_ml import parallel

#: chunks, hence ensemble members
MEMBERS = 8


@parallel(backend="process", chunks=MEMBERS, split=("rows", "labels"), seed=0)
def train_members(
    rows: np.ndarray, labels: np.ndarray, *, features: int = 400, epochs: int = 15, rng: np.random.Generator
) -> Pipeline:
    """Fit one ensemble member on a bootstrap sample of one chunk.

    :param rows: the chunk's feature rows.
    :param labels: the chunk's labels, aligned with ``rows``.
    :param features: random Fourier features the member learns on.
    :param epochs: passes of stochastic gradient descent over the sample.
    :param rng: the chunk's random stream, given by conc-ml.
    """
    sample = rng.integers(0, len(rows), size=len(rows))
    # The stream also seeds the feature map and the SGD shuffling, so that the whole
    # member, not only its sample, is reproducible.
    model = make_pipeline(
        RBFSampler(gamma=0.02, n_components=features, random_state=int(rng.integers(2**31))),
        SGDClassifier(loss="log_loss", max_iter=epochs, tol=None, random_state=int(rng.integers(2**31))),
    )
    return model.fit(rows[sample], labels[sample])


def ensemble_predict(members: Sequence[Pipeline], rows: np.ndarray) -> np.ndarray:
    """Soft vote: the class with the highest mean predicted probability over the members.

    :param members: fitted classifiers sharing the same ``classes_``.
    :param rows: the rows to classify.
    :raises ValueError: if ``members`` is empty.
    """
    if not members:
        raise ValueError("ensemble_predict needs at least one fitted member")
    mean_proba = np.mean([member.predict_proba(rows) for member in members], axis=0)
    return members[0].classes_[np.argmax(mean_proba, axis=1)]  # type: ignore[no-any-return]


def make_data(n_rows: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic binary classification task, split 80/20 into train and test.

    :param n_rows: rows in all (train and test).
    :param seed: seed of the data.
    """
    rows, labels = make_classification(
        n_samples=n_rows, n_features=20, n_informative=10, n_redundant=4, flip_y=0.02, random_state=seed
    )
    rows_train, rows_test, labels_train, labels_test = train_test_split(
        rows, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return rows_train, rows_test, labels_train, labels_test


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``predicted`` equal to ``labels``."""
    return float(np.mean(predicted == labels))


def same_members(left: Sequence[Pipeline], right: Sequence[Pipeline]) -> bool:
    """Whether two ensembles hold the same fitted members, bit for bit."""
    return len(left) == len(right) and all(
        np.array_equal(a[0].random_weights_, b[0].random_weights_) and np.array_equal(a[-1].coef_, b[-1].coef_)
        for a, b in zip(left, right, strict=True)
    )


def main(n_rows: int = 80_000) -> None:
    """Train the ensemble in parallel and sequentially, check they agree, report accuracy and time."""
    rows_train, rows_test, labels_train, labels_test = make_data(n_rows)
    # Start the worker processes once, outside the timing, as a long-running job would.
    train_members(rows_train[: 64 * MEMBERS], labels_train[: 64 * MEMBERS], features=8, epochs=1)

    start = time.perf_counter()
    members = train_members(rows_train, labels_train)
    parallel_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = train_members.sequential(rows_train, labels_train)
    sequential_s = time.perf_counter() - start

    same = same_members(members, reference)
    member_scores = [accuracy(m.predict(rows_test), labels_test) for m in members]
    print(f"{len(members)} members trained on {len(rows_train)} rows ({len(rows_train) // len(members)} per chunk)")
    print(f"member test accuracy:   {min(member_scores):.3f} .. {max(member_scores):.3f}")
    print(f"ensemble test accuracy: {accuracy(ensemble_predict(members, rows_test), labels_test):.3f}")
    print(f"parallel == sequential: {same}")
    speedup = sequential_s / parallel_s
    print(f"process backend {parallel_s:.2f} s, sequential {sequential_s:.2f} s, speedup {speedup:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train an ensemble, one member per chunk, on processes.")
    parser.add_argument("--rows", type=int, default=80_000, help="rows of the dataset, train and test (80000)")
    main(parser.parse_args().rows)
