"""Drawing each sequence's next token with llama.cpp's own samplers, from the logits of one decode step.

A sequence's chain is: logit bias, then (when asked) presence and frequency penalties over its completion, then
top-k, temperature, top-p and a seeded draw; greedy when the temperature is 0. The same draw as OpenAI's
(temperature, then the nucleus of that distribution): top-k first changes nothing but the cost, except that tokens
past the k most likely are never drawn (`sampling_top_k`, 40 by default like llama.cpp's; 0 for the whole
vocabulary). With Gemma's 262k vocabulary a nucleus over the whole vocabulary costs ~3.8 ms a token, ~0.3 ms after
top-k 40 (bench/batching_probe.py).

A grammar (JSON, a schema, tool calls) is checked on the drawn token first; only when it refuses that token is
it applied to the whole vocabulary and the token drawn again from what it allows, as llama.cpp's own server does.
Logprobs are read from the raw logits (the model's distribution), only when asked.
"""

from __future__ import annotations

import ctypes
import random
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from modelworks.backends.llama_generation import Params
from modelworks.errors import InvalidRequest

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def lib():
    import llama_cpp

    return llama_cpp


class Vocab:
    """What sampling and detokenizing need of a model's vocabulary, shared by its sequences (one engine thread)."""

    def __init__(self, model_ptr, top_k: int) -> None:
        l = lib()
        self.ptr = l.llama_model_get_vocab(model_ptr)
        self.n = l.llama_vocab_n_tokens(self.ptr)
        self.top_k = top_k
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)
        self._eog: dict[int, bool] = {}
        # one whole-vocabulary candidate array, refilled when a grammar refuses a drawn token
        self._data = np.zeros(self.n, dtype=_TOKEN_DATA)
        self._data["id"] = np.arange(self.n, dtype=np.int32)
        self._array = l.llama_token_data_array(
            data=self._data.ctypes.data_as(l.llama_token_data_p), size=self.n, selected=-1, sorted=False)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._one_array = l.llama_token_data_array(
            data=self._one.ctypes.data_as(l.llama_token_data_p), size=1, selected=-1, sorted=False)
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._grammar_lock = threading.Lock()  # grammars are checked off the engine thread too (llama.LlamaBackend)

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            l = lib()
            n = l.llama_token_to_piece(self.ptr, token, self._buf, len(self._buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = l.llama_token_to_piece(self.ptr, token, buf, len(buf), 0, False)
                piece = buf.raw[:n]
            else:
                piece = self._buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(lib().llama_vocab_is_eog(self.ptr, token))
        return eog

    def grammar(self, gbnf: str):
        """A fresh grammar sampler for `gbnf`: parsed once, cloned for each sequence. ValueError if llama.cpp
        cannot parse it."""
        l = lib()
        with self._grammar_lock:
            template = self._grammars.get(gbnf)
            if template is not None:
                self._grammars.move_to_end(gbnf)
                return l.llama_sampler_clone(template)
        parsed = l.llama_sampler_init_grammar(self.ptr, gbnf.encode("utf-8"), b"root")  # outside the lock
        if not parsed:
            raise ValueError("llama.cpp could not parse the grammar")
        with self._grammar_lock:
            template = self._grammars.get(gbnf)
            if template is None:
                template = self._grammars[gbnf] = parsed
                if len(self._grammars) > 64:
                    l.llama_sampler_free(self._grammars.popitem(last=False)[1])
            else:
                l.llama_sampler_free(parsed)  # another thread parsed it meanwhile
            return l.llama_sampler_clone(template)

    def check_grammar(self, gbnf: str) -> None:
        lib().llama_sampler_free(self.grammar(gbnf))

    def close(self) -> None:
        l = lib()
        with self._grammar_lock:
            for template in self._grammars.values():
                l.llama_sampler_free(template)
            self._grammars.clear()


class NothingAllowed(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="logit_bias")


class Sampler:
    """One sequence's sampler (used by the engine thread only)."""

    __slots__ = ("vocab", "chain", "grammar", "penalised", "seed", "argmax", "bias_ids", "bias_values")

    def __init__(self, vocab: Vocab, params: Params) -> None:
        l = lib()
        self.vocab = vocab
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        self.grammar = vocab.grammar(params.grammar) if params.grammar else None
        chain = l.llama_sampler_chain_init(l.llama_sampler_chain_default_params())
        self.chain = chain
        if params.logit_bias:
            entries = (l.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                entries[i].token = token
                entries[i].bias = float("-inf") if bias <= -100 else bias
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_logit_bias(vocab.n, len(params.logit_bias), entries))
        self.penalised = bool(params.presence_penalty or params.frequency_penalty)
        # greedy: the first largest logit (with the bias added), read in NumPy. llama.cpp's samplers first copy the
        # whole vocabulary into a candidate array: ~0.5 ms a token on Gemma's 262k, against ~0.05 ms (~0.07 ms with
        # a bias) here (bench/batching_probe.py). Sampled draws keep the bias in their llama.cpp chain.
        self.argmax = params.temperature <= 0 and not self.penalised
        bias = params.logit_bias or {}
        self.bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self.bias_values = np.array([float("-inf") if b <= -100 else b for b in bias.values()], dtype=np.float32)
        if self.penalised:
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_penalties(
                vocab.n, max(1, params.max_tokens), 1.0, params.frequency_penalty, params.presence_penalty))
        if params.temperature <= 0:
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_greedy())
        else:
            if vocab.top_k > 0:
                l.llama_sampler_chain_add(chain, l.llama_sampler_init_top_k(vocab.top_k))
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_temp(params.temperature))
            if params.top_p < 1.0:
                l.llama_sampler_chain_add(chain, l.llama_sampler_init_top_p(params.top_p, 1))
            # 32 bits for llama.cpp, never 0xFFFFFFFF (its "random seed")
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_dist(self.seed % 0xFFFFFFFF))

    def sample(self, ctx, index: int) -> int:
        """The next token from the logits at batch position `index`."""
        l = lib()
        if self.grammar is None:
            return self._draw(ctx, index)
        if self.penalised:
            # the penalties remember what they accept: draw only once, from what the grammar allows
            token = self._draw_allowed(ctx, index)
        else:
            token = self._draw(ctx, index)
            if not self._allowed(token):
                token = self._draw_allowed(ctx, index)
        l.llama_sampler_accept(self.grammar, token)
        return token

    def _draw(self, ctx, index: int) -> int:
        if self.argmax:
            scores = logits(ctx, index, self.vocab.n)
            if len(self.bias_ids):
                scores = scores.copy()
                scores[self.bias_ids] += self.bias_values
            return int(np.argmax(scores))
        return lib().llama_sampler_sample(self.chain, ctx, index)

    def _allowed(self, token: int) -> bool:
        one = self.vocab._one
        one["id"][0], one["logit"][0], one["p"][0] = token, 1.0, 0.0
        array = self.vocab._one_array
        array.size, array.selected, array.sorted = 1, -1, False
        lib().llama_sampler_apply(self.grammar, ctypes.byref(array))
        return bool(np.isfinite(one["logit"][0]))

    def _draw_allowed(self, ctx, index: int) -> int:
        l = lib()
        vocab = self.vocab
        data = vocab._data
        data["id"] = np.arange(vocab.n, dtype=np.int32)
        data["logit"] = logits(ctx, index, vocab.n)
        data["p"] = 0.0
        array = vocab._array
        array.size, array.selected, array.sorted = vocab.n, -1, False
        l.llama_sampler_apply(self.grammar, ctypes.byref(array))
        l.llama_sampler_apply(self.chain, ctypes.byref(array))
        chosen = array.data[array.selected] if 0 <= array.selected < array.size else None
        if chosen is None or not np.isfinite(chosen.logit):
            # the grammar and the logit bias together leave nothing to draw (llama.cpp would abort on accepting a
            # token the grammar refuses): this answer ends here, with a 400 the client can act on
            raise NothingAllowed("logit_bias bans every token the answer's format allows at this point.")
        token = int(chosen.id)
        l.llama_sampler_accept(self.chain, token)
        return token

    def free(self) -> None:
        l = lib()
        if self.chain:
            l.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            l.llama_sampler_free(self.grammar)
            self.grammar = None


def logits(ctx, index: int, n_vocab: int) -> np.ndarray:
    ptr = lib().llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))


def logprob_entry(vocab: Vocab, ctx, index: int, token: int, piece: bytes, top: int) -> dict[str, Any]:
    """The OpenAI logprobs entry of `token` (and the `top` most likely), from the model's raw logits."""
    raw = logits(ctx, index, vocab.n).astype(np.float64)
    peak = raw.max()
    logsum = peak + np.log(np.exp(raw - peak).sum())
    entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(raw[token] - logsum),
             "bytes": list(piece), "top_logprobs": []}
    if top:
        best = np.argpartition(-raw, top)[:top]
        best = best[np.argsort(-raw[best], kind="stable")]
        for t in best:
            p = vocab.piece(int(t))
            entry["top_logprobs"].append({"token": p.decode("utf-8", errors="replace"),
                                          "logprob": float(raw[t] - logsum), "bytes": list(p)})
    return entry
