"""Properties of the foundation, stated with conc-ml's own strategies and assertions.

- split then concat is the identity, for every splittable kind and any chunking;
- a parallel run equals the sequential one for any backend, chunks, workers and seed,
  including functions that draw from their per-chunk ``rng``;
- the per-chunk streams depend on the seed and the chunk index only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conc_ml import parallel
from conc_ml._combine import combine_results
from conc_ml._seeding import chunk_seed, root_seed_sequence
from conc_ml._split import plan_chunks
from conc_ml.testing import assert_equivalent, assert_parallel_equivalent
from conc_ml.testing.strategies import SPLITTABLE_KINDS, parallel_configs, splittable

#: every built-in backend that runs without a cluster
ALL_BACKENDS = ("sequential", "thread", "process", "async")

#: runs through worker processes: few, tiny examples, no deadline (the pool starts once)
ACROSS_BACKENDS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: in-process properties: a busy machine must not turn a slow example into a failure
NO_DEADLINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

numeric_dtypes = st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.complex128])
any_splittable = splittable(numeric_dtypes, kinds=SPLITTABLE_KINDS, max_rows=10, row_shape=(2,))
#: inputs whose element-wise doubling is exact: floats that cannot overflow, and integers
doublable = splittable(np.float64, kinds=("array", "list", "tuple"), max_rows=10, elements=st.floats(-1e300, 1e300)) | (
    splittable(np.int32, kinds=("array", "list", "tuple"), max_rows=10)
)


#: one worker count for every run, so that one warm process pool serves the whole module
WORKERS = 2
#: options over every backend; chunks vary freely, the worker count stays
any_config = parallel_configs(backends=ALL_BACKENDS, max_chunks=6, min_workers=WORKERS, max_workers=WORKERS)


@pytest.fixture(scope="module", autouse=True)
def warm_process_pool() -> None:
    """Start the process pool once, so that no hypothesis example pays for it."""
    parallel(backend="process", workers=WORKERS, chunks=WORKERS)(len)([1, 2])


def _length(value: Any) -> int:
    return int(value.shape[0]) if hasattr(value, "shape") else len(value)


@NO_DEADLINE
@given(value=any_splittable, chunks=st.integers(1, 12))
def test_split_then_concat_is_the_identity(value: Any, chunks: int) -> None:
    plan = plan_chunks([value], ["value"], chunks=chunks, chunk_size=None, workers=1)
    pieces = [chunk.values[0] for chunk in plan.chunks]
    sizes = [_length(piece) for piece in pieces]
    n_items = _length(value)
    assert len(pieces) == max(1, min(chunks, n_items)) == plan.n_chunks
    assert sum(sizes) == n_items
    assert n_items == 0 or min(sizes) >= 1, "an empty chunk"
    assert max(sizes) - min(sizes) <= 1, "chunks must be nearly equal"
    assert_equivalent(combine_results("concat", pieces, sizes), value)


@NO_DEADLINE
@given(items=splittable(kinds=("list",), max_rows=15), chunk_size=st.integers(1, 6))
def test_lazy_split_by_chunk_size_then_concat_is_the_identity(items: list[Any], chunk_size: int) -> None:
    plan = plan_chunks([iter(items)], ["items"], chunks=None, chunk_size=chunk_size, workers=1)
    pieces = [chunk.values[0] for chunk in plan.chunks]
    assert all(1 <= len(piece) <= chunk_size for piece in pieces) or items == []
    assert_equivalent(combine_results("concat", pieces, [len(p) for p in pieces]), items)


@NO_DEADLINE
@given(value=any_splittable, chunks=st.integers(1, 5))
def test_arguments_split_together_stay_aligned(value: Any, chunks: int) -> None:
    labels = list(range(_length(value)))
    plan = plan_chunks([value, labels], ["x", "y"], chunks=chunks, chunk_size=None, workers=1)
    for chunk in plan.chunks:
        piece, piece_labels = chunk.values
        assert _length(piece) == len(piece_labels) == chunk.n_items


@parallel(combine="concat")
def unchanged(value: Any) -> Any:
    return value


@parallel(combine="concat")
def doubled(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(item * 2 for item in value)
    return value * 2


@parallel(combine="concat")
def jittered(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values + rng.standard_normal(values.shape)


@parallel(combine="list")
def first_draws(values: list[Any], rng: np.random.Generator) -> tuple[int, float]:
    return len(values), float(rng.random())


@ACROSS_BACKENDS
@given(value=any_splittable, config=any_config)
def test_parallel_identity_returns_the_input(value: Any, config: dict[str, Any]) -> None:
    assert_equivalent(unchanged.options(**config)(value), value)


@ACROSS_BACKENDS
@given(value=doublable, config=any_config)
def test_parallel_equals_sequential_and_the_whole_call(value: Any, config: dict[str, Any]) -> None:
    run = doubled.options(**config)
    assert_equivalent(run(value), run.sequential(value))
    assert_equivalent(run(value), doubled.__wrapped__(value))


@ACROSS_BACKENDS
@given(
    values=splittable(kinds=("array",), max_rows=10, elements=st.floats(-1e6, 1e6)),
    config=parallel_configs(backends=ALL_BACKENDS, max_chunks=6, min_workers=WORKERS, max_workers=WORKERS, seeds=True),
)
def test_seeded_streams_give_the_same_result_on_every_backend(values: np.ndarray, config: dict[str, Any]) -> None:
    run = jittered.options(**config)
    assert_equivalent(run(values), run.sequential(values))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=splittable(kinds=("array",), min_rows=1, max_rows=8), seed=st.integers(0, 2**32 - 1))
def test_assert_parallel_equivalent_holds_for_seeded_functions(values: np.ndarray, seed: int) -> None:
    assert_parallel_equivalent(jittered, values, backends=ALL_BACKENDS, workers=WORKERS, chunks=(None, 3), seed=seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=splittable(kinds=("list",), min_rows=1, max_rows=10),
    chunks=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    backends=st.lists(st.sampled_from(ALL_BACKENDS), min_size=2, max_size=2),
    workers=st.lists(st.integers(1, 4), min_size=2, max_size=2),
)
def test_streams_depend_on_seed_and_chunking_only(
    items: list[Any], chunks: int, seed: int, backends: list[str], workers: list[int]
) -> None:
    # Worker counts vary except on processes, where each new count would rebuild the pool.
    first, second = (
        first_draws.options(
            backend=backend, workers=WORKERS if backend == "process" else count, chunks=chunks, seed=seed
        )(items)
        for backend, count in zip(backends, workers, strict=True)
    )
    assert_equivalent(first, second)
    expected = [
        float(np.random.default_rng(child).random()) for child in np.random.SeedSequence(seed).spawn(len(first))
    ]
    assert_equivalent([draw for _, draw in first], expected)


@NO_DEADLINE
@given(seed=st.integers(0, 2**128), spawn_key=st.lists(st.integers(0, 5), max_size=2), n_chunks=st.integers(1, 9))
def test_chunk_seed_is_the_spawned_child(seed: int, spawn_key: list[int], n_chunks: int) -> None:
    root = np.random.SeedSequence(seed, spawn_key=tuple(spawn_key))
    children = np.random.SeedSequence(seed, spawn_key=tuple(spawn_key)).spawn(n_chunks)
    assert_equivalent([chunk_seed(root, i) for i in range(n_chunks)], children)
    assert root.n_children_spawned == 0, "chunk_seed must not consume the root's children"
    assert_equivalent(root_seed_sequence(seed), np.random.SeedSequence(seed))


@NO_DEADLINE
@given(matrix=splittable(kinds=("sparse",), row_shape=(3,)), chunks=st.integers(1, 5))
def test_coo_input_is_cut_as_csr_and_concatenates_to_the_same_values(matrix: Any, chunks: int) -> None:
    coo = sp.coo_matrix(matrix)
    plan = plan_chunks([coo], ["m"], chunks=chunks, chunk_size=None, workers=1)
    pieces = [chunk.values[0] for chunk in plan.chunks]
    assert all(piece.format == "csr" for piece in pieces)
    assert_equivalent(combine_results("concat", pieces, [p.shape[0] for p in pieces]), sp.csr_matrix(coo))
