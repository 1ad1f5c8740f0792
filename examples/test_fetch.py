"""The fetch example: every page arrives, in order, and the features match a one-process run."""

from __future__ import annotations

import numpy as np
from fetch import N_FEATURES, featurize, page_text, run


def test_fetch_then_featurize() -> None:
    pages, features = run(n_pages=60, latency=0.005)

    # Every 10th page fails once and is retried: all arrive, in input order.
    assert pages == [page_text(i) for i in range(60)]
    assert features.shape == (60, N_FEATURES)
    np.testing.assert_array_equal(features, featurize.__wrapped__(pages))
    assert (features.sum(axis=1) == [len(p.split()) for p in pages]).all()
