"""Expected types of ``@parallel`` functions, checked by mypy (see tests/test_typing.py).

Not collected by pytest. Each ``reveal_type(...)`` line ends with the type mypy must
reveal after ``# revealed:`` (written without the ``builtins.`` and ``conc_ml._parallel.``
prefixes); the file must otherwise type-check under the project's strict settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, assert_type, reveal_type

from conc_ml import parallel


def train(items: list[int], scale: float = 1.0) -> int:
    return int(sum(items) * scale)


async def fetch(items: list[int]) -> str:
    return str(items)


@parallel
def bare(items: list[int]) -> int:
    return len(items)


@parallel(chunks=4)
def called(items: list[int]) -> float:
    return float(len(items))


@parallel
async def bare_async(items: list[int]) -> bytes:
    return bytes(items)


@parallel(backend="async", chunks=2)
async def called_async(items: list[int]) -> str:
    return str(items)


reveal_type(parallel(train))  # revealed: ParallelFunction[[items: list[int], scale: float =], int]
reveal_type(parallel(fetch))  # revealed: AsyncParallelFunction[[items: list[int]], str]
reveal_type(bare)  # revealed: ParallelFunction[[items: list[int]], int]
reveal_type(called)  # revealed: ParallelFunction[[items: list[int]], float]
reveal_type(bare_async)  # revealed: AsyncParallelFunction[[items: list[int]], bytes]
reveal_type(called_async)  # revealed: AsyncParallelFunction[[items: list[int]], str]
reveal_type(called_async.options(workers=2))  # revealed: AsyncParallelFunction[[items: list[int]], str]
reveal_type(called.options(workers=2))  # revealed: ParallelFunction[[items: list[int]], float]

# A sync call gives the combined result; an async call gives a coroutine to await.
reveal_type(called([1, 2]))  # revealed: Any
pending = reveal_type(called_async([1, 2]))  # revealed: typing.Coroutine[Any, Any, Any]
pending.close()
reference = reveal_type(called_async.sequential([1, 2]))  # revealed: typing.Coroutine[Any, Any, Any]
reference.close()

assert_type(called.stream([1, 2]), Iterator[tuple[int, float]])
assert_type(called_async.stream([1, 2]), AsyncIterator[tuple[int, str]])
coroutine = assert_type(bare_async([1]), Coroutine[Any, Any, Any])
coroutine.close()


async def awaits() -> None:
    result = await called_async([1, 2])
    reveal_type(result)  # revealed: Any
    async for index, text in called_async.stream([1, 2]):
        reveal_type(index)  # revealed: int
        reveal_type(text)  # revealed: str
