"""Imported in conc-ml's fork server: imports the modules the workers will need, once.

The list comes in an environment variable (see :mod:`conc_ml.backends._forkserver`),
which is removed here so that the workers forked from the server do not carry it. A
module that fails to import is skipped whatever it raises: the server must stay up, and
the chunk that needs the module reports the failure itself when the worker imports it.
"""

from __future__ import annotations

import contextlib
import importlib
import os

#: the same name as conc_ml.backends._forkserver.PRELOAD_VARIABLE (not imported from it, to keep this module light)
_VARIABLE = "CONC_ML_PRELOAD_MODULES"


def _preload(names: str) -> None:
    for name in filter(None, names.split(",")):
        with contextlib.suppress(Exception, SystemExit):
            importlib.import_module(name)


_preload(os.environ.pop(_VARIABLE, ""))
