"""Fetch, preprocess and train at the same time, in bounded memory.

Three stages, each with the tool that suits its work:

1. ``fetch_batch`` downloads one batch of signals from an HTTP server: ``@io_bound``,
   many requests waiting at once, with a timeout and retries;
2. ``preprocess_batches`` turns signals into spectral features: ``@parallel`` on threads
   (numpy releases the GIL);
3. ``train_batches`` fits one classifier per batch: ``@parallel`` on processes
   (scikit-learn's Python code holds it).

Connected by ``.stream``, the stages overlap: while one batch trains, the next ones are
being preprocessed and fetched. The ``@parallel`` stages are cut with ``chunk_size=1`` so
that each reads the stage before it lazily; every stage keeps only a few items in flight
per worker, so the batches held in memory stay few however many there are. Run one stage after
another instead and every batch is in memory at once, and the waiting for the network
is not hidden behind the computing.

The server is started by the example itself, on 127.0.0.1, and answers each request
after a fixed delay that stands for a real network's latency.

Run it::

    python examples/pipeline.py
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import http.server
import io
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from preprocess import extract_features, fit_scaling, make_signals
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from conc_ml import io_bound, parallel

#: signals per batch, and samples per signal
BATCH_ROWS = 256
SIGNAL_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class Batch:
    """One downloaded batch: signals and their labels."""

    batch_id: int
    signals: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Features:
    """One preprocessed batch: a row of features per signal, and the labels."""

    batch_id: int
    rows: np.ndarray
    labels: np.ndarray


class LiveArrays:
    """Counts the arrays that are still alive among those it was shown, and the peak.

    How the example shows that memory stays flat: every downloaded signal array is
    tracked until the garbage collector frees it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = 0
        self.peak = 0

    def track(self, array: np.ndarray) -> None:
        """Count ``array`` until it is freed."""
        with self._lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        weakref.finalize(array, self._freed)

    def _freed(self) -> None:
        with self._lock:
            self.live -= 1

    def reset_peak(self) -> None:
        """Start a new measurement from the arrays alive now."""
        with self._lock:
            self.peak = self.live


#: the downloaded signal arrays of this process
LIVE_BATCHES = LiveArrays()


# -- the server -------------------------------------------------------------------


class _BatchHandler(http.server.BaseHTTPRequestHandler):
    server: _BatchServer

    def do_GET(self) -> None:
        match = re.fullmatch(r"/batch/(\d+)", self.path)
        body = self.server.payloads.get(int(match.group(1))) if match else None
        if body is None:
            self.send_error(404, f"expected /batch/<id> with an id below {len(self.server.payloads)}")
            return
        # Stands for the latency of a real network; the server thread just waits.
        time.sleep(self.server.latency)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the example's output


class _BatchServer(http.server.ThreadingHTTPServer):
    latency = 0.0
    payloads: dict[int, bytes] = {}  # noqa: RUF012 (replaced per instance)


def _payload(batch_id: int, rows: int) -> bytes:
    signals, labels = make_signals(rows, SIGNAL_LENGTH, seed=batch_id)
    body = io.BytesIO()
    np.savez(body, signals=signals, labels=labels)
    return body.getvalue()


@contextlib.contextmanager
def serve_batches(n_batches: int, latency: float = 0.1, *, rows: int = BATCH_ROWS) -> Iterator[tuple[str, int]]:
    """Serve batches ``0 .. n_batches - 1`` on 127.0.0.1 at a free port; yields ``(host, port)``.

    The batches are made before the server starts, as a real server has its data
    stored: the client's timings then measure the client, not the making of data.

    :param n_batches: how many batches the server holds.
    :param latency: seconds each answer waits, standing for the network.
    :param rows: signals per batch.
    """
    server = _BatchServer(("127.0.0.1", 0), _BatchHandler)
    server.latency = latency
    server.payloads = {batch_id: _payload(batch_id, rows) for batch_id in range(n_batches)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- the stages -------------------------------------------------------------------


@io_bound(concurrency=8, timeout=10, retries=2)
def fetch_batch(batch_id: int, *, address: tuple[str, int]) -> Batch:
    """Download batch ``batch_id`` from the server at ``address``.

    A connection that fails or an answer that does not come (``OSError``,
    ``TimeoutError``) is tried again; a batch the server does not have is not.

    :param batch_id: which batch.
    :param address: the server's ``(host, port)``.
    :raises LookupError: if the server has no such batch (404).
    :raises OSError: if the server cannot be reached or answers with another error.
    """
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", f"/batch/{batch_id}")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 404:
        raise LookupError(f"GET /batch/{batch_id} answered 404: the server has no such batch")
    if response.status != 200:
        raise OSError(f"GET /batch/{batch_id} answered {response.status} {response.reason}")
    with np.load(io.BytesIO(body)) as arrays:
        batch = Batch(batch_id, arrays["signals"], arrays["labels"])
    LIVE_BATCHES.track(batch.signals)
    return batch


@parallel(backend="thread", chunk_size=1, combine="concat")
def preprocess_batches(batches: Iterable[Batch], *, center: float, scale: float) -> list[Features]:
    """Spectral features of every batch (see ``examples/preprocess.py``).

    :param batches: downloaded batches.
    :param center: subtracted from every sample.
    :param scale: every sample is divided by it after centring.
    """
    return [
        Features(b.batch_id, extract_features.__wrapped__(b.signals, center=center, scale=scale), b.labels)
        for b in batches
    ]


@parallel(backend="process", chunk_size=1, combine="concat")
def train_batches(features: Iterable[Features], *, epochs: int = 600) -> list[tuple[int, Pipeline]]:
    """Fit one classifier per batch; returns ``(batch id, model)`` pairs.

    The model's seed is its batch's id, not the chunk's position: streamed stages hand
    over batches in the order they finish, and the models must not depend on it.

    :param features: preprocessed batches.
    :param epochs: passes of stochastic gradient descent over each batch.
    """
    return [
        (
            f.batch_id,
            make_pipeline(
                StandardScaler(),
                SGDClassifier(loss="log_loss", max_iter=epochs, tol=None, random_state=f.batch_id),
            ).fit(f.rows, f.labels),
        )
        for f in features
    ]


# -- running them -----------------------------------------------------------------


def run_pipelined(
    batch_ids: Sequence[int], address: tuple[str, int], center: float, scale: float, *, epochs: int = 600
) -> list[tuple[int, Pipeline]]:
    """The three stages overlapping, connected by ``.stream``; models sorted by batch id."""
    fetched = (batch for _, batch in fetch_batch.stream(batch_ids, address=address))
    featured = (f for _, part in preprocess_batches.stream(fetched, center=center, scale=scale) for f in part)
    models = [m for _, part in train_batches.stream(featured, epochs=epochs) for m in part]
    return sorted(models, key=lambda pair: pair[0])


def run_staged(
    batch_ids: Sequence[int], address: tuple[str, int], center: float, scale: float, *, epochs: int = 600
) -> list[tuple[int, Pipeline]]:
    """The three stages one after another, each in parallel; models sorted by batch id."""
    batches = fetch_batch.map(batch_ids, address=address)
    features = preprocess_batches(batches, center=center, scale=scale)
    del batches  # the staged run, too, holds no more than it must
    return sorted(train_batches(features, epochs=epochs), key=lambda pair: pair[0])


def ensemble_accuracy(models: Sequence[tuple[int, Pipeline]], test: Features) -> float:
    """Accuracy on ``test`` of the soft vote of ``models``."""
    mean_proba = np.mean([model.predict_proba(test.rows) for _, model in models], axis=0)
    return float(np.mean(np.argmax(mean_proba, axis=1) == test.labels))


def calibrate(address: tuple[str, int], batch_id: int) -> tuple[float, float, Features]:
    """Fetch one held-out batch: the scaling comes from it, and it is the test set too."""
    batch = fetch_batch(batch_id, address=address)
    center, scale = fit_scaling(batch.signals)
    return (
        center,
        scale,
        Features(batch_id, extract_features.__wrapped__(batch.signals, center=center, scale=scale), batch.labels),
    )


def main(n_batches: int = 48, latency: float = 0.1) -> None:
    """Run the pipeline overlapped and staged, check they agree, report time and memory."""
    batch_ids = list(range(n_batches))
    with serve_batches(n_batches + 1, latency) as address:
        center, scale, test = calibrate(address, batch_id=n_batches)
        run_staged(batch_ids[:4], address, center, scale)  # start pools and workers outside the timing

        LIVE_BATCHES.reset_peak()
        start = time.perf_counter()
        pipelined = run_pipelined(batch_ids, address, center, scale)
        pipelined_s, pipelined_peak = time.perf_counter() - start, LIVE_BATCHES.peak

        LIVE_BATCHES.reset_peak()
        start = time.perf_counter()
        staged = run_staged(batch_ids, address, center, scale)
        staged_s, staged_peak = time.perf_counter() - start, LIVE_BATCHES.peak

    same = [i for i, _ in pipelined] == [i for i, _ in staged] and all(
        np.array_equal(a[-1].coef_, b[-1].coef_) for (_, a), (_, b) in zip(pipelined, staged, strict=True)
    )
    batch_mib = BATCH_ROWS * SIGNAL_LENGTH * 8 / 2**20
    print(f"{n_batches} batches of {BATCH_ROWS} signals ({batch_mib:.0f} MiB each), {latency * 1000:.0f} ms latency")
    print(f"ensemble accuracy on a held-out batch: {ensemble_accuracy(pipelined, test):.3f}")
    print(f"pipelined == staged: {same}")
    print(f"pipelined (stages overlap): {pipelined_s:.2f} s, at most {pipelined_peak} batches in memory")
    print(f"staged (one after another): {staged_s:.2f} s, at most {staged_peak} batches in memory")
    print(f"overlap speedup: {staged_s / pipelined_s:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fetch, preprocess and train, overlapping, in bounded memory.")
    parser.add_argument("--batches", type=int, default=48, help="batches to fetch and train on (48)")
    parser.add_argument("--latency", type=float, default=0.1, help="the server's delay per answer, in seconds (0.1)")
    arguments = parser.parse_args()
    main(arguments.batches, arguments.latency)
