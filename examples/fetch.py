"""Fetch many pages with ``@io_bound``, then preprocess them with ``@parallel``.

The two halves of a data pipeline: downloading is I/O-bound (threads waiting on a
server), turning text into features is CPU-bound (processes). A local HTTP server on
127.0.0.1 stands in for the remote one, with a latency per request and a few pages that
fail once before they answer, so that the retries have something to do.

Run it standalone::

    python examples/fetch.py --pages 300 --latency 0.02
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator

import numpy as np

from conc_ml import io_bound, parallel

#: number of hashed buckets in a page's feature vector
N_FEATURES = 256

#: lengths of the character n-grams counted, besides whole words
NGRAM_LENGTHS = (3, 4, 5)

_WORDS = ("model", "data", "train", "loss", "batch", "epoch", "gradient", "feature", "label", "score")


def page_text(index: int) -> str:
    """The text the local server answers for page ``index`` (deterministic)."""
    rng = np.random.default_rng(index)
    words = rng.choice(_WORDS, size=20 + index % 30)
    return f"document {index}: " + " ".join(words)


@contextlib.contextmanager
def serve(latency: float = 0.02, fail_first_every: int = 10) -> Iterator[str]:
    """Run a local page server on 127.0.0.1 and yield its base URL.

    :param latency: seconds the server waits before answering (a remote server's delay).
    :param fail_first_every: every n-th page answers 503 to its first request.
    """
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            index = int(self.path.rsplit("/", 1)[-1])
            time.sleep(latency)  # the remote server's latency
            with lock:
                first_time = self.path not in seen
                seen.add(self.path)
            if first_time and index % fail_first_every == fail_first_every - 1:
                status, body = 503, b"busy, try again"
            else:
                status, body = 200, page_text(index).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = False
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@io_bound(concurrency=32, timeout=10, retries=3, backoff=0.01)
def fetch(url: str) -> str:
    """Download one page (a 503 raises ``HTTPError``, an ``OSError``: retried)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def page_tokens(text: str) -> list[str]:
    """Words, and the character n-grams of :data:`NGRAM_LENGTHS` inside each word."""
    tokens = []
    for word in text.split():
        tokens.append(word)
        for n in NGRAM_LENGTHS:
            tokens.extend(word[i : i + n] for i in range(len(word) - n + 1))
    return tokens


@parallel(combine="concat", workers=2, chunks=4)
def featurize(pages: list[str]) -> np.ndarray:
    """Hashed word and character n-gram counts, one row of :data:`N_FEATURES` per page.

    Four chunks for two workers: pages differ in length, and a worker that finishes its
    chunk early takes the next one instead of waiting for the other.
    """
    features = np.zeros((len(pages), N_FEATURES), dtype=np.int64)
    for row, text in enumerate(pages):
        for token in page_tokens(text):
            # crc32, not hash(): the same token lands in the same bucket in every process.
            features[row, zlib.crc32(token.encode()) % N_FEATURES] += 1
    return features


def run(n_pages: int, latency: float) -> tuple[list[str], np.ndarray]:
    """Fetch ``n_pages`` pages from a local server, then featurize them."""
    with serve(latency=latency) as base:
        pages = fetch.map([f"{base}/page/{i}" for i in range(n_pages)])
    return pages, featurize(pages)


def main(argv: list[str] | None = None) -> None:
    """Command line: fetch, featurize, and say how long each half took."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.02, help="server latency per request, in seconds")
    args = parser.parse_args(argv)

    begin = time.perf_counter()
    with serve(latency=args.latency) as base:
        pages = fetch.map([f"{base}/page/{i}" for i in range(args.pages)])
    fetched = time.perf_counter()
    features = featurize(pages)
    done = time.perf_counter()

    one_at_a_time = args.pages * args.latency
    print(f"fetched {len(pages)} pages in {fetched - begin:.2f} s (one at a time: >= {one_at_a_time:.2f} s)")
    print(f"featurized them into {features.shape} in {done - fetched:.2f} s")


if __name__ == "__main__":
    main()
