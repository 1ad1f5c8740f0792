"""The default ``retry_on``: transport failures of urllib, requests, httpx and aiohttp, never a 4xx answer."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
import requests

from conc_ml import io_bound
from conc_ml._io_bound import is_transport_failure

if TYPE_CHECKING:
    from .conftest import LocalServer


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def urllib_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def requests_get(url: str) -> str:
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.text


@pytest.mark.parametrize("get", [urllib_get, requests_get], ids=["urllib", "requests"])
def test_a_4xx_answer_is_not_retried_by_default(http_server: LocalServer, get: object) -> None:
    fetch = io_bound(retries=3, backoff=0.001)(get)  # type: ignore[call-overload]

    with pytest.raises((urllib.error.HTTPError, requests.HTTPError)):
        fetch(f"{http_server.url}/nothing-here")
    assert http_server.stats.hits["/nothing-here"] == 1


@pytest.mark.parametrize("get", [urllib_get, requests_get], ids=["urllib", "requests"])
def test_a_5xx_answer_is_retried_by_default(http_server: LocalServer, get: object) -> None:
    fetch = io_bound(retries=3, backoff=0.001)(get)  # type: ignore[call-overload]

    assert fetch.map([f"{http_server.url}/flaky/k?fail=2"]) == ["3"]
    assert http_server.stats.hits["/flaky/k"] == 3


def test_a_refused_connection_is_retried_by_default_with_urllib_and_requests() -> None:
    attempts: list[str] = []

    @io_bound(retries=2, backoff=0.001)
    def connect(url: str) -> str:
        attempts.append(url)
        return urllib_get(url) if len(attempts) % 2 else requests_get(url)

    with pytest.raises(OSError):
        connect(f"http://127.0.0.1:{_closed_port()}/")
    assert len(attempts) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_httpx_transport_failures_are_retried_by_default(http_server: LocalServer) -> None:
    attempts: list[str] = []

    @io_bound(retries=2, backoff=0.001)
    async def get(url: str, timeout: float) -> str:
        attempts.append(url)
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
            response.raise_for_status()
            return response.text

    with pytest.raises(httpx.ConnectError):
        await get(f"http://127.0.0.1:{_closed_port()}/", 30)
    assert len(attempts) == 3
    attempts.clear()
    with pytest.raises(httpx.ReadTimeout):
        await get(f"{http_server.url}/echo/slow?delay=0.5", 0.05)
    assert len(attempts) == 3
    attempts.clear()
    with pytest.raises(httpx.HTTPStatusError):
        await get(f"{http_server.url}/missing", 30)
    assert len(attempts) == 1
    with anyio.fail_after(10):
        assert await get(f"{http_server.url}/echo/fine", 30) == "fine"


def test_aiohttp_connection_errors_count_as_transport_failures_when_aiohttp_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    class ClientConnectionError(Exception):  # what aiohttp's looks like: not an OSError
        pass

    class ServerDisconnectedError(ClientConnectionError):
        pass

    class ClientResponseError(Exception):
        status = 404

    monkeypatch.setitem(
        __import__("sys").modules, "aiohttp", types.SimpleNamespace(ClientConnectionError=ClientConnectionError)
    )
    assert is_transport_failure(ServerDisconnectedError())
    assert not is_transport_failure(ClientResponseError())
    assert not is_transport_failure(ValueError())


def test_an_explicit_retry_on_is_taken_as_given(http_server: LocalServer) -> None:
    fetch = io_bound(retries=2, backoff=0.001, retry_on=urllib.error.HTTPError)(urllib_get)

    with pytest.raises(urllib.error.HTTPError):
        fetch(f"{http_server.url}/also-missing")
    assert http_server.stats.hits["/also-missing"] == 3
