"""``python -m conc_ml info``: what conc-ml sees on this machine."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _info() -> str:
    from threadpoolctl import threadpool_info

    from . import __version__
    from ._system import usable_cpus
    from .backends import available_backends

    lines = [
        f"conc-ml {__version__} on Python {platform.python_version()} ({sys.platform})",
        f"CPUs: {os.cpu_count()} logical, {usable_cpus()} usable (affinity and cgroup quota)",
        "backends:",
    ]
    for name, ok in available_backends().items():
        lines.append(f"  {name:<12} {'available' if ok else 'not installed'}")
    import numpy  # noqa: F401  (loads the BLAS library so that threadpoolctl can see it)

    pools = threadpool_info()
    lines.append("BLAS/OpenMP thread pools:" if pools else "BLAS/OpenMP thread pools: none loaded")
    for pool in pools:
        api, threads = pool.get("internal_api", "?"), pool.get("num_threads", "?")
        lines.append(f"  {api:<10} {threads:>3} threads  {pool.get('filepath', '')}")
    for variable in ("CONC_ML_BACKEND", "CONC_ML_WORKERS", "CONC_ML_DASK_ADDRESS"):
        if variable in os.environ:
            lines.append(f"{variable}={os.environ[variable]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conc_ml`` and the ``conc-ml`` command."""
    parser = argparse.ArgumentParser(prog="python -m conc_ml", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print CPUs, available backends, BLAS libraries and their threads")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
