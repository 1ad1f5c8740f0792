"""A hook through which the pytest plugin sees every top-level ``@parallel`` call.

Private to the distribution: ``pytest_conc_ml`` installs an interceptor while
``--conc-bench`` is on; without one, a call pays a single ``is None`` check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._split import is_lazy_iterable, plan_chunks

if TYPE_CHECKING:
    from ._options import ParallelOptions
    from ._parallel import AsyncParallelFunction, ParallelFunction

__all__ = ["InterceptedCall", "current_interceptor", "intercept_calls"]


@dataclasses.dataclass(frozen=True, slots=True)
class InterceptedCall:
    """A call to a ``@parallel`` function, held for the interceptor to run as it likes.

    :ivar function: the decorated function (``function.__wrapped__`` is the user's).
    :ivar args: positional arguments of the call.
    :ivar kwargs: keyword arguments of the call.
    :ivar options: the call's resolved options (after config, environment, ``.options()``).
    """

    function: ParallelFunction[..., Any] | AsyncParallelFunction[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: ParallelOptions

    @property
    def is_async(self) -> bool:
        """Whether the function is ``async def`` (then :meth:`run` returns an awaitable)."""
        return self.function.is_async

    def with_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InterceptedCall:
        """The same call on other arguments (a copy of these, for a round that must not touch the caller's)."""
        return dataclasses.replace(self, args=args, kwargs=kwargs)

    def run(self, **overrides: Any) -> Any:
        """Run the call in parallel, with ``overrides`` (``@parallel`` keywords) on top.

        A ``checkpoint`` is left out unless ``overrides`` name one: each timed round must run
        its chunks, not load those of the round before, and rounds on copies must not write.
        """
        overrides = {"checkpoint": None, **overrides}
        return self.function.options(**overrides)._run(self.args, self.kwargs, intercept=False)

    def run_as_written(self, **overrides: Any) -> Any:
        """Run the call as the test wrote it (its ``checkpoint`` included), ``overrides`` on top."""
        return self.function.options(**overrides)._run(self.args, self.kwargs, intercept=False)

    def run_sequential(self, **overrides: Any) -> Any:
        """Run the call with the sequential backend: the reference result."""
        return self.function.options(**overrides)._run(self.args, self.kwargs, intercept=False, backend="sequential")

    def shape(self, **overrides: Any) -> tuple[str, int, int | None]:
        """Backend, workers and chunk count that :meth:`run` with ``overrides`` uses.

        The chunk count is ``None`` for an iterator cut lazily by ``chunk_size``. Call it on
        a :meth:`replayable` call: counting chunks reads iterators passed with ``chunks=``.
        """
        function = self.function.options(**overrides)
        options = function.resolved_options()
        workers = options.resolved_workers()
        # Only binds and counts: no backend is started, nothing preloaded, no checkpoint opened.
        signature = function._call_signature
        try:
            names = signature.split_names(options.split)
            values = signature.bind(self.args, self.kwargs).values(names)
            plan = plan_chunks(values, names, chunks=options.chunks, chunk_size=options.chunk_size, workers=workers)
        except Exception:
            # The run itself reports a bad call; the shape then shows what the options say.
            return options.backend, workers, options.chunks
        return function._backend_name(options, None), workers, plan.n_chunks

    def replayable(self) -> InterceptedCall | None:
        """This call with lazy split arguments made lists, or ``None`` if it cannot be rerun.

        Lazy chunks are lists, so cutting the materialised list gives the same chunks. An
        iterator passed whole (not split) cannot be given twice: then ``None``.
        """
        signature = self.function._call_signature
        try:
            bound = signature.bind(self.args, self.kwargs, apply_defaults=False)
            split_names = signature.split_names(self.options.split)
        except (TypeError, ValueError):
            return self  # the run raises the user's error
        lists = {
            name: list(value)
            for name in split_names
            if (value := bound.arguments.get(name)) is not None and is_lazy_iterable(value)
        }
        if any(isinstance(v, Iterator) for k, v in bound.arguments.items() if k not in split_names):
            return None
        if not lists:
            return self
        args, kwargs = bound.replace(lists).args_and_kwargs()
        return InterceptedCall(self.function, args, kwargs, self.options)


Interceptor = Callable[[InterceptedCall], Any]

_interceptor: Interceptor | None = None
_lock = threading.Lock()


def current_interceptor() -> Interceptor | None:
    """The installed interceptor, if any."""
    return _interceptor


@contextlib.contextmanager
def intercept_calls(interceptor: Interceptor) -> Iterator[None]:
    """Route every top-level ``@parallel`` call made inside the block through ``interceptor``.

    Process-wide (calls from other threads are seen too); calls made inside workers are
    never intercepted. Blocks may nest; the innermost wins.
    """
    global _interceptor
    with _lock:
        previous, _interceptor = _interceptor, interceptor
    try:
        yield
    finally:
        with _lock:
            _interceptor = previous
