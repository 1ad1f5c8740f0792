"""Data that must come back whole: masked arrays through ``combine="concat"``, arrays in a small /dev/shm.

Each check runs a user's program in a fresh, bounded Python process. The /dev/shm one
mounts a real 64 MiB tmpfs there (Docker's default size) in a private mount namespace, and
is skipped where the machine does not allow that.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .programs import program_environment, result_of, write_program

_MASKS = """
    import json
    import numpy as np
    import conc_ml

    def masked(items):
        values = np.array(items, dtype=float)
        return np.ma.masked_array(values, mask=values % 3 == 0)

    if __name__ == "__main__":
        found = {}
        for backend in ("sequential", "thread", "process", "dask"):
            f = conc_ml.parallel(backend=backend, workers=2, chunks=3, combine="concat")(masked)
            joined = f(list(range(10)))
            found[backend] = {
                "type": type(joined).__name__,
                "masked": np.ma.getmaskarray(joined).tolist(),
                "values": joined.data.tolist(),
            }
        print("RESULT " + json.dumps(found), flush=True)
"""


def test_concat_keeps_the_masks_of_masked_array_results_on_every_backend(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    program = write_program(tmp_path, _MASKS)
    run = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=program_environment(DASK_TEMPORARY_DIRECTORY=str(tmp_path / "dask")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    expected = {
        "type": "MaskedArray",
        "masked": [i % 3 == 0 for i in range(10)],
        "values": [float(i) for i in range(10)],
    }
    assert result_of(run) == dict.fromkeys(("sequential", "thread", "process", "dask"), expected)


_TWO_ARRAYS_OF_40_MB = """
    import json
    import os
    import warnings
    import numpy as np
    import conc_ml
    from conc_ml.backends._process._backend import shut_down_pool

    def total(rows, a, b):
        return float(a[rows].sum() + b[rows].sum())

    if __name__ == "__main__":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = conc_ml.shared_array((5_000_000,), np.float64)
            b = conc_ml.shared_array((5_000_000,), np.float64)
            # Both passed a free-space check; writing the second's pages is where a segment
            # whose size was only promised (ftruncate) dies with SIGBUS.
            a[:] = 1.0
            b[:] = 2.0
            f = conc_ml.parallel(backend="process", workers=2, chunks=2)(total)
            result = f([0, 1, 2, 3], a, b)
            broadcast = f([0, 1], a, np.full(5_000_000, 3.0))
        del a, b
        shut_down_pool()
        left = sorted(name for name in os.listdir("/dev/shm") if name.startswith("conc-ml-"))
        print("RESULT " + json.dumps({
            "result": result,
            "broadcast": broadcast,
            "warnings": [str(w.message) for w in caught],
            "left": left,
        }), flush=True)
"""

_IN_SMALL_DEV_SHM = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', "sh"]


@functools.cache
def _can_mount_a_private_dev_shm() -> bool:
    try:
        probe = subprocess.run([*_IN_SMALL_DEV_SHM, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_two_arrays_of_40_mb_in_a_64_mb_dev_shm_fall_back_instead_of_killing_the_caller(tmp_path: Path) -> None:
    if not _can_mount_a_private_dev_shm():
        pytest.skip("cannot mount a private tmpfs at /dev/shm here (needs unshare --mount and mount rights)")
    program = write_program(tmp_path / "program", _TWO_ARRAYS_OF_40_MB)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    run = subprocess.run(
        [*_IN_SMALL_DEV_SHM, sys.executable, str(program)],
        cwd=tmp_path,
        env=program_environment(TMPDIR=str(temporary)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode != -signal.SIGBUS, f"the caller died of SIGBUS:\n{run.stderr}"
    result = result_of(run)
    assert result["result"] == [6.0, 6.0]
    assert result["broadcast"] == [4.0, 4.0]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert result["warnings"][0].startswith("conc-ml: /dev/shm has")
    assert result["left"] == []
    assert sorted(path.name for path in temporary.iterdir()) == []
