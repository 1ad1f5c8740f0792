"""pytest plugin of conc-ml: ``pytest --conc-bench`` checks parity and reports speedups.

PYTEST_DONT_REWRITE: the plugin holds no test asserts, and may be imported before ``pytest.main()``.
"""
