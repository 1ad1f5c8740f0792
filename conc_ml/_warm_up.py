"""Paying for worker start and imports before the first call, not during it.

A process pool's first call pays for starting the workers and for the imports that
unpickling the user's function triggers in them (scikit-learn alone takes about a
second). :func:`warm_up` has those modules imported ahead of time: in the fork server the
workers are forked from (see :mod:`conc_ml.backends._process._forkserver`), so that they are
imported once and every worker starts with them, or, when the server already runs or
``CONC_ML_START_METHOD=loky``, in every worker of the pool the call will use. With
``wait=False`` it returns at once, so the work overlaps with whatever the program does
before its first call (loading data).

It is explicit on purpose: starting processes as a side effect of decorating a function
(at import time, during test collection, in a docs build) would surprise more users than
it would help.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["warm_up"]


def _import_in_worker(modules: tuple[str, ...]) -> int:
    from .backends._process._forkserver import ALWAYS  # what running any chunk needs, whatever the functions

    for name in (*ALWAYS, *modules):
        # A module that cannot be imported here fails the real call with a clear error; warming up must not.
        with contextlib.suppress(Exception, SystemExit):
            importlib.import_module(name)
    return os.getpid()


def warm_up(
    *functions: Callable[..., Any],
    workers: int | None = None,
    modules: Iterable[str] = (),
    wait: bool = True,
    timeout: float | None = 120,
) -> None:
    """Have what ``functions`` need imported for the process workers now, before the first call.

    Call it at start-up (or at import of the module that defines the functions), with
    ``wait=False`` to overlap it with loading data. When the fork server has not started
    yet (the usual case), it starts now and imports the modules once; workers forked from
    it later start with them loaded (with ``wait=False`` they are forked by the first
    call, which takes milliseconds). Otherwise, or with ``wait=True``, the pool is started
    now and each worker imports them; a later call on the ``process`` backend with the
    same number of workers then finds warm workers.

    :param functions: ``@parallel`` (or plain) functions whose modules and globals' modules
        are imported in the workers.
    :param workers: pool size; default the first function's ``workers`` option, else the
        usable CPUs. It must match the calls' pool size, or the pool is started again.
    :param modules: further module names to import in the workers.
    :param wait: wait until every worker has imported them; ``False`` returns at once.
    :param timeout: seconds to wait when ``wait`` is true.
    :raises ValueError: if ``workers`` is not a positive integer.
    :raises TimeoutError: if the workers are not ready within ``timeout``.
    """
    from ._parallel import AsyncParallelFunction, ParallelFunction
    from ._system import usable_cpus
    from ._validate import integer
    from .backends._process import _forkserver
    from .backends._process._backend import borrowed_pool
    from .backends._process._forkserver import modules_used_by

    if workers is None:
        first = functions[0] if functions else None
        workers = (
            first.resolved_options().resolved_workers()
            if isinstance(first, ParallelFunction | AsyncParallelFunction)
            else usable_cpus()
        )
    try:
        workers = integer(workers, "workers", minimum=1, rule="a positive integer")
    except TypeError as error:
        raise ValueError(str(error)) from None  # as documented: any pool size that is not allowed
    names = {name for func in functions for name in modules_used_by(func)}
    names.update(modules)
    wanted = tuple(sorted(names))
    if _forkserver.start_method() == "forkserver":
        # The fork server imports the modules once, in the background; each worker forked
        # from it starts with them loaded. If it runs already, the workers import them.
        preloaded = _forkserver.preload(wanted)
        _forkserver.start()
        if preloaded and not wait:
            # Workers are forked when the first call (or a waiting warm_up) needs them:
            # forking is quick once the server has imported everything.
            return
    with borrowed_pool(workers) as executor:
        # One task per worker: an idle worker takes the next queued task, so each gets one
        # while the others are busy importing.
        futures = [executor.submit(_import_in_worker, wanted) for _ in range(workers)]
        if wait:
            done, pending = concurrent.futures.wait(futures, timeout=timeout)
            if pending:
                raise TimeoutError(f"warm_up: {len(pending)} of {workers} workers not ready after {timeout:g} s")
            for future in done:
                future.result()
