"""The terms of the full-text ranking: words (Unicode letters and digits), case-folded, English stop words left
out, stemmed (Snowball English). The same function makes a chunk's terms and a query's, on every replica and for
either database, so the ranking never depends on where it runs."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import regex

_WORD = regex.compile(r"[\p{L}\p{N}]+(?:['’][\p{L}]+)?")
MAX_TERM = 48

# Function words that carry no topic (a short list: a long one removes words that matter, "not" among them).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor of off on once only or other
our ours ourselves out over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while who whom why will
with would you your yours yourself yourselves
""".split())


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer  # PyStemmer: the Snowball stemmers, in C

    return Stemmer.Stemmer("english", 100_000)


def terms(text: str) -> list[str]:
    """The terms of a text, in order (repeats kept: they count)."""
    words = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        word = word.replace("’", "'")
        if word.endswith("'s"):
            word = word[:-2]
        if word in STOP_WORDS or len(word) > MAX_TERM:
            continue
        words.append(word)
    return _stemmer().stemWords(words) if words else []
