"""The fetch example: every page arrives, in order, and the features match a one-process run."""

from __future__ import annotations

import numpy as np
from fetch import N_FEATURES, featurize, page_text, page_tokens, run


def test_fetch_then_featurize() -> None:
    pages, features = run(n_pages=300, latency=0.002)

    # Every 10th page fails once and is retried: all arrive, in input order.
    assert pages == [page_text(i) for i in range(300)]
    assert features.shape == (300, N_FEATURES)
    np.testing.assert_array_equal(features, featurize.__wrapped__(pages))
    assert (features.sum(axis=1) == [len(page_tokens(p)) for p in pages]).all()
