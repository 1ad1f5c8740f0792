"""conc-ml's process calls and joblib's (scikit-learn's ``n_jobs``) run in one program in silence.

Two copies of loky would mean two resource trackers, each deleting what the other's
workers use: ``KeyError`` tracebacks and "leaked" warnings on stderr at exit.
"""

from __future__ import annotations

from pathlib import Path

from .programs import result_of, run_program, write_program

_PROGRAM = """
    import json
    import numpy as np
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    import conc_ml

    def total(rows):
        return float(np.sum(rows))

    data = np.ones((2000, 200))  # 3.2 MB: joblib memory-maps it for its workers
    labels = np.arange(2000) % 2
    ours = conc_ml.parallel(backend="process", workers=2, chunks=2, combine="sum")(total)(data)
    theirs = sum(Parallel(n_jobs=2)(delayed(total)(data[i::2]) for i in range(2)))
    scores = cross_val_score(LogisticRegression(max_iter=50), data, labels, cv=2, n_jobs=2)
    again = conc_ml.parallel(backend="process", workers=2, chunks=2, combine="sum")(total)(data)
    print("RESULT " + json.dumps([ours, theirs, len(scores), again]), flush=True)
"""


def test_a_process_call_then_joblib_with_memmapped_arrays_prints_nothing(tmp_path: Path) -> None:
    program = write_program(tmp_path, _PROGRAM)
    run = run_program(program, cwd=tmp_path, timeout=120)
    assert result_of(run) == [400000.0, 400000.0, 2, 400000.0]
    assert run.stderr == ""
