"""Hypothesis strategies for property tests of parallel parity.

``parallel_configs()`` draws the options of a run, ``splittable()`` draws an input that
``@parallel`` can cut. Together they state "parallel equals sequential, whatever the input
and however it is run"::

    from hypothesis import given, settings
    from conc_ml.testing import assert_equivalent
    from conc_ml.testing.strategies import parallel_configs, splittable

    @settings(max_examples=25, deadline=None)
    @given(rows=splittable(), config=parallel_configs())
    def test_scale_is_parallel_safe(rows, config):
        assert_equivalent(scale.options(**config)(rows), scale.sequential(rows))

Hypothesis with worker processes, in practice:

- **No deadline** (``deadline=None``): the first example pays for starting the pool and
  importing your code in each worker, hundreds of milliseconds that hypothesis would
  otherwise report as a flaky deadline.
- **A warm pool for the session**: the ``process`` backend reuses its one loky pool across
  calls with the same worker count, but a new count rebuilds it (process start and
  imports again, most of a second). Fix the count for process runs
  (``parallel_configs(min_workers=2, max_workers=2)``) and start the pool once in a
  session-scoped fixture (one tiny call on the ``process`` backend with that count), so
  that no example pays for start-up and each pays only for its chunks::

      @pytest.fixture(scope="session", autouse=True)
      def warm_process_pool():
          conc_ml.parallel(backend="process", workers=2, chunks=2)(len)([0, 0])

- **Few, tiny examples**: ``max_examples`` of 20 to 30 and inputs of a few rows find the
  chunking bugs (empty chunks, one row, uneven splits, views) as well as large inputs do;
  ``splittable(max_rows=...)`` keeps them small and shrinks towards 0 and 1 rows.
- **Module-level functions**: a function defined at module level is pickled by reference,
  so workers import it once instead of receiving it with every chunk.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .._options import validate_layer
from .._validate import integer
from ._parallel_equivalence import DEFAULT_BACKENDS

__all__ = ["SPLITTABLE_KINDS", "parallel_configs", "splittable"]

#: the kinds of input :func:`splittable` can draw
SPLITTABLE_KINDS = ("array", "list", "tuple", "series", "dataframe", "sparse")

#: how a drawn array is laid out in memory (the first is where shrinking goes)
_LAYOUTS = ("contiguous", "reversed", "strided", "fortran")
_SPARSE_FORMATS = ("csr_matrix", "csr_array", "csc_matrix")


def parallel_configs(
    *,
    backends: Iterable[str] = DEFAULT_BACKENDS,
    max_chunks: int = 8,
    min_workers: int = 1,
    max_workers: int = 4,
    seeds: bool = False,
) -> st.SearchStrategy[dict[str, Any]]:
    """Draw ``{"backend": ..., "chunks": ..., "workers": ...}``, usable as ``func.options(**config)``.

    Shrinks towards the first backend, ``chunks=None`` (one chunk per worker) and the fewest
    workers. Every change of the worker count rebuilds the ``process`` pool; to keep one warm
    pool through a test, fix the count (``min_workers=max_workers=2``).

    :param backends: backend names to draw from, in order of preference for shrinking.
    :param max_chunks: the largest chunk count drawn.
    :param min_workers: the smallest worker count drawn.
    :param max_workers: the largest worker count drawn (keep it small: each count is a pool).
    :param seeds: also draw ``seed``, a non-negative int.
    :raises TypeError, ValueError: on an argument that is not allowed.
    :raises BackendUnavailableError: if a backend is unknown or not installed.
    """
    if isinstance(backends, str):
        backends = (backends,)
    names = tuple(backends)
    if not names:
        raise ValueError(f"backends must name at least one backend, e.g. {DEFAULT_BACKENDS}")
    for name in names:
        validate_layer({"backend": name}, where="parallel_configs()")
    chunk_limit = integer(max_chunks, "max_chunks", minimum=1)
    worker_floor = integer(min_workers, "min_workers", minimum=1)
    worker_limit = integer(max_workers, "max_workers", minimum=worker_floor)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "backend": st.sampled_from(names),
        "chunks": st.none() | st.integers(1, chunk_limit),
        "workers": st.integers(worker_floor, worker_limit),
    }
    if seeds:
        fields["seed"] = st.integers(0, 2**32 - 1)
    return st.fixed_dictionaries(fields)


def splittable(
    dtype: Any = np.float64,
    *,
    kinds: Iterable[str] = ("array", "list"),
    min_rows: int = 0,
    max_rows: int = 12,
    row_shape: tuple[int, ...] = (),
    elements: st.SearchStrategy[Any] | None = None,
    views: bool = True,
) -> st.SearchStrategy[Any]:
    """Draw an input that ``@parallel`` can split: arrays, lists, tuples, pandas or sparse.

    Arrays have ``min_rows`` to ``max_rows`` rows of shape ``row_shape`` and, with
    ``views``, may be non-contiguous views (reversed, every other row of a larger array,
    Fortran order). Lists and tuples hold the same values as Python objects (one item per
    row). ``"series"`` is one-dimensional, ``"dataframe"`` has one column per element of a
    row, ``"sparse"`` is a two-dimensional CSR or CSC matrix or array. Shrinks towards
    the first kind, zero rows, contiguous layout and zero values.

    :param dtype: a numpy dtype (or anything :func:`numpy.dtype` takes), or a strategy of dtypes.
    :param kinds: which of ``array``, ``list``, ``tuple``, ``series``, ``dataframe``, ``sparse``.
    :param min_rows: fewest rows (0 is the empty input, which ``@parallel`` calls once).
    :param max_rows: most rows.
    :param row_shape: the shape of one row of an array (``()`` for a vector).
    :param elements: strategy of the values, as :func:`hypothesis.extra.numpy.arrays` takes.
    :param views: also draw non-contiguous arrays.
    :raises TypeError, ValueError: on an argument that is not allowed.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    kind_names = tuple(kinds)
    unknown = [k for k in kind_names if k not in SPLITTABLE_KINDS]
    if not kind_names or unknown:
        raise ValueError(f"kinds must be a non-empty selection of {', '.join(SPLITTABLE_KINDS)}; got {kind_names!r}")
    low = integer(min_rows, "min_rows", minimum=0)
    high = integer(max_rows, "max_rows", minimum=low)
    if not isinstance(row_shape, tuple) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in row_shape
    ):
        raise TypeError(f"row_shape must be a tuple of ints >= 0, got {row_shape!r}")
    dtypes = dtype if isinstance(dtype, st.SearchStrategy) else st.just(np.dtype(dtype))
    if "series" in kind_names or "dataframe" in kind_names:
        import pandas  # noqa: F401  (fail now, with a clear ImportError, rather than mid-test)
    if "sparse" in kind_names:
        import scipy.sparse  # noqa: F401
    layouts = _LAYOUTS if views else _LAYOUTS[:1]

    @st.composite
    def draw_input(draw: st.DrawFn) -> Any:
        kind = draw(st.sampled_from(kind_names))
        chosen = np.dtype(draw(dtypes))
        rows = draw(st.integers(low, high))
        shape = (rows, *row_shape)
        if kind in ("series", "sparse"):
            shape = (rows,) if kind == "series" else (rows, max(1, int(np.prod(row_shape, dtype=np.int64))))
        elif kind == "dataframe":
            shape = (rows, max(1, int(np.prod(row_shape, dtype=np.int64))))
        # Drawn for every kind, so that the first kind is also the simplest to hypothesis.
        layout = draw(st.sampled_from(layouts))
        if kind != "array":
            layout = "contiguous"
        drawn_shape = (2 * rows, *shape[1:]) if layout == "strided" else shape
        values = draw(hnp.arrays(chosen, drawn_shape, elements=elements))
        if layout == "strided":
            values = values[::2]
        elif layout == "reversed":
            values = values[::-1]
        elif layout == "fortran":
            values = np.asfortranarray(values)
        return _as_kind(kind, values, draw)

    return draw_input()


def _as_kind(kind: str, values: np.ndarray, draw: st.DrawFn) -> Any:
    if kind == "array":
        return values
    if kind == "list":
        return values.tolist()
    if kind == "tuple":
        return tuple(values.tolist())
    if kind == "series":
        import pandas as pd

        return pd.Series(values, name="x")
    if kind == "dataframe":
        import pandas as pd

        return pd.DataFrame(values, columns=[f"c{i}" for i in range(values.shape[1])])
    import scipy.sparse as sp

    if values.dtype.kind not in "biufc":
        raise TypeError(f"sparse inputs need a numeric dtype, got {values.dtype}")
    # Zero about half the entries so that the matrix is sparse, not dense-in-disguise.
    keep = draw(hnp.arrays(np.bool_, values.shape))
    values = np.where(keep, values, values.dtype.type(0))
    return getattr(sp, draw(st.sampled_from(_SPARSE_FORMATS)))(values)
