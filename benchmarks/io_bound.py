"""``@io_bound`` next to ``ThreadPoolExecutor.map`` and ``asyncio.gather`` + ``Semaphore``.

N requests, each waiting ``latency`` seconds on the server, ``concurrency`` at a time: the
ideal wall time is ``ceil(N / concurrency) x latency``. Two workloads:

- ``sleep``: the call only waits (``time.sleep`` / ``anyio.sleep``), which isolates what
  the scheduling itself costs;
- ``http``: a real HTTP request to a server on 127.0.0.1 that answers after ``latency``
  (an asyncio server in a process of its own, so that it does not share the client's GIL),
  with urllib on threads, and on asyncio a minimal keep-alive HTTP/1.1 client on anyio
  streams (``--client httpx`` for httpx, whose connection pool, at 100 connections,
  costs far more than the scheduling measured here; both async contenders use the same
  client either way).

Run it as ``python -m benchmarks.io_bound`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import multiprocessing
import multiprocessing.connection
import platform
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Protocol

import anyio
import httpx
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from conc_ml import io_bound

# -- the server -----------------------------------------------------------------------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(latency)
            close = b"connection: close" in request.lower()
            headers = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            writer.write(headers + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed its connection
    finally:
        writer.close()


def _serve(latency: float, connection: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _answer(r, w, latency), host="127.0.0.1", port=0, backlog=2048)
        connection.send(server.sockets[0].getsockname()[1])
        async with server:
            # The parent terminates this process when it is done.
            await server.serve_forever()

    asyncio.run(main())


class LatencyServer:
    """An HTTP server on 127.0.0.1 in a process of its own, answering after ``latency`` seconds."""

    def __init__(self, latency: float):
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(latency, child), daemon=True)
        self._process.start()
        if not parent.poll(30):
            self._process.terminate()
            raise RuntimeError("the benchmark server did not start within 30 s")
        self.url = f"http://127.0.0.1:{parent.recv()}/"

    def close(self) -> None:
        """Stop the server process."""
        self._process.terminate()
        self._process.join(10)

    def __enter__(self) -> LatencyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- async clients ---------------------------------------------------------------------------


class AsyncGetter(Protocol):
    """What the async contenders call: one GET, the body back."""

    async def get(self, url: str) -> bytes: ...

    async def aclose(self) -> None: ...


class KeepAliveClient:
    """A minimal HTTP/1.1 GET client with a pool of keep-alive connections, on anyio streams.

    Enough for a server that answers with ``Content-Length``; it exists so that the
    benchmark measures scheduling, not an HTTP library.
    """

    def __init__(self) -> None:
        self._idle: list[tuple[SocketStream, BufferedByteReceiveStream]] = []

    async def get(self, url: str) -> bytes:
        """GET ``url`` on an idle connection (or a new one) and return the body."""
        parts = urllib.parse.urlsplit(url)
        if self._idle:
            stream, reader = self._idle.pop()
        else:
            stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 80)
            reader = BufferedByteReceiveStream(stream)
        try:
            await stream.send(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            head = await reader.receive_until(b"\r\n\r\n", 65536)
            status = head.split(b" ", 2)[1]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.receive_exactly(length)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        self._idle.append((stream, reader))
        if status != b"200":
            raise OSError(f"HTTP {status.decode()} from {url}")
        return body

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            await self._idle.pop()[0].aclose()


class HttpxGetter:
    """httpx.AsyncClient behind the same two methods."""

    def __init__(self, concurrency: int) -> None:
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=30)

    async def get(self, url: str) -> bytes:
        """GET ``url`` and return the body."""
        response = await self._client.get(url)
        response.raise_for_status()
        return response.content

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


# -- the contenders -------------------------------------------------------------------------


def _urllib_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def contenders(
    workload: str, n: int, *, concurrency: int, latency: float, url: str | None, client: str = "raw"
) -> dict[str, Callable[[], object]]:
    """Name -> a function that runs all ``n`` calls once, for one workload."""
    items: list[object] = [url] * n if url is not None else list(range(n))

    def new_getter() -> AsyncGetter:
        return KeepAliveClient() if client == "raw" else HttpxGetter(concurrency)

    if workload == "sleep":

        def sync_call(item: object) -> object:
            time.sleep(latency)
            return item

        async def async_call(item: object, getter: AsyncGetter) -> object:
            await anyio.sleep(latency)
            return item

    else:

        def sync_call(item: object) -> object:
            return _urllib_get(str(item))

        async def async_call(item: object, getter: AsyncGetter) -> object:
            return await getter.get(str(item))

    sync_bound = io_bound(concurrency=concurrency)(sync_call)
    async_bound = io_bound(concurrency=concurrency)(async_call)

    def executor_map() -> None:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as executor:
            list(executor.map(sync_call, items))

    async def gather_with_semaphore() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        getter = new_getter()

        async def one(item: object) -> object:
            async with semaphore:
                return await async_call(item, getter)

        try:
            await asyncio.gather(*(one(item) for item in items))
        finally:
            await getter.aclose()

    async def io_bound_async_map() -> None:
        getter = new_getter()
        try:
            await async_bound.map(items, getter)
        finally:
            await getter.aclose()

    async def io_bound_amap() -> None:
        await sync_bound.amap(items)

    return {
        "ThreadPoolExecutor.map": executor_map,
        "@io_bound sync .map (threads)": lambda: sync_bound.map(items),
        "@io_bound sync .amap (anyio threads)": lambda: anyio.run(io_bound_amap),
        "asyncio.gather + Semaphore": lambda: asyncio.run(gather_with_semaphore()),
        "@io_bound async .map (asyncio)": lambda: anyio.run(io_bound_async_map),
        "@io_bound async .map (trio)": lambda: anyio.run(io_bound_async_map, backend="trio"),
    }


# -- the run --------------------------------------------------------------------------------


def measure(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Time every contender ``rounds`` times, interleaved so that load drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    return times


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print one table per workload."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each request waits")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", choices=("sleep", "http", "both"), default="both")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="async HTTP client")
    args = parser.parse_args(argv)

    ideal = math.ceil(args.requests / args.concurrency) * args.latency
    print(
        f"{args.requests} requests, latency {args.latency * 1000:g} ms, concurrency {args.concurrency}: "
        f"ideal {ideal:.3f} s; median and best of {args.rounds} rounds "
        f"(Python {platform.python_version()}, {multiprocessing.cpu_count()} CPUs)"
    )
    workloads = ("sleep", "http") if args.workload == "both" else (args.workload,)
    for workload in workloads:
        server = LatencyServer(args.latency) if workload == "http" else None
        try:
            runs = contenders(
                workload,
                args.requests,
                concurrency=args.concurrency,
                latency=args.latency,
                url=server.url if server else None,
                client=args.client,
            )
            for run in runs.values():  # warm up: imports, thread creation, connections
                run()
            times = measure(runs, args.rounds)
        finally:
            if server is not None:
                server.close()
        print(f"\n{workload}")
        print(f"| {'contender':<36} | median s | best s | median / ideal |")
        print(f"| {'-' * 36} | -------: | -----: | -------------: |")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name:<36} | {median:8.3f} | {min(values):6.3f} | {median / ideal:14.2f} |")


if __name__ == "__main__":
    main()
