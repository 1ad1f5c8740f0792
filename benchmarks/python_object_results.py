"""How the size of a chunk's result, in Python objects, eats the process backend's speedup.

Three functions over the same documents, each cutting them into one chunk per worker:

- ``count_tokens`` returns one int per chunk (the result costs nothing to send back);
- ``count_words`` returns one ``collections.Counter`` per chunk, merged in the caller;
- ``tokenize`` returns the token lists themselves (tens of MB of small str objects).

Each is timed sequentially (``.sequential``: same chunks, in the caller) and on the process
backend, rounds interleaved, and the median of each is reported with the speedup and the
pickled size of the result. Run: ``python -m benchmarks.python_object_results``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import pickle
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from conc_ml import parallel, warm_up


def make_documents(n_documents: int, words_per_document: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(50_000)]
    return [" ".join(rng.choices(vocabulary, k=words_per_document)) for _ in range(n_documents)]


def _tokens(document: str) -> list[str]:
    # A little Python work per word, as a real tokenizer does (lower-case, strip punctuation).
    return [word.lower().strip(".,;:!?") for word in document.split()]


@parallel(backend="process", combine="sum")
def count_tokens(documents: list[str]) -> int:
    return sum(len(_tokens(document)) for document in documents)


@parallel(backend="process", combine="sum")
def count_words(documents: list[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for document in documents:
        counts.update(_tokens(document))
    return counts


@parallel(backend="process", combine="concat")
def tokenize(documents: list[str]) -> list[list[str]]:
    return [_tokens(document) for document in documents]


def _time(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    documents = make_documents(options.documents, options.words)
    functions = {"count_tokens (int)": count_tokens, "count_words (Counter)": count_words, "tokenize (lists)": tokenize}
    for func in functions.values():
        warm_up(func)
        func(documents[:100])
    times: dict[str, dict[str, list[float]]] = {name: {"sequential": [], "process": []} for name in functions}
    for _ in range(options.rounds):
        for name, func in functions.items():
            times[name]["sequential"].append(_time(functools.partial(func.sequential, documents)))
            times[name]["process"].append(_time(functools.partial(func, documents)))
    print(f"{options.documents} documents x {options.words} words, median of {options.rounds} interleaved rounds")
    print("| function (result per chunk) | result, pickled | sequential | process | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for name, func in functions.items():
        size = len(pickle.dumps(func.sequential(documents), protocol=pickle.HIGHEST_PROTOCOL)) / 1e6
        sequential = statistics.median(times[name]["sequential"])
        process = statistics.median(times[name]["process"])
        print(f"| {name} | {size:.1f} MB | {sequential:.2f} s | {process:.2f} s | {sequential / process:.2f}x |")


if __name__ == "__main__":
    main()
