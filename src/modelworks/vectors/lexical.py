"""The full-text half of hybrid search: Okapi BM25 over an in-memory inverted index of chunk terms.

Postings are appended as chunks arrive (chunk numbers only grow), kept as compact arrays (4 bytes for the chunk
number, 4 for the term's count), and scored with NumPy: for a query, each of its terms adds its BM25 weight to
every chunk that holds it. Chunks of removed files are masked by the caller."""

from __future__ import annotations

import math
from array import array
from collections import Counter

import numpy as np

K1 = 0.9   # term-frequency saturation and length normalisation: the values tuned for BM25 on
B = 0.4    # short passages (Anserini's defaults), which score better on SciFact than 1.2 / 0.75


class LexicalIndex:
    __slots__ = ("postings", "lengths", "total_length")

    def __init__(self) -> None:
        self.postings: dict[str, tuple[array, array]] = {}
        self.lengths = array("f")
        self.total_length = 0.0

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, chunk: int, chunk_terms: list[str]) -> None:
        """Index chunk number `chunk` (the next one: numbers are dense and grow)."""
        assert chunk == len(self.lengths), "chunks are added in order"
        self.lengths.append(float(len(chunk_terms)))
        self.total_length += len(chunk_terms)
        for term, count in Counter(chunk_terms).items():
            entry = self.postings.get(term)
            if entry is None:
                entry = self.postings[term] = (array("i"), array("f"))
            entry[0].append(chunk)
            entry[1].append(float(count))

    def scores(self, query_terms: list[str], live: np.ndarray | None = None, live_count: int | None = None,
               live_length: float | None = None) -> tuple[np.ndarray, float]:
        """BM25 of every chunk for the query (0 where no term matches), and the most any chunk could score (every
        term at saturation): their ratio is a score in [0, 1] that means the same whatever the query. `live` masks
        chunks of removed files; the collection statistics (count, mean length, document frequencies) are those
        of the live chunks."""
        n = len(self.lengths)
        out = np.zeros(n, dtype=np.float32)
        best = 0.0
        if n == 0 or not query_terms:
            return out, best
        count = n if live_count is None else live_count
        mean = (self.total_length if live_length is None else live_length) / max(count, 1)
        lengths = np.frombuffer(self.lengths, dtype=np.float32)
        for term, repeats in Counter(query_terms).items():
            entry = self.postings.get(term)
            if entry is None:
                continue
            docs = np.frombuffer(entry[0], dtype=np.int32)
            tf = np.frombuffer(entry[1], dtype=np.float32)
            if live is not None:
                keep = live[docs]
                docs, tf = docs[keep], tf[keep]
            df = len(docs)
            if df == 0:
                continue
            idf = math.log(1.0 + (count - df + 0.5) / (df + 0.5))
            norm = K1 * (1.0 - B + B * lengths[docs] / max(mean, 1e-9))
            out[docs] += (repeats * idf) * (tf * (K1 + 1.0) / (tf + norm))
            best += repeats * idf * (K1 + 1.0)
        return out, best
