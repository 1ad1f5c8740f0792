"""pytest plugin of conc-ml: ``pytest --conc-bench`` checks parity and reports speedups."""
