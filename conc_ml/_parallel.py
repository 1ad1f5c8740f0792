"""The ``@parallel`` decorator and the wrapper it returns."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeAlias,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
    overload,
)

from . import _intercept
from ._call import CallSignature
from ._checkpoint import open_ledger
from ._engine import PreparedCall, run_call, run_call_async, stream_call, stream_call_async
from ._methods import MethodKind, bind_target, unwrap_method
from ._options import (
    Combine,
    ParallelOptions,
    Seed,
    Split,
    current_config,
    environment_layer,
    merge_layers,
    validate_layer,
)
from ._runner import ChunkTask
from ._seeding import chunk_seed, root_seed_sequence
from ._sendable import refuse_open_files
from ._split import Chunk, in_index_order, plan_chunks
from ._system import inside_worker
from .backends import CallInfo, checked_settings, get_backend

__all__ = ["AsyncParallelFunction", "BoundParallelFunction", "ParallelFunction", "ParallelKwargs", "parallel"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")

#: a ``@parallel`` function, sync or ``async def`` (the only two kinds ever created)
_Decorated: TypeAlias = "ParallelFunction[..., Any] | AsyncParallelFunction[..., Any]"


class ParallelKwargs(TypedDict, total=False):
    """Keyword arguments of :func:`parallel` and :meth:`ParallelFunction.options`."""

    backend: str
    chunks: int | None
    chunk_size: int | None
    workers: int | None
    split: Split
    combine: Combine
    seed: Seed
    timeout: float | None
    progress: bool
    retries: int
    checkpoint: str | os.PathLike[str] | None


class _ParallelBase(Generic[P, R]):
    """What the sync and async wrappers share: options, binding to instances, preparing a call.

    ``R`` is what one chunk gives back (for an ``async def`` function, what its coroutine
    gives). The siblings :class:`ParallelFunction` and :class:`AsyncParallelFunction` add
    the calls, plain or awaited.
    """

    is_async: ClassVar[bool]

    def __init__(
        self,
        func: Callable[P, Any],
        layer: dict[str, Any],
        overrides: dict[str, Any] | None = None,
        method_kind: MethodKind = MethodKind.FUNCTION,
    ):
        # Not a callable itself: the siblings add ``__call__``.
        functools.update_wrapper(cast(Callable[..., Any], self), func)
        self._method_kind = method_kind
        self.__wrapped__: Callable[P, Any] = func
        self._layer = layer
        self._overrides = overrides or {}
        self._name = getattr(func, "__qualname__", repr(func))
        self._call_signature = CallSignature.of(func, self._name, method_kind)
        # Fail at decoration time on a split that names no parameter (or no parameter at all).
        self._call_signature.split_names({**layer, **self._overrides}.get("split"))

    def __repr__(self) -> str:
        return f"<parallel function {self._name} {self._layer}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside workers the wrapper is rebuilt around the plain function.
        return (type(self), (self.__wrapped__, self._layer, self._overrides, self._method_kind))

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(
        self: _ParallelBase[Concatenate[Any, Q], R], instance: object, owner: type[Any] | None = None
    ) -> BoundParallelFunction[Q, R]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        """Bind to the instance (or class) a method is looked up on, as a ``def`` would."""
        if instance is None and self._method_kind is not MethodKind.CLASS:
            return self
        target = bind_target(self._method_kind, instance, owner)
        if target is None:
            return self
        return BoundParallelFunction(cast("_Decorated", self), target)

    # -- options ------------------------------------------------------------------

    def resolved_options(self) -> ParallelOptions:
        """The options a call made now would use, after every layer of precedence."""
        return merge_layers(environment_layer(), self._layer, current_config(), self._overrides)

    def options(self, **overrides: Unpack[ParallelKwargs]) -> Self:
        """A copy whose calls use ``overrides`` above every other source of options.

        :raises TypeError, ValueError: on a keyword or value that is not allowed.
        """
        layer = validate_layer(overrides, where=f"{self._name}.options()")
        merged = {**self._overrides}
        for exclusive, other in (("chunks", "chunk_size"), ("chunk_size", "chunks")):
            if layer.get(exclusive) is not None:
                merged.pop(other, None)
        merged.update(layer)
        return type(self)(self.__wrapped__, self._layer, merged, self._method_kind)

    # -- preparation ----------------------------------------------------------------

    def _dispatch(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        engine: Callable[[PreparedCall], Any],
        *,
        intercept: bool,
        backend: str | None,
    ) -> Any:
        """Hand the call to the ``--conc-bench`` interceptor if one is installed, else run it with ``engine``.

        :param backend: a backend forced on the call (``.sequential``), above every option.
        """
        options = self.resolved_options()
        if intercept and not inside_worker():
            interceptor = _intercept.current_interceptor()
            if interceptor is not None:
                return interceptor(_intercept.InterceptedCall(cast("_Decorated", self), args, kwargs, options))
        return engine(self._prepare(args, kwargs, options, backend))

    def _backend_name(self, options: ParallelOptions, forced: str | None) -> str:
        if forced is not None:
            return forced
        if inside_worker() and not options.settings.get("allow_nested", False):
            return "sequential"
        if options.backend == "auto":
            return "async" if self.is_async else "process"
        return options.backend

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: ParallelOptions, forced_backend: str | None
    ) -> PreparedCall:
        bound = self._call_signature.bind(args, kwargs)
        names = self._call_signature.split_names(options.split)
        values = bound.values(names)
        rng_param = self._call_signature.rng_param
        if rng_param is not None:
            # Random streams are keyed by chunk position: give them input positions.
            values = [_in_input_order(value) for value in values]
        workers = options.resolved_workers()
        plan = plan_chunks(values, names, chunks=options.chunks, chunk_size=options.chunk_size, workers=workers)
        backend_name = self._backend_name(options, forced_backend)
        backend = get_backend(backend_name)
        if backend.crosses_processes:
            refuse_open_files(bound.arguments, self._name, backend_name)
        checked_settings(backend, options.settings)
        backend.before_call(CallInfo(self.__wrapped__, self._name, bound.arguments, workers, options.settings))
        root = root_seed_sequence(options.seed) if rng_param is not None else None
        allow_nested = bool(options.settings.get("allow_nested", False))

        def make_task(chunk: Chunk) -> ChunkTask:
            seed = None if root is None else chunk_seed(root, chunk.index)
            return bound.task(chunk.index, names, chunk.values, seed=seed, allow_nested=allow_nested)

        return PreparedCall(
            function_name=self._name,
            options=options,
            backend_name=backend_name,
            backend=backend,
            workers=workers,
            plan=plan,
            make_task=make_task,
            function=self.__wrapped__,
            ledger=open_ledger(
                options,
                func=self.__wrapped__,
                function_name=self._name,
                arguments=bound.arguments,
                split_names=names,
                root=root,
                # ``.sequential`` is the reference a resumed run is checked against: it computes.
                reference=forced_backend is not None,
            ),
        )


class ParallelFunction(_ParallelBase[P, R]):
    """A function whose calls are cut into chunks and run on a backend.

    Created by :func:`parallel`. Calling it splits the split argument(s), runs the
    user's function once per chunk and combines the per-chunk results.
    """

    is_async = False
    __wrapped__: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function on chunks of the split argument(s) and combine the results."""
        return self._run(args, kwargs)

    def sequential(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """The same call (same chunks, seeds and combine), chunk after chunk in this thread."""
        return self._run(args, kwargs, intercept=False, backend="sequential")

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[tuple[int, R]]:
        """Yield ``(chunk index, chunk result)`` as chunks finish, in completion order.

        Leaving the loop early cancels the chunks that have not started.
        """
        yield from stream_call(self._prepare(args, kwargs, self.resolved_options(), None))

    def _run(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, intercept: bool = True, backend: str | None = None
    ) -> Any:
        return self._dispatch(args, kwargs, run_call, intercept=intercept, backend=backend)


class BoundParallelFunction(Generic[P, R]):
    """A ``@parallel`` method looked up on an instance (a classmethod: on its class).

    Each call passes the instance (or class) first, whole, like any argument that is not
    split: process and dask workers receive a pickled copy of it, so changes a chunk makes
    to ``self`` stay in the worker (as with any broadcast argument). ``.sequential``,
    ``.options`` and ``.stream`` are bound the same way; ``__wrapped__`` is the plain bound
    method.
    """

    def __init__(self, function: ParallelFunction[..., R] | AsyncParallelFunction[..., R], target: object):
        self._function = function
        self._target = target
        self.__wrapped__: Callable[P, R] = types.MethodType(function.__wrapped__, target)
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(self, name, getattr(function, name, None))

    @property
    def __self__(self) -> object:
        """The instance (or class) the method is bound to."""
        return self._target

    @property
    def is_async(self) -> bool:
        """Whether the method is ``async def`` (calls are then awaited)."""
        return self._function.is_async

    def __repr__(self) -> str:
        return f"<bound parallel method {self._function._name} of {self._target!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundParallelFunction):
            return NotImplemented
        return self._function is other._function and self._target is other._target

    def __hash__(self) -> int:
        return hash((id(self._function), id(self._target)))

    def resolved_options(self) -> ParallelOptions:
        """The options a call made now would use, after every layer of precedence."""
        return self._function.resolved_options()

    def options(self, **overrides: Unpack[ParallelKwargs]) -> BoundParallelFunction[P, R]:
        """A copy, bound to the same instance, whose calls use ``overrides`` above every other source.

        :raises TypeError, ValueError: on a keyword or value that is not allowed.
        """
        return BoundParallelFunction(self._function.options(**overrides), self._target)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the method on chunks of the split argument(s) and combine the results."""
        return self._function(self._target, *args, **kwargs)

    def sequential(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """The same call (same chunks, seeds and combine), chunk after chunk in this thread."""
        return self._function.sequential(self._target, *args, **kwargs)

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Yield ``(chunk index, chunk result)`` as chunks finish (an async iterator for ``async def``)."""
        return self._function.stream(self._target, *args, **kwargs)


def _in_input_order(value: object) -> object:
    """A ``.stream()`` of conc-ml reordered by input position; any other value as it is.

    ``.stream()`` yields ``(index, result)`` pairs in completion order: a stage cut from it
    would give chunk ``i`` whichever results arrived ``i``-th, so its random streams would
    follow the schedule of the stage before. Reordered, chunk ``i`` holds the same items
    on every run, at the cost of holding results that finish ahead of an earlier one.
    """
    if isinstance(value, types.GeneratorType) and value.gi_code in _completion_ordered_code():
        return in_index_order(value)
    return value


@functools.cache
def _completion_ordered_code() -> frozenset[types.CodeType]:
    from ._io_bound import IOBoundFunction

    return frozenset({ParallelFunction.stream.__code__, IOBoundFunction.stream.__code__})


class AsyncParallelFunction(_ParallelBase[P, R]):
    """The wrapper of an ``async def`` function: calls are awaited.

    A sibling of :class:`ParallelFunction` (not a subclass): its calls, ``.sequential``
    and ``.stream`` are the awaited forms of that class's.
    """

    is_async = True
    __wrapped__: Callable[P, Coroutine[Any, Any, R]]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Await the function on chunks of the split argument(s) and combine the results."""
        return await self._run(args, kwargs)

    async def sequential(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """The same call, one chunk after another in the current event loop."""
        return await self._run(args, kwargs, intercept=False, backend="sequential")

    async def stream(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[tuple[int, R]]:
        """Yield ``(chunk index, chunk result)`` as chunks finish.

        Consume it fully, or close it (``contextlib.aclosing``) when leaving early.
        """
        call = self._prepare(args, kwargs, self.resolved_options(), None)
        async with contextlib.aclosing(stream_call_async(call)) as items:
            async for item in items:
                yield item

    def _run(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, intercept: bool = True, backend: str | None = None
    ) -> Awaitable[Any]:
        # The interceptor of an async function returns an awaitable too (see pytest_conc_ml.fixture).
        return cast(Awaitable[Any], self._dispatch(args, kwargs, run_call_async, intercept=intercept, backend=backend))


class _ParallelDecorator(Protocol):
    """What ``parallel(**options)`` returns: a decorator typed for sync and ``async def`` functions alike."""

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncParallelFunction[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, func: Callable[P, R], /) -> ParallelFunction[P, R]: ...


@overload
def parallel(func: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncParallelFunction[P, R]: ...  # type: ignore[overload-overlap]
@overload
def parallel(func: Callable[P, R], /) -> ParallelFunction[P, R]: ...
@overload
def parallel(**options: Unpack[ParallelKwargs]) -> _ParallelDecorator: ...


def parallel(func: Callable[..., Any] | None = None, /, **options: Unpack[ParallelKwargs]) -> Any:
    """Make ``func`` run on chunks of its input, concurrently, and combine the results.

    Usable bare (``@parallel``) or with options (``@parallel(backend="process", chunks=8)``).
    Options are checked here, when the decorator is applied.

    :param backend: ``"sequential"``, ``"thread"``, ``"process"``, ``"async"``, ``"dask"``,
        a registered name, or ``"auto"`` (``"async"`` for ``async def``, else ``"process"``).
    :param chunks: number of chunks (never more than the items); default one per worker.
    :param chunk_size: items per chunk instead of ``chunks``; lazy on iterators.
    :param workers: pool size; default the usable CPUs.
    :param split: the argument(s) to cut: a name, a position or a tuple of names.
    :param combine: ``"list"``, ``"concat"``, ``"sum"``, ``"mean"`` or a callable.
    :param seed: root of the per-chunk streams given to a parameter named ``rng``.
    :param timeout: seconds for the whole call.
    :param progress: show a tqdm bar counting items.
    :param retries: times a chunk is run again after its worker died (same chunk, same
        stream, same result); when a process pool breaks, every chunk in flight counts one.
    :param checkpoint: a folder where each finished chunk is kept, so that the same call
        (function, inputs, chunking, seed) made again, after a crash or a kill, loads them
        and runs only the others. Entries are pickles: trust the folder as you would
        joblib's ``Memory``. ``.sequential`` neither reads nor writes it.
    :raises TypeError, ValueError: on an option that is not allowed.
    :raises BackendUnavailableError: on an unknown or uninstalled backend.
    """
    layer = validate_layer(options, where="@parallel")

    def decorate(target: Callable[..., Any]) -> _ParallelBase[..., Any]:
        target, method_kind = unwrap_method(target)
        if not callable(target):
            raise TypeError(f"@parallel decorates a function, not {type(target).__name__}")
        if isinstance(target, _ParallelBase):
            raise TypeError(f"{target.__wrapped__.__qualname__}() is already decorated with @parallel")
        cls: type[_ParallelBase[..., Any]] = (
            AsyncParallelFunction if inspect.iscoroutinefunction(target) else ParallelFunction
        )
        return cls(target, layer, method_kind=method_kind)

    if func is not None:
        return decorate(func)
    return decorate
