"""What one generation asks for and what it gives back, and its text as the tokens come.

`TextStream` turns a sequence's token pieces into released text: it applies stop sequences exactly (holding back
text that may be the start of one), decodes multi-byte characters only once they are whole, and hands each
token's logprob entry out with the text it belongs to. The engine (llama_engine) drives it, one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF, root rule `root`
    logprobs: int | None = None  # None: no logprobs; k >= 0: the token's logprob plus the top k
    logit_bias: dict[int, float] | None = None
    call_marker: str | None = None  # a text that starts with this is a tool call: stop sequences do not apply


@dataclass(slots=True)
class Step:
    """Text released by one step, with the logprob entries of the tokens produced in it."""

    text: str
    tokens: list[dict[str, Any]]


@dataclass(slots=True)
class Outcome:
    finish_reason: str | None  # None when cancelled
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose evaluation was reused from the cache


class TextStream:
    """One choice's text. `push` takes a token's bytes (and its logprob entry) and returns the step to release, if
    any, and whether a stop sequence ended the text; `finish` releases what was held back when it ends otherwise."""

    __slots__ = ("stops", "longest", "call_marker", "text", "sent", "pending", "logprobs", "stopped")

    def __init__(self, params: Params) -> None:
        self.stops = [s for s in params.stop if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.call_marker = params.call_marker
        self.text = ""
        self.sent = 0
        self.pending = b""
        self.logprobs: list[dict[str, Any]] = []
        self.stopped = False

    def push(self, piece: bytes, logprob: dict[str, Any] | None = None) -> tuple[Step | None, bool]:
        if logprob is not None:
            self.logprobs.append(logprob)
        self.pending += piece
        decoded, self.pending = _decode_prefix(self.pending)
        self.text += decoded
        if self.stops and self.call_marker and self.text.startswith(self.call_marker):
            self.stops, self.longest = [], 0  # a tool call: its grammar ends it
        hit = _find_stop(self.text, self.stops, self.sent, self.longest)
        if hit is not None:
            self.stopped = True
            return self._release(self.text[self.sent:hit]), True
        safe = len(self.text) - _held_back(self.text, self.stops)
        if safe > self.sent or self.logprobs:
            step = self._release(self.text[self.sent:safe])
            self.sent = max(self.sent, safe)
            return step, False
        return None, False

    def finish(self) -> Step | None:
        """What is left when the generation ends without a stop sequence (end of text, or max_tokens)."""
        if self.stopped:
            return None
        self.text += self.pending.decode("utf-8", errors="replace")
        self.pending = b""
        if len(self.text) > self.sent or self.logprobs:
            step = self._release(self.text[self.sent:])
            self.sent = len(self.text)
            return step
        return None

    def _release(self, text: str) -> Step:
        step = Step(text=text, tokens=self.logprobs)
        self.logprobs = []
        return step


def _decode_prefix(data: bytes) -> tuple[str, bytes]:
    """Decode the longest valid UTF-8 prefix; keep an incomplete trailing character for later."""
    try:
        return data.decode("utf-8"), b""
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3 and exc.reason in ("unexpected end of data",):
            return data[:exc.start].decode("utf-8", errors="replace"), data[exc.start:]
        return data.decode("utf-8", errors="replace"), b""


def _find_stop(text: str, stops: list[str], sent: int, longest: int) -> int | None:
    if not stops:
        return None
    start = max(0, sent - longest)
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
