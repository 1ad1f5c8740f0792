"""A real HTTP server on 127.0.0.1 for the ``@io_bound`` tests.

Endpoints (all ``GET``):

- ``/echo/<text>?delay=<s>``: answers ``text`` after ``delay`` seconds.
- ``/gate/<text>?open_at=<n>``: holds the request until ``n`` requests are in flight at
  once (the gate then stays open), so that a concurrency ceiling of ``n`` is reached
  exactly, whatever the machine's speed; gives up after :data:`GATE_TIMEOUT`.
- ``/flaky/<key>?fail=<n>``: answers 503 to the first ``n`` requests for ``key``, then 200
  with the number of the request.
- anything else: 404.

The server counts requests per path and the most requests it saw in flight at once.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator

import pytest

#: how long a gated request waits for the others before it is answered anyway
GATE_TIMEOUT = 10.0


@dataclasses.dataclass
class ServerStats:
    """What the server saw; read after the client is done."""

    hits: Counter[str] = dataclasses.field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    gate_opened: threading.Event = dataclasses.field(default_factory=threading.Event)

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
            self.max_in_flight = self.in_flight
            self.gate_opened.clear()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    _left_flight = False

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        # Out of flight before the answer leaves: a client may send its next request as
        # soon as it has read this one, before the handler's thread gets to run again.
        self._leave_flight()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._left_flight = False
        stats = self.server.stats
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")
        with stats.lock:
            stats.hits[url.path] += 1
            hit = stats.hits[url.path]
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            if "open_at" in query and stats.in_flight >= int(query["open_at"]):
                stats.gate_opened.set()
        try:
            if parts[0] == "echo" and len(parts) == 2:
                time.sleep(float(query.get("delay", 0)))  # the simulated latency of a remote server
                self._answer(200, parts[1])
            elif parts[0] == "gate" and len(parts) == 2:
                opened = stats.gate_opened.wait(GATE_TIMEOUT)
                self._answer(200 if opened else 504, parts[1])
            elif parts[0] == "flaky" and len(parts) == 2:
                if hit <= int(query.get("fail", 0)):
                    self._answer(503, "try again")
                else:
                    self._answer(200, str(hit))
            else:
                self._answer(404, "no such page")
        finally:
            self._leave_flight()

    def _leave_flight(self) -> None:
        if not self._left_flight:
            self._left_flight = True
            with self.server.stats.lock:
                self.server.stats.in_flight -= 1


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined on close, so none outlives the fixture.
    daemon_threads = False
    block_on_close = True
    # The default backlog (5) drops connection attempts when many clients connect at once.
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stats = ServerStats()


@dataclasses.dataclass(frozen=True)
class LocalServer:
    """A running server: its base URL and what it saw."""

    url: str
    stats: ServerStats


@pytest.fixture(scope="module")
def _running_server() -> Iterator[LocalServer]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server")
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield LocalServer(f"http://{host!s}:{port}", server.stats)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test HTTP server did not stop"


@pytest.fixture
def http_server(_running_server: LocalServer) -> LocalServer:
    """The module's server on 127.0.0.1, with its counters reset for this test."""
    _running_server.stats.reset()
    return _running_server


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async tests run on both event loops."""
    return str(request.param)
