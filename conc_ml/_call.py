"""A call as conc-ml sees it before running it: the signature, the bound arguments, the split names, the tasks.

The decorator (:mod:`conc_ml._parallel`), the interception slot the plugin uses
(:mod:`conc_ml._intercept`) and :mod:`conc_ml.testing` all need to bind a call's
arguments and to know which of them are split; this module is their one home, so that
none of them reaches into another. It imports only the pure pieces below it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._methods import MethodKind, implicit_parameter
from ._runner import ChunkTask

if TYPE_CHECKING:
    from ._options import Split

__all__ = ["RNG_PARAMETER", "BoundCall", "CallSignature"]

#: the parameter that receives each chunk's random ``Generator``
RNG_PARAMETER = "rng"


@dataclasses.dataclass(frozen=True, slots=True)
class CallSignature:
    """What conc-ml reads once, when a function is decorated, from its signature.

    :ivar function: the undecorated function.
    :ivar name: its qualified name, for messages.
    :ivar signature: its own signature.
    :ivar call_signature: what callers pass: the signature without ``rng``, which
        conc-ml supplies to each chunk.
    :ivar rng_param: the name of the parameter that receives the chunk's ``Generator``.
    :ivar method_kind: how the function binds when it is looked up on a class.
    """

    function: Callable[..., Any]
    name: str
    signature: inspect.Signature
    call_signature: inspect.Signature
    rng_param: str | None
    method_kind: MethodKind

    @classmethod
    def of(cls, function: Callable[..., Any], name: str, method_kind: MethodKind) -> CallSignature:
        """Read ``function``'s signature.

        :raises TypeError: if its ``rng`` parameter cannot be passed by keyword.
        """
        signature = inspect.signature(function)
        rng_param = RNG_PARAMETER if RNG_PARAMETER in signature.parameters else None
        call_signature = signature if rng_param is None else _without_rng(signature, name)
        return cls(function, name, signature, call_signature, rng_param, method_kind)

    def split_names(self, split: Split) -> tuple[str, ...]:
        """The names of the parameters that ``split`` (an option value) cuts.

        :raises TypeError: if ``split`` is ``None`` and no parameter can be split.
        :raises ValueError: if ``split`` names or points at a parameter that cannot be split.
        """
        # A method's instance (or class) is never data: positions and the default skip it.
        implicit = implicit_parameter(self.signature, self.method_kind)
        params = [p for p in self.signature.parameters.values() if p.name != implicit]
        splittable = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != RNG_PARAMETER]
        if split is None:
            if not splittable:
                raise TypeError(f"@parallel needs a parameter to split, but {self.name}() has none")
            return (splittable[0].name,)
        if isinstance(split, int):
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if split >= len(positional):
                raise ValueError(f"split={split} but {self.name}() has {len(positional)} positional parameter(s)")
            split = positional[split].name
        names = (split,) if isinstance(split, str) else split
        allowed = [p.name for p in splittable]
        for name in names:
            if name not in allowed:
                raise ValueError(
                    f"split names {name!r}, which is not a parameter of {self.name}() that can be split; "
                    f"expected one of: {', '.join(allowed)}"
                )
        return tuple(names)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, apply_defaults: bool = True) -> BoundCall:
        """Bind one call's arguments, as Python would call the function (``rng`` left out).

        :param apply_defaults: fill in the parameters the call leaves to their defaults.
        :raises TypeError: if the arguments do not fit the signature, or the call passes ``rng``.
        """
        if self.rng_param is not None and self.rng_param in kwargs:
            raise TypeError(
                f"{self.name}() got an explicit {self.rng_param!r}; conc-ml gives each chunk its own "
                f"Generator. Pass seed= to @parallel, .options() or config() instead"
            )
        bound = self.call_signature.bind(*args, **kwargs)
        if apply_defaults:
            bound.apply_defaults()
        return BoundCall(self, dict(bound.arguments))


@dataclasses.dataclass(frozen=True, slots=True)
class BoundCall:
    """One call's arguments, bound to the parameters of a decorated function.

    :ivar signature: the function's :class:`CallSignature`.
    :ivar arguments: parameter names to the values the call gives them.
    """

    signature: CallSignature
    arguments: dict[str, Any]

    def values(self, names: Sequence[str]) -> list[Any]:
        """The values of the parameters ``names`` (the split ones)."""
        return [self.arguments[name] for name in names]

    def replace(self, updates: Mapping[str, Any]) -> BoundCall:
        """The same call with some arguments replaced."""
        return BoundCall(self.signature, {**self.arguments, **updates})

    def args_and_kwargs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments as Python would pass them: positionally where they must be."""
        bound = inspect.BoundArguments(self.signature.call_signature, dict(self.arguments))
        return bound.args, bound.kwargs

    def task(
        self,
        index: int,
        names: Sequence[str],
        values: Sequence[Any],
        *,
        seed: np.random.SeedSequence | None,
        allow_nested: bool,
    ) -> ChunkTask:
        """The task of chunk ``index``, whose split parameters ``names`` get ``values``.

        :param seed: the chunk's seed, when the function takes ``rng``.
        :param allow_nested: let ``@parallel`` calls made by the chunk run in parallel.
        """
        chunk_arguments = {**self.arguments, **dict(zip(names, values, strict=True))}
        rng_param = self.signature.rng_param
        # A keyword-only ``rng`` leaves the positional layout alone: bind as usual. One that
        # could be passed by position sits among the positionals: pass all by keyword.
        if rng_param is None or self.signature.signature.parameters[rng_param].kind is inspect.Parameter.KEYWORD_ONLY:
            chunk_bound = inspect.BoundArguments(self.signature.call_signature, chunk_arguments)
            args, kwargs = chunk_bound.args, chunk_bound.kwargs
        else:
            args, kwargs = _as_keyword_call(self.signature.call_signature, chunk_arguments)
        return ChunkTask(
            func=self.signature.function,
            args=args,
            kwargs=kwargs,
            index=index,
            seed=seed,
            rng_param=rng_param,
            allow_nested=allow_nested,
        )


def _without_rng(signature: inspect.Signature, func_name: str) -> inspect.Signature:
    params = list(signature.parameters.values())
    rng = signature.parameters[RNG_PARAMETER]
    if rng.kind is rng.POSITIONAL_ONLY or (
        rng.kind is rng.POSITIONAL_OR_KEYWORD and any(p.kind is p.VAR_POSITIONAL for p in params)
    ):
        raise TypeError(
            f"{func_name}(): the {RNG_PARAMETER!r} parameter must be passable by keyword (after *args, or "
            "keyword-only), since conc-ml supplies it for each chunk"
        )
    return signature.replace(parameters=[p for p in params if p.name != RNG_PARAMETER])


def _as_keyword_call(signature: inspect.Signature, arguments: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments as a call that passes all it can by keyword (``rng`` joins as a keyword)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if name not in arguments:
            continue
        value = arguments[name]
        if param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        elif param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs
