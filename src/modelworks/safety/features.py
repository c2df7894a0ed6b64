"""Text features for the safety classifiers: hashed word and character n-grams, TF-IDF weighted.

Words (runs of two or more word characters, lower-cased) give unigrams and bigrams; each word padded with spaces
gives character 2- to 5-grams (sklearn's `char_wb`). Each n-gram is hashed (CRC-32) into one of 2^16 buckets,
words and characters in separate halves of the vector; counts become 1 + log(count), are weighted by the
inverse document frequency learnt in training, and the vector is scaled to unit length. Character n-grams
catch spelling games (`k1ll`, `h8`) that whole words miss. About 2 ms a thousand characters in pure Python.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

BITS = 16
BUCKETS = 1 << BITS
DIMENSIONS = 2 * BUCKETS  # words, then characters
WINDOW_CHARS = 2000       # long texts are scored in windows of about this many characters; the highest wins

_WORD = re.compile(r"\w\w+")
_MASK = BUCKETS - 1


def counts(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    get = out.get
    crc = zlib.crc32
    lowered = text.lower()
    words = _WORD.findall(lowered)
    previous = None
    for word in words:
        b = crc(word.encode()) & _MASK
        out[b] = get(b, 0) + 1
        if previous is not None:
            b = crc(f"{previous} {word}".encode()) & _MASK
            out[b] = get(b, 0) + 1
        previous = word
    for token in lowered.split():
        padded = f" {token} ".encode()
        size = len(padded)
        for n in (2, 3, 4, 5):
            for i in range(size - n + 1):
                b = BUCKETS + (crc(padded[i:i + n]) & _MASK)
                out[b] = get(b, 0) + 1
            if n >= size:
                break
    return out


def vector(text: str, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, unit-length TF-IDF values) of one text."""
    found = counts(text)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    index = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
    values = np.fromiter((1.0 + math.log(c) for c in found.values()), dtype=np.float32, count=len(found))
    values *= idf[index]
    norm = float(np.sqrt(values @ values))
    if norm > 0:
        values /= norm
    return index, values


def windows(text: str, size: int = WINDOW_CHARS) -> list[str]:
    """Split a long text at whitespace into pieces of about `size` characters (a short text is one piece)."""
    if len(text) <= size * 1.5:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces
