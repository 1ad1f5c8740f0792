"""Check that parallel results equal sequential ones: assertions and hypothesis strategies.

``assert_equivalent`` compares two results deeply and raises :class:`~conc_ml.ParityError`
naming where they differ; ``assert_parallel_equivalent`` runs a ``@parallel`` function on
several backends and chunkings and compares each run with ``.sequential``;
:mod:`conc_ml.testing.strategies` draws inputs and configurations for property tests (and
says how to keep hypothesis fast with worker processes). Importing this package imports
neither hypothesis nor pandas, scipy or scikit-learn.
"""

from ._equivalence import assert_equivalent as assert_equivalent
from ._parallel_equivalence import assert_parallel_equivalent as assert_parallel_equivalent

__all__ = ["assert_equivalent", "assert_parallel_equivalent"]
