"""The n-gram stage's features: the character n-grams counted all at once in NumPy (long texts) must be the ones
counted one by one (short texts), bucket for bucket and in the same order, or the shipped n-gram heads would
score a text differently by its length (and the dot products would sum in another order)."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np

from modelworks.safety import features


def _texts() -> list[str]:
    rng = random.Random(16)
    alphabet = "ab cé\n\t😀xyZ.,!\u00a0\u2003日本k1"
    made = ["", " ", "a", "ab", "   \n\t ", "é", "naïve café ñ 日本語 テキスト 😀😀", "x" * 3000, "k1ll h8 !!!",
            "a " * 1500, "aaaaa bbbb", "The meeting has been moved to Thursday afternoon. " * 20]
    made += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 1200))) for _ in range(300)]
    return made


def test_numpy_and_plain_counts_agree_in_buckets_counts_and_order():
    for text in _texts():
        lowered = text.lower()
        plain = features._chars_plain(lowered)
        index, count = features._chars_numpy(lowered)
        assert list(zip(index.tolist(), count.tolist())) == list(plain.items()), repr(text[:60])


def test_the_crc_is_zlibs():
    for text in ("ab", "hello world", "日本語 😀"):
        lowered = text.lower()
        index, _ = features._chars_numpy(lowered)
        token = f" {lowered.split()[0]} ".encode()
        assert features.BUCKETS + (zlib.crc32(token[:2]) & (features.BUCKETS - 1)) == index[0]


def test_vector_is_unit_tf_idf_of_the_counts_whatever_the_length():
    idf = np.random.default_rng(0).random(features.DIMENSIONS).astype(np.float32)
    for text in _texts() + ["w " * 5000]:  # "w": a bucket counted 5,000 times (past the log table)
        found = features.counts(text)
        index, values = features.vector(text, idf)
        assert index.tolist() == list(found)
        expected = np.fromiter((1.0 + math.log(c) for c in found.values()), dtype=np.float32, count=len(found))
        expected *= idf[index]
        if len(expected):
            expected /= float(np.sqrt(expected @ expected))
        assert values.dtype == np.float32 and np.array_equal(values, expected)
