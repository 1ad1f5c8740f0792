"""The fetch example: every page arrives, in order, and the features match a one-process run."""

from __future__ import annotations

import numpy as np
from fetch import N_FEATURES, featurize, page_text, page_tokens, run


def test_fetch_then_featurize() -> None:
    # 1200 pages: enough work per chunk for the processes to pay for themselves in `make demo`.
    pages, features = run(n_pages=1200, latency=0.002)

    # Every 10th page fails once and is retried: all arrive, in input order.
    assert pages == [page_text(i) for i in range(1200)]
    assert features.shape == (1200, N_FEATURES)
    np.testing.assert_array_equal(features, featurize.__wrapped__(pages))
    assert (features.sum(axis=1) == [len(page_tokens(p)) for p in pages]).all()
