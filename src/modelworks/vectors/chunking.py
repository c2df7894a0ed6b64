"""Cutting a file's text into chunks of at most N tokens that overlap by M (`auto`: 800 and 400, as OpenAI's).

Tokens are counted with the WordPiece tokenizer of the built-in embedding model (about as fine as the GPT
tokenizers: one token per common word, several for a rare one); each chunk is the exact span of the original text
from its first token to its last, so nothing is rewritten."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import regex

AUTO = {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}
_FALLBACK = regex.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    tokens: int


@lru_cache(maxsize=1)
def _tokenizer():
    """The MiniLM package's tokenizer, without its truncation; None where the package is not installed."""
    try:
        from tokenizers import Tokenizer

        from modelworks.model_files import MINILM_PACKAGE, _import

        tok = Tokenizer.from_file(str(Path(_import(MINILM_PACKAGE).get_model_path()) / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - a plain word-and-punctuation count then
        return None
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the text's tokens."""
    tok = _tokenizer()
    if tok is None:
        return [m.span() for m in _FALLBACK.finditer(text)]
    spans = []
    # in pieces of lines: one huge string is slow to tokenise and its offsets are all that is needed
    start = 0
    for piece in _pieces(text, 100_000):
        enc = tok.encode(piece, add_special_tokens=False)
        spans.extend((start + a, start + b) for a, b in enc.offsets if b > a)
        start += len(piece)
    return spans


def _pieces(text: str, size: int):
    at = 0
    while at < len(text):
        end = min(len(text), at + size)
        if end < len(text):  # cut after a newline or a space, never inside a word
            cut = max(text.rfind("\n", at, end), text.rfind(" ", at, end))
            if cut > at:
                end = cut + 1
        yield text[at:end]
        at = end


def count_tokens(text: str) -> int:
    return len(token_spans(text))


def chunk_text(text: str, max_tokens: int, overlap: int) -> list[Chunk]:
    spans = token_spans(text)
    if not spans:
        return []
    step = max(1, max_tokens - overlap)
    chunks = []
    start = 0
    while True:
        end = min(len(spans), start + max_tokens)
        body = text[spans[start][0]:spans[end - 1][1]]
        chunks.append(Chunk(len(chunks), body, end - start))
        if end == len(spans):
            return chunks
        start += step
