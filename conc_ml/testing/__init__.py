"""Check that parallel results equal sequential ones: assertions and hypothesis strategies.

``assert_equivalent`` compares two results deeply and raises :class:`~conc_ml.ParityError`
naming where they differ; :mod:`conc_ml.testing.strategies` draws inputs and
configurations for property tests.
"""

from ._equivalence import assert_equivalent as assert_equivalent
from ._parallel_equivalence import assert_parallel_equivalent as assert_parallel_equivalent

__all__ = ["assert_equivalent", "assert_parallel_equivalent"]
