"""One generation on a llama.cpp context, run in a worker thread.

Drives `Llama.generate` token by token so that it can: stop within one token when cancelled, apply stop
sequences exactly (holding back text that may be the start of one), detokenize multi-byte characters
safely, and compute logprobs from the last token's logits only when asked (no `logits_all` buffer).
"""

from __future__ import annotations

import ctypes
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(slots=True)
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    grammar: Any = None
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


def generate(llama, prompt_tokens: list[int], params: Params, emit: Callable[[Step], None],
             cancelled: threading.Event) -> Outcome:
    llama_cpp = _llama_cpp()
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    llama.set_seed(seed & 0xFFFFFFFF)
    if params.seed is not None or params.temperature == 0:
        # Reusing a cached prompt prefix evaluates the prompt's last tokens in a different batch shape, which
        # moves the logits slightly: evaluate afresh when the caller asks for reproducible output.
        llama.reset()
    processors = None
    if params.logit_bias:
        processors = _bias_processors(params.logit_bias)
    vocab = llama._model.vocab if hasattr(llama._model, "vocab") else None
    stops = [s for s in params.stop if s]
    longest_stop = max((len(s) for s in stops), default=0)
    text = ""
    sent = 0
    pending_bytes = b""
    pending_logprobs: list[dict[str, Any]] = []
    count = 0
    finish: str | None = "length"
    gen = llama.generate(prompt_tokens, top_k=0, top_p=params.top_p, min_p=0.0, typical_p=1.0,
                         temp=params.temperature, repeat_penalty=1.0, frequency_penalty=params.frequency_penalty,
                         presence_penalty=params.presence_penalty, logits_processor=processors,
                         grammar=params.grammar)
    try:
        for token in gen:
            if cancelled.is_set():
                finish = None
                break
            if llama_cpp.llama_token_is_eog(vocab, token) if vocab is not None else token == llama.token_eos():
                finish = "stop"
                break
            count += 1
            piece = llama.detokenize([token])
            if params.logprobs is not None:
                pending_logprobs.append(_logprob_entry(llama, token, piece, params.logprobs))
            pending_bytes += piece
            decoded, pending_bytes = _decode_prefix(pending_bytes)
            text += decoded
            if stops and params.call_marker and text.startswith(params.call_marker):
                stops, longest_stop = [], 0  # a tool call: its grammar ends it
            hit = _find_stop(text, stops, sent, longest_stop)
            if hit is not None:
                _release(emit, text[sent:hit], pending_logprobs)
                return Outcome("stop", count)
            safe = len(text) - _held_back(text, stops)
            if safe > sent or pending_logprobs:
                _release(emit, text[sent:safe], pending_logprobs)
                pending_logprobs = []
                sent = max(sent, safe)
            if count >= params.max_tokens:
                finish = "length"
                break
    finally:
        gen.close()
    if finish is not None:
        text += pending_bytes.decode("utf-8", errors="replace")
        if len(text) > sent or pending_logprobs:
            _release(emit, text[sent:], pending_logprobs)
    return Outcome(finish, count)


def _release(emit, text: str, logprobs: list[dict[str, Any]]) -> None:
    emit(Step(text=text, tokens=list(logprobs)))
    logprobs.clear()


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


def _logprob_entry(llama, token: int, piece: bytes, top: int) -> dict[str, Any]:
    llama_cpp = _llama_cpp()
    n_vocab = llama.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    logsum = peak + np.log(np.exp(logits - peak).sum())
    entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(logits[token] - logsum),
             "bytes": list(piece), "top_logprobs": []}
    if top:
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best])]
        for t in best:
            p = llama.detokenize([int(t)])
            entry["top_logprobs"].append({"token": p.decode("utf-8", errors="replace"),
                                          "logprob": float(logits[t] - logsum), "bytes": list(p)})
    return entry


def _bias_processors(bias: dict[int, float]):
    ids = np.array(list(bias.keys()), dtype=np.int64)
    values = np.array(list(bias.values()), dtype=np.float32)

    def apply(input_ids, scores):
        scores[ids] += values
        return scores

    return [apply]


def _llama_cpp():
    import llama_cpp

    return llama_cpp


_ = ctypes  # ctypes is used through llama_cpp's pointers
