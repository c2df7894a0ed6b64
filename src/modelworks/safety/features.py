"""Text features for the safety classifiers: hashed word and character n-grams, TF-IDF weighted.

Words (runs of two or more word characters, lower-cased) give unigrams and bigrams; each word padded with spaces
gives character 2- to 5-grams (sklearn's `char_wb`). Each n-gram is hashed (CRC-32) into one of 2^16 buckets,
words and characters in separate halves of the vector; counts become 1 + log(count), are weighted by the
inverse document frequency learnt in training, and the vector is scaled to unit length. Character n-grams
catch spelling games (`k1ll`, `h8`) that whole words miss. Words are hashed one by one in Python, character
n-grams all at once in NumPy when the text is long enough for that to pay (`_chars_numpy`: the n-gram stage of a
500-token prompt, four windows, 2.1 ms against 3.5 ms one at a time here; the two count alike, the tests check it).
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


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


FAST_FROM = 400  # characters: a shorter text's n-grams are counted one by one (NumPy's fixed costs are more)
_TABLE = _crc_table()                                               # zlib's CRC-32 (the reflected 0xEDB88320)
_LOG = np.array([1.0 + math.log(c) for c in range(1, 4097)], dtype=np.float32)  # 1 + log(count), count 1-4,096


def _words(lowered: str) -> dict[int, int]:
    out: dict[int, int] = {}
    get = out.get
    crc = zlib.crc32
    previous = None
    for word in _WORD.findall(lowered):
        b = crc(word.encode()) & _MASK
        out[b] = get(b, 0) + 1
        if previous is not None:
            b = crc(f"{previous} {word}".encode()) & _MASK
            out[b] = get(b, 0) + 1
        previous = word
    return out


def _chars(lowered: str) -> tuple[np.ndarray, np.ndarray]:
    """The character n-grams' buckets and counts, each bucket where it first occurs when enumerated word by word,
    then by length (2-5), then by position (`_chars_plain`'s order, so that the dot products downstream sum in
    the same order whichever way they were counted)."""
    if len(lowered) < FAST_FROM:
        found = _chars_plain(lowered)
        return (np.fromiter(found.keys(), dtype=np.int64, count=len(found)),
                np.fromiter(found.values(), dtype=np.int64, count=len(found)))
    return _chars_numpy(lowered)


def _chars_plain(lowered: str) -> dict[int, int]:
    out: dict[int, int] = {}
    get = out.get
    crc = zlib.crc32
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


def _chars_numpy(lowered: str) -> tuple[np.ndarray, np.ndarray]:
    """`_chars` for longer texts: the CRC-32 of every n-gram at once, each length's from the one before it and one
    more byte (zlib's table), then counted and put in `_chars_plain`'s order."""
    padded = [f" {token} ".encode() for token in lowered.split()]
    if not padded:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    joined = b"".join(padded)
    data = np.frombuffer(joined + bytes(4), dtype=np.uint8)
    size = len(joined)
    sizes = np.fromiter((len(p) for p in padded), dtype=np.int64, count=len(padded))
    token = np.repeat(np.arange(len(padded), dtype=np.int64), sizes)
    room = np.repeat(np.cumsum(sizes), sizes) - np.arange(size, dtype=np.int64)       # bytes left in its padded word, itself included
    c = _TABLE[(np.uint32(0xFFFFFFFF) ^ data[:size]) & 0xFF] ^ np.uint32(0x00FFFFFF)  # one byte
    buckets, keys = [], []
    for n in (2, 3, 4, 5):
        c = _TABLE[(c ^ data[n - 1:n - 1 + size]) & 0xFF] ^ (c >> 8)
        start = np.flatnonzero(room >= n)
        if not len(start):
            break
        buckets.append(BUCKETS + ((c[start] ^ 0xFFFFFFFF) & _MASK).astype(np.int64))
        keys.append((token[start] * 4 + (n - 2)) * size + start)     # word, then length, then position
    found = np.concatenate(buckets)[np.argsort(np.concatenate(keys))]  # the keys are distinct
    unique, first, count = np.unique(found, return_index=True, return_counts=True)
    order = np.argsort(first)
    return unique[order], count[order]


def _counted(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Each n-gram bucket and its count, in first-occurrence order (words, then characters: what IDF is fitted on)."""
    lowered = text.lower()
    words = _words(lowered)
    chars, char_counts = _chars(lowered)
    return (np.concatenate([np.fromiter(words.keys(), dtype=np.int64, count=len(words)), chars]),
            np.concatenate([np.fromiter(words.values(), dtype=np.int64, count=len(words)), char_counts]))


def counts(text: str) -> dict[int, int]:
    """Each n-gram bucket's count, in first-occurrence order."""
    index, count = _counted(text)
    return dict(zip(index.tolist(), count.tolist()))


def vector(text: str, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, unit-length TF-IDF values) of one text."""
    index, count = _counted(text)
    if not len(index):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    values = _LOG[np.minimum(count, len(_LOG)) - 1]                  # a new array (fancy indexing copies)
    for i in np.flatnonzero(count > len(_LOG)):                    # a bucket hit more than 4,096 times
        values[i] = np.float32(1.0 + math.log(int(count[i])))
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
