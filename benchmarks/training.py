"""The training workload's function, written the way users write it: imports at the top.

Kept apart from :mod:`benchmarks.workloads` so that the other workloads do not import
scikit-learn; ``conc_ml.warm_up`` finds ``sklearn.ensemble`` through this module's globals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier


def fit_forest(X: np.ndarray[Any, Any], y: np.ndarray[Any, Any], trees: int) -> RandomForestClassifier:
    """One random forest on one chunk of rows (single-threaded, fixed seed)."""
    return RandomForestClassifier(n_estimators=trees, max_depth=8, random_state=0, n_jobs=1).fit(X, y)
