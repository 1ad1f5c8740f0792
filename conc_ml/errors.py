"""Exceptions raised by conc-ml.

Every error conc-ml raises on its own account derives from :class:`ConcMLError` *and*
from the builtin exception a user would already catch, so that ``except TimeoutError``
or ``except ValueError`` keeps working around decorated code.

A user's own exception raised inside a chunk is never wrapped: it is re-raised in the
caller as its own type, with a note naming the chunk, backend and worker, and (for
backends that cross a process boundary) the remote traceback chained as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ChunkExitError",
    "ChunkTimeoutError",
    "ConcMLError",
    "ParityError",
    "RemoteTraceback",
    "SerializationError",
    "SplitError",
    "UnpicklableRemoteError",
    "WorkerCrashedError",
]


class ConcMLError(Exception):
    """Root of every error raised by conc-ml itself."""


class WorkerCrashedError(ConcMLError, RuntimeError):
    """A worker died while running a chunk (a signal, ``os._exit``, the OOM killer).

    :ivar chunk: index of the chunk the worker was running, or ``None`` if unknown.
    :ivar exitcode: the worker's exit code; negative values are ``-signal``.
    """

    def __init__(self, message: str, *, chunk: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.chunk = chunk
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_with_kwargs, (type(self), self.args, {"chunk": self.chunk, "exitcode": self.exitcode}))


class ChunkExitError(ConcMLError, RuntimeError):
    """A chunk called :func:`sys.exit` (raised :class:`SystemExit`).

    Re-raised as it is, it would end the caller's program without a word; it is an error
    of the call instead, with the ``SystemExit`` chained as its cause.

    :ivar code: the exit code the chunk asked for (``SystemExit.code``).
    """

    def __init__(self, message: str, *, code: object = None):
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_with_kwargs, (type(self), self.args, {"code": self.code}))


class ChunkTimeoutError(ConcMLError, TimeoutError):
    """The call's ``timeout`` passed before every chunk finished.

    Chunks still running on a backend that can stop them (processes) were killed.
    """


class SerializationError(ConcMLError, TypeError):
    """An argument or a result cannot be sent to or from a worker."""


class SplitError(ConcMLError, ValueError):
    """Split arguments disagree in length, or an argument's type cannot be split."""


class BackendUnavailableError(ConcMLError, LookupError):
    """The backend name is unknown, or the backend's dependencies are not installed."""


class ParityError(ConcMLError, AssertionError):
    """A parallel result differs from the sequential one (see :mod:`conc_ml.testing`)."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in another process.

    It is chained as the ``__cause__`` of the re-raised exception, so that the
    traceback printed in the caller shows where, in the worker, the error started.
    """

    def __init__(self, traceback_text: str):
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return '\n"""\n' + self.traceback_text.rstrip("\n") + '\n"""'


class UnpicklableRemoteError(ConcMLError, RuntimeError):
    """A worker raised an exception that could not be sent back to the caller.

    :ivar type_name: qualified name of the original exception type.
    :ivar traceback_text: the worker's formatted traceback.
    """

    def __init__(self, message: str, *, type_name: str, traceback_text: str):
        super().__init__(message)
        self.type_name = type_name
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_with_kwargs,
            (type(self), self.args, {"type_name": self.type_name, "traceback_text": self.traceback_text}),
        )


def _rebuild_with_kwargs(
    cls: type[BaseException], args: tuple[object, ...], kwargs: dict[str, object]
) -> BaseException:
    return cls(*args, **kwargs)
