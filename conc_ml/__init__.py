"""conc-ml: make machine-learning code concurrent with one decorator, and prove it stays correct.

PYTEST_DONT_REWRITE: pytest rewrites the asserts of every package in a distribution that
ships a pytest plugin, and warns when such a package was imported before it started (a
program that imports conc_ml, then calls ``pytest.main()``); conc-ml's code has no test
asserts to rewrite.

``io_bound`` and its classes are imported on first use: they need anyio and asyncio
(about 10 MiB and 40 ms), which ``@parallel`` alone does not, in the caller nor in the
process workers' fork server.
"""

import typing as _typing

from ._options import config as config
from ._parallel import AsyncParallelFunction as AsyncParallelFunction
from ._parallel import BoundParallelFunction as BoundParallelFunction
from ._parallel import ParallelFunction as ParallelFunction
from ._parallel import parallel as parallel
from ._split import register_splitter as register_splitter
from ._warm_up import warm_up as warm_up
from .backends import available_backends as available_backends
from .backends import register_backend as register_backend
from .backends._process._shared_memory import SharedMemoryFallbackWarning as SharedMemoryFallbackWarning
from .backends._process._shared_memory import shared_array as shared_array
from .errors import BackendUnavailableError as BackendUnavailableError
from .errors import ChunkExitError as ChunkExitError
from .errors import ChunkTimeoutError as ChunkTimeoutError
from .errors import ConcMLError as ConcMLError
from .errors import ParityError as ParityError
from .errors import SerializationError as SerializationError
from .errors import SplitError as SplitError
from .errors import WorkerCrashedError as WorkerCrashedError

if _typing.TYPE_CHECKING:
    from ._io_bound import AsyncIOBoundFunction as AsyncIOBoundFunction
    from ._io_bound import IOBoundFunction as IOBoundFunction
    from ._io_bound import io_bound as io_bound

_FROM_IO_BOUND = ("AsyncIOBoundFunction", "IOBoundFunction", "io_bound")

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncIOBoundFunction",
    "AsyncParallelFunction",
    "BackendUnavailableError",
    "BoundParallelFunction",
    "ChunkExitError",
    "ChunkTimeoutError",
    "ConcMLError",
    "IOBoundFunction",
    "ParallelFunction",
    "ParityError",
    "SerializationError",
    "SharedMemoryFallbackWarning",
    "SplitError",
    "WorkerCrashedError",
    "available_backends",
    "config",
    "io_bound",
    "parallel",
    "register_backend",
    "register_splitter",
    "shared_array",
    "warm_up",
]


def __getattr__(name: str) -> _typing.Any:
    if name in _FROM_IO_BOUND:
        from . import _io_bound

        value = getattr(_io_bound, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'conc_ml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
