"""``assert_parallel_equivalent``: run a ``@parallel`` function every way and compare."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .._options import Seed
from .._parallel import AsyncParallelFunction, BoundParallelFunction, ParallelFunction
from .._seeding import chunk_seed, root_seed_sequence
from ..errors import ConcMLError, ParityError
from ._equivalence import _show, check_tolerances, compare_results, find_difference

__all__ = ["DEFAULT_BACKENDS", "assert_parallel_equivalent"]

#: a ``@parallel`` function, sync or ``async def``
_Decorated = ParallelFunction[..., Any] | AsyncParallelFunction[..., Any]

#: backends compared with the sequential run when ``backends`` is not given
DEFAULT_BACKENDS = ("thread", "process", "async")


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any = None
    error: Exception | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"raised {type(self.error).__qualname__}: {self.error}"
        return f"returned {_show(self.value)}"


def _choices(name: str, value: object, *, single: tuple[type, ...]) -> tuple[Any, ...]:
    """``value`` as a non-empty tuple of choices; a single choice may be given bare."""
    if value is None or isinstance(value, single):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        choices = tuple(value)
        if choices:
            return choices
        raise ValueError(f"{name} must not be empty")
    raise TypeError(f"{name} must be one value or an iterable of values, not {type(value).__name__} {value!r}")


def _outcome(run: Callable[[], Any]) -> _Outcome:
    try:
        return _Outcome(value=run())
    except Exception as error:
        return _Outcome(error=error)


def _resolve(value: Any, is_async: bool) -> Any:
    """The result of a call: ``value`` itself, or awaited for an ``async def`` function."""
    if not is_async:
        return value
    import anyio

    async def wait() -> Any:
        return await value

    return anyio.run(wait)


def _same_outcome(actual: _Outcome, expected: _Outcome, rtol: float, atol: float) -> str | None:
    """Why ``actual`` differs from ``expected``, or ``None`` if it does not."""
    if expected.error is not None or actual.error is not None:
        if expected.error is not None and actual.error is not None and type(actual.error) is type(expected.error):
            return None
        return f"it {actual.describe()}, but the reference {expected.describe()}"
    comparison = compare_results(actual.value, expected.value, rtol=rtol, atol=atol)
    return None if comparison.equivalent else comparison.message()


def assert_parallel_equivalent(
    func: ParallelFunction[..., Any] | AsyncParallelFunction[..., Any] | BoundParallelFunction[..., Any],
    *args: Any,
    backends: str | Iterable[str] | None = None,
    workers: int | Iterable[int | None] | None = 2,
    chunks: int | Iterable[int | None] | None = (None, 3),
    seed: Seed = 0,
    whole: bool = False,
    rtol: float = 0,
    atol: float = 0,
    **kwargs: Any,
) -> None:
    """Assert that ``func(*args, **kwargs)`` gives the same result on every backend as sequentially.

    Every combination of ``backends`` x ``workers`` x ``chunks`` is run with the same
    ``seed`` and compared, with :func:`assert_equivalent`, to ``func.sequential`` run with
    the same chunking (so per-chunk ``rng`` streams match). With ``whole=True`` each
    sequential result is also compared to the undecorated function called once on the
    whole input: that holds only for chunk-invariant functions (element-wise work) whose
    ``combine`` rebuilds the whole output (``"concat"``); a function with an ``rng``
    parameter then gets the stream chunk 0 would get, so only a one-chunk run matches it.

    Errors are results too: if the reference raises, every run must raise an exception of
    the same type (and a run that raises where the reference returns is a difference). An
    error of conc-ml itself in the reference run (a :class:`~conc_ml.SplitError`, say) is
    raised as it is: runs that all fail before doing anything prove nothing.
    The function must not change its input: it is checked after each run, since in-place
    changes reach the caller with threads but not with processes.

    ``async def`` functions are run with :func:`anyio.run`, so call this from sync code.

    :param func: a function decorated with :func:`conc_ml.parallel`.
    :param args: positional arguments of the call; an iterator is refused, since every
        run needs the whole input.
    :param backends: backend name(s) to compare; default ``thread``, ``process``, ``async``.
    :param workers: pool size(s); ``None`` keeps the function's own setting.
    :param chunks: chunk count(s); ``None`` keeps the function's own setting.
    :param seed: root of the per-chunk ``rng`` streams, the same for every run.
    :param whole: also compare with ``func.__wrapped__`` on the whole input.
    :param rtol: relative tolerance of the comparison (see :func:`assert_equivalent`).
    :param atol: absolute tolerance of the comparison.
    :param kwargs: keyword arguments of the call.
    :raises ParityError: naming the backend, workers and chunks of the first run that
        differs, and where and by how much its result differs.
    :raises TypeError: if ``func`` is not a ``@parallel`` function, or an argument is an iterator.
    :raises ValueError: if ``seed`` is ``None`` while ``func`` takes ``rng`` (runs could never agree).
    :raises BackendUnavailableError: if a backend is unknown or not installed.
    :raises ConcMLError: the error of the sequential run, if conc-ml itself refused it.
    """
    func, args = _decorated_function(func, args)
    rtol, atol = check_tolerances(rtol, atol)
    backend_names = _choices("backends", DEFAULT_BACKENDS if backends is None else backends, single=(str,))
    worker_counts = _choices("workers", workers, single=(int,))
    chunk_counts = _choices("chunks", chunks, single=(int,))
    name = getattr(func.__wrapped__, "__qualname__", repr(func.__wrapped__))
    check_input = _InputCheck(name, _whole_input(func, name, seed, args, kwargs))

    # Build every variant first: bad options fail before anything runs.
    variants: list[tuple[str, Any, Any, _Decorated]] = []
    for backend, worker_count, chunk_count in itertools.product(backend_names, worker_counts, chunk_counts):
        overrides: dict[str, Any] = {"backend": backend, "seed": seed}
        if worker_count is not None:
            overrides["workers"] = worker_count
        if chunk_count is not None:
            overrides["chunks"] = chunk_count
        variants.append((backend, worker_count, chunk_count, func.options(**overrides)))

    whole_outcome: _Outcome | None = None
    if whole:
        whole_outcome = _outcome(functools.partial(_call_whole, func, args, kwargs, seed))
        check_input(f"the call of {name}() on the whole input")

    references: dict[tuple[Any, Any], _Outcome] = {}
    for backend, worker_count, chunk_count, variant in variants:
        setting = f"workers={worker_count!r}, chunks={chunk_count!r}"
        key = (worker_count, chunk_count)
        if key not in references:
            references[key] = _reference(variant, args, kwargs, f"{name}.sequential() with {setting}", check_input)
            if whole_outcome is not None:
                problem = _same_outcome(references[key], whole_outcome, rtol, atol)
                if problem is not None:
                    raise ParityError(
                        f"{name}.sequential() with {setting}, seed={seed!r} differs from {name}() called on the "
                        f"whole input (whole=True; this holds only for chunk-invariant functions whose combine "
                        f"rebuilds the whole output): {problem}"
                    ) from references[key].error
        outcome = _outcome(functools.partial(_run_parallel, variant, args, kwargs))
        check_input(f"the run on backend {backend!r} with {setting}")
        problem = _same_outcome(outcome, references[key], rtol, atol)
        if problem is not None:
            raise ParityError(
                f"{name}() on backend {backend!r} with {setting}, seed={seed!r} differs from {name}.sequential(): "
                f"{problem}"
            ) from outcome.error


def _decorated_function(func: object, args: tuple[Any, ...]) -> tuple[_Decorated, tuple[Any, ...]]:
    """The ``@parallel`` function to run, and its positional arguments.

    :raises TypeError: if ``func`` is not a ``@parallel`` function.
    """
    if isinstance(func, BoundParallelFunction):
        # A method looked up on an instance: the same call as the class's function with
        # the instance first.
        args = (func._target, *args)
        func = func._function
    if not isinstance(func, ParallelFunction | AsyncParallelFunction):
        raise TypeError(
            f"assert_parallel_equivalent needs a function decorated with @conc_ml.parallel, "
            f"got {type(func).__qualname__} {func!r}"
        )
    return func, args


def _whole_input(
    func: _Decorated, name: str, seed: Seed, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, checked to be the same input for every run.

    :raises ValueError: if ``seed`` is ``None`` while ``func`` takes ``rng``.
    :raises TypeError: if an argument is an iterator (the first run would use it up).
    """
    rng_param = func._call_signature.rng_param
    if seed is None and rng_param is not None:
        raise ValueError(
            f"{name}() takes {rng_param!r}, so seed=None would give every run fresh random streams and "
            "no two runs could agree; pass an int seed"
        )
    arguments = func._call_signature.bind(args, kwargs, apply_defaults=False).arguments
    for parameter, value in arguments.items():
        if isinstance(value, Iterator):
            raise TypeError(
                f"argument {parameter!r} of {name}() is an iterator, which the first run would use up; "
                "pass a list (or another sequence) so that every run gets the whole input"
            )
    return arguments


class _InputCheck:
    """Checks, after each run, that the function left its input as it was."""

    def __init__(self, name: str, arguments: dict[str, Any]):
        self.name = name
        self.arguments = arguments
        self.snapshot = _snapshot(arguments)

    def __call__(self, what: str) -> None:
        """:raises ParityError: if the run ``what`` changed the input."""
        if self.snapshot is None:
            return
        found = find_difference(dict(self.arguments), self.snapshot, name="arguments")
        if found is not None:
            raise ParityError(
                f"{self.name}() changed its input during {what}: {found}. Threads see such changes and processes "
                "do not, so results would depend on the backend; copy the input inside the function first"
            )


def _reference(
    variant: _Decorated, args: tuple[Any, ...], kwargs: dict[str, Any], what: str, check_input: _InputCheck
) -> _Outcome:
    """The sequential run that the runs with the same chunking are compared to.

    :raises ConcMLError: if conc-ml refused the call itself (an input it cannot split, ...):
        that every run fails alike would prove nothing, so it is not an "equivalent" error.
    """
    reference = _outcome(functools.partial(_run_sequential, variant, args, kwargs))
    if isinstance(reference.error, ConcMLError):
        raise reference.error
    check_input(what)
    return reference


def _run_sequential(variant: _Decorated, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _resolve(variant.sequential(*args, **kwargs), variant.is_async)


def _run_parallel(variant: _Decorated, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Not variant(...): under ``pytest --conc-bench`` that call would be intercepted and timed.
    return _resolve(variant._run(args, kwargs, intercept=False), variant.is_async)


def _call_whole(func: _Decorated, args: tuple[Any, ...], kwargs: dict[str, Any], seed: Seed) -> Any:
    rng_param = func._call_signature.rng_param
    if rng_param is not None:
        # The stream chunk 0 gets: a one-chunk call then matches the whole call exactly.
        kwargs = {**kwargs, rng_param: np.random.default_rng(chunk_seed(root_seed_sequence(seed), 0))}
    return _resolve(func.__wrapped__(*args, **kwargs), func.is_async)


def _snapshot(arguments: dict[str, Any]) -> dict[str, Any] | None:
    """A deep copy of the arguments to check them against, or ``None`` if none can serve."""
    try:
        snapshot = copy.deepcopy(dict(arguments))
    except Exception:
        # Something that cannot be copied (a lock, a connection): skip the input check.
        return None
    # A copy that does not compare equal to its original (an object without __eq__) would
    # report a change that never happened: skip the check rather than cry wolf.
    return snapshot if find_difference(dict(arguments), snapshot) is None else None
