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
MAX_CACHED_TERMS = 50_000  # terms whose BM25 tf parts are kept between queries


class LexicalIndex:
    __slots__ = ("postings", "lengths", "total_length", "impacts")

    def __init__(self) -> None:
        self.postings: dict[str, tuple[array, array]] = {}
        self.lengths = array("f")
        self.total_length = 0.0
        # term -> (mean length, postings count, each posting's tf part of BM25): computed when a query first
        # needs it, and again only when chunks were added or removed since (the mean length moved)
        self.impacts: dict[str, tuple[float, int, np.ndarray]] = {}

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
            impact = self._impact(term, entry, docs, lengths, mean)
            if live is not None:
                keep = live[docs]
                docs, impact = docs[keep], impact[keep]
            df = len(docs)
            if df == 0:
                continue
            idf = math.log(1.0 + (count - df + 0.5) / (df + 0.5))
            out[docs] += impact * np.float32(repeats * idf)
            best += repeats * idf * (K1 + 1.0)
        return out, best

    def _impact(self, term: str, entry, docs: np.ndarray, lengths: np.ndarray, mean: float) -> np.ndarray:
        cached = self.impacts.get(term)
        if cached is not None and cached[0] == mean and cached[1] == len(docs):
            return cached[2]
        tf = np.frombuffer(entry[1], dtype=np.float32)
        norm = K1 * (1.0 - B + B * lengths[docs] / max(mean, 1e-9))
        impact = (tf * (K1 + 1.0) / (tf + norm)).astype(np.float32)
        if len(self.impacts) >= MAX_CACHED_TERMS:
            self.impacts.clear()
        self.impacts[term] = (mean, len(docs), impact)
        return impact
