"""conc-ml next to multiprocessing, concurrent.futures, joblib and mpire on the work ML users run.

``python -m benchmarks`` (or ``make bench``) runs every workload with every runner, each in
a fresh process, and prints a markdown table; see ``benchmarks/README.md``.
"""
