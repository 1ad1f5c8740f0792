"""Deterministic per-chunk random streams.

Chunk ``i`` of a call with root ``seed`` gets
``numpy.random.default_rng(SeedSequence(seed).spawn(n_chunks)[i])``. The child is built
directly from its spawn key, so a lazy plan (whose chunk count is not known up front)
gets exactly the streams an eager one would, and the streams depend on the seed and the
chunk index only: never on the backend, the worker count or the order chunks finish.
"""

from __future__ import annotations

import numpy as np

__all__ = ["chunk_seed", "root_seed_sequence"]


def root_seed_sequence(seed: int | np.random.SeedSequence | None) -> np.random.SeedSequence:
    """The root of a call's streams; fresh OS entropy when ``seed`` is ``None``."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(seed)


def chunk_seed(root: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """The ``index``-th child of ``root``, equal to ``root.spawn(n)[index]`` on a fresh root."""
    return np.random.SeedSequence(
        entropy=root.entropy,
        spawn_key=(*root.spawn_key, root.n_children_spawned + index),
        pool_size=root.pool_size,
    )
