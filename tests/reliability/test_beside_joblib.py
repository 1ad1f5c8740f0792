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


_NESTED_PROGRAM = """
    import json
    import numpy as np
    import psutil
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    import conc_ml

    def scores(seeds, data, labels):
        # scikit-learn's n_jobs=-1 inside a chunk, on an array joblib would memory-map
        found = []
        for seed in seeds:
            model = LogisticRegression(C=1.0 + seed, max_iter=50)
            found.append(float(cross_val_score(model, data, labels, cv=2, n_jobs=-1).mean()))
        return found, len(psutil.Process().children(recursive=True))

    if __name__ == "__main__":
        data = np.random.default_rng(0).normal(size=(2000, 200))  # 3.2 MB
        labels = (data[:, 0] > 0).astype(int)
        call = conc_ml.parallel(backend="process", workers=2, chunks=2)(scores)
        chunks = call([0, 1], data, labels)
        alone = [float(cross_val_score(LogisticRegression(C=1.0 + s, max_iter=50), data, labels, cv=2).mean())
                 for s in (0, 1)]
        print("RESULT " + json.dumps({
            "same": [s for found, _ in chunks for s in found] == alone,
            "children_of_workers": [children for _, children in chunks],
        }), flush=True)
"""


def test_scikit_learn_n_jobs_inside_a_process_chunk_stays_in_the_worker_and_prints_nothing(tmp_path: Path) -> None:
    # joblib inside a conc-ml worker behaves as inside one of its own workers: threads, at
    # most the worker's share of the CPUs. A process pool per worker would multiply the
    # processes (workers x CPUs) and leave memory-mapped folders that loky reports as
    # "leaked folder objects" when the workers stop.
    program = write_program(tmp_path, _NESTED_PROGRAM)
    run = run_program(program, cwd=tmp_path, timeout=120)
    assert result_of(run) == {"same": True, "children_of_workers": [0, 0]}
    assert run.stderr == ""
