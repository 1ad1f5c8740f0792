"""``@io_bound`` against a real HTTP server: urllib for sync functions, httpx for async ones."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from conc_ml import io_bound

if TYPE_CHECKING:
    from .conftest import LocalServer


class TransientHTTPError(OSError):
    """A 5xx answer: worth another try."""


def get_text(url: str) -> str:
    """Fetch ``url`` with urllib; 5xx becomes :class:`TransientHTTPError`, 4xx stays ``HTTPError``."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500:
            raise TransientHTTPError(f"{error.code} from {url}") from None
        raise


# -- sync functions: urllib on threads --------------------------------------------------


def test_map_returns_results_in_input_order_whatever_the_latency(http_server: LocalServer) -> None:
    fetch = io_bound(concurrency=8)(get_text)
    delays = [0.2, 0.0, 0.1, 0.0, 0.15, 0.05, 0.0, 0.1]
    urls = [f"{http_server.url}/echo/page{i}?delay={d}" for i, d in enumerate(delays)]

    assert fetch.map(urls) == [f"page{i}" for i in range(len(urls))]
    assert sum(http_server.stats.hits.values()) == len(urls)


def test_map_never_exceeds_concurrency_and_reaches_it(http_server: LocalServer) -> None:
    fetch = io_bound(concurrency=4)(get_text)
    urls = [f"{http_server.url}/gate/{i}?open_at=4" for i in range(12)]

    assert fetch.map(urls) == [str(i) for i in range(12)]
    assert http_server.stats.max_in_flight == 4


def test_map_retries_a_server_error_until_it_succeeds(http_server: LocalServer) -> None:
    fetch = io_bound(retries=2, backoff=0.001)(get_text)

    assert fetch.map([f"{http_server.url}/flaky/a?fail=2", f"{http_server.url}/echo/ok"]) == ["3", "ok"]
    assert http_server.stats.hits["/flaky/a"] == 3


def test_map_raises_the_last_error_as_its_own_type_when_retries_run_out(http_server: LocalServer) -> None:
    fetch = io_bound(retries=1, backoff=0.001)(get_text)
    urls = [f"{http_server.url}/echo/ok", f"{http_server.url}/flaky/b?fail=5"]

    with pytest.raises(TransientHTTPError, match="503") as caught:
        fetch.map(urls)
    assert http_server.stats.hits["/flaky/b"] == 2
    assert any("item 1 of get_text.map() after 2 attempt(s)" in note for note in caught.value.__notes__)


def test_return_exceptions_keeps_every_item_in_order_and_does_not_retry_a_404(http_server: LocalServer) -> None:
    fetch = io_bound(retries=3, backoff=0.001, retry_on=TransientHTTPError)(get_text)
    urls = [f"{http_server.url}/echo/a", f"{http_server.url}/missing", f"{http_server.url}/echo/c"]

    results = fetch.map(urls, return_exceptions=True)

    assert results[0] == "a"
    assert results[2] == "c"
    assert isinstance(results[1], urllib.error.HTTPError)
    assert results[1].code == 404
    assert http_server.stats.hits["/missing"] == 1


def test_a_slow_call_times_out_while_the_others_succeed(http_server: LocalServer) -> None:
    fetch = io_bound(concurrency=4, timeout=0.2)(get_text)
    urls = [f"{http_server.url}/echo/fast0", f"{http_server.url}/echo/slow?delay=1.5", f"{http_server.url}/echo/fast2"]

    results = fetch.map(urls, return_exceptions=True)

    assert results[0] == "fast0"
    assert results[2] == "fast2"
    assert isinstance(results[1], TimeoutError)
    assert "timeout=0.2 s" in str(results[1])


def test_stream_yields_every_index_once(http_server: LocalServer) -> None:
    fetch = io_bound(concurrency=3)(get_text)
    urls = [f"{http_server.url}/echo/{i}?delay=0.0{i}" for i in range(7)]

    pairs = list(fetch.stream(urls))

    assert sorted(pairs) == [(i, str(i)) for i in range(7)]


@pytest.mark.anyio
async def test_amap_runs_sync_calls_in_worker_threads_under_the_ceiling(http_server: LocalServer) -> None:
    fetch = io_bound(concurrency=5)(get_text)
    urls = [f"{http_server.url}/gate/{i}?open_at=5" for i in range(15)]

    assert await fetch.amap(urls) == [str(i) for i in range(15)]
    assert http_server.stats.max_in_flight == 5


@pytest.mark.anyio
async def test_amap_retries_and_returns_exceptions(http_server: LocalServer) -> None:
    fetch = io_bound(retries=2, backoff=0.001, retry_on=TransientHTTPError)(get_text)
    urls = [f"{http_server.url}/flaky/c?fail=1", f"{http_server.url}/missing"]

    results = await fetch.amap(urls, return_exceptions=True)

    assert results[0] == "2"
    assert isinstance(results[1], urllib.error.HTTPError)
    assert http_server.stats.hits["/missing"] == 1


# -- async functions: httpx -------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as c:
        yield c


@io_bound(concurrency=6, retries=2, backoff=0.001, retry_on=(httpx.HTTPStatusError, httpx.TransportError))
async def fetch_async(url: str, client: httpx.AsyncClient) -> str:
    response = await client.get(url)
    response.raise_for_status()
    return response.text


@pytest.mark.anyio
async def test_async_map_returns_input_order_and_respects_the_ceiling(
    http_server: LocalServer, client: httpx.AsyncClient
) -> None:
    urls = [f"{http_server.url}/gate/{i}?open_at=6" for i in range(18)]

    assert await fetch_async.map(urls, client=client) == [str(i) for i in range(18)]
    assert http_server.stats.max_in_flight == 6


@pytest.mark.anyio
async def test_single_awaited_calls_share_the_functions_limiter(
    http_server: LocalServer, client: httpx.AsyncClient
) -> None:
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = await fetch_async(f"{http_server.url}/gate/{i}?open_at=6", client)

    async with anyio.create_task_group() as group:
        for i in range(14):
            group.start_soon(one, i)

    assert results == {i: str(i) for i in range(14)}
    assert http_server.stats.max_in_flight == 6


@pytest.mark.anyio
async def test_async_retries_a_server_error_then_raises_its_own_type(
    http_server: LocalServer, client: httpx.AsyncClient
) -> None:
    assert await fetch_async(f"{http_server.url}/flaky/d?fail=2", client) == "3"

    with pytest.raises(httpx.HTTPStatusError, match="503") as caught:
        await fetch_async.map([f"{http_server.url}/echo/x", f"{http_server.url}/flaky/e?fail=9"], client=client)
    assert http_server.stats.hits["/flaky/e"] == 3
    assert any("item 1 of fetch_async.map() after 3 attempt(s)" in note for note in caught.value.__notes__)


@pytest.mark.anyio
async def test_async_return_exceptions_and_timeout(http_server: LocalServer, client: httpx.AsyncClient) -> None:
    @io_bound(timeout=0.2, retry_on=httpx.TransportError)
    async def fetch(url: str) -> str:
        response = await client.get(url)
        response.raise_for_status()
        return response.text

    urls = [f"{http_server.url}/echo/a", f"{http_server.url}/missing", f"{http_server.url}/echo/slow?delay=1.5"]

    results = await fetch.map(urls, return_exceptions=True)

    assert results[0] == "a"
    assert isinstance(results[1], httpx.HTTPStatusError)
    assert results[1].response.status_code == 404
    assert isinstance(results[2], TimeoutError)


@pytest.mark.anyio
async def test_async_stream_yields_each_item_as_it_finishes(
    http_server: LocalServer, client: httpx.AsyncClient
) -> None:
    urls = [f"{http_server.url}/echo/{i}?delay=0.0{i}" for i in range(6)]

    pairs = [pair async for pair in fetch_async.stream(urls, client=client)]

    assert sorted(pairs) == [(i, str(i)) for i in range(6)]


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_async_map_runs_from_sync_code_with_anyio_run(http_server: LocalServer, library: str) -> None:
    @io_bound(concurrency=3)
    async def fetch(url: str) -> str:
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
            return response.text

    urls = [f"{http_server.url}/echo/{i}" for i in range(5)]

    assert anyio.run(fetch.map, urls, backend=library) == [str(i) for i in range(5)]
