"""Continuous batching: one llama.cpp context per model holding several sequences, driven by one engine thread.

Each step the engine puts into one batch the next token of every generating sequence and a bounded slice of the
prompts still being read (`batch_size` tokens in all), calls `llama_decode` once, and draws the next token of each
sequence whose logits came out with that sequence's own sampler (llama_sampling): the weights are read once a step
for all of them, which is where the throughput under concurrency comes from. Requests join and leave between steps:
a cancelled request's sequence is freed at the next step, and a sequence that ends frees its place.

Prompt cache. A sequence keeps its cells after its request ends. A new request takes the free sequence whose cache
shares the longest prefix with its prompt, or a copy of a longer one held by another sequence (a copy of its whole
stream, then cut, when it saves COPY_GAIN tokens or more); the rest is dropped and only what follows is evaluated.
What was reused is the request's `cached_tokens`. The prompt's last token is always evaluated again: its logits
start the answer. Sliding-window layers (Gemma 3) keep a full-size cache (`swa_full`), and a cache whose oldest
kept position is too recent for the window of the first new token (llama.cpp drops cells that left every window
when it needs room) is not reused.

Reproducibility. llama.cpp's CPU kernels are not batch-invariant: a token's logits move a little (a reused prefix
moved a logprob by up to ~0.25 on Gemma 3 with flash attention, ~0.05 without) with the shape of the call it was
evaluated in, so an answer after reuse, or generated while
other sequences run, can part from a fresh evaluation's at a near tie (as with llama.cpp's own server and its
`cache_prompt`). A request with a `seed` is therefore evaluated afresh, in a stream of its own whose layout no
other sequence touches, and gives the same answer each time it runs alone.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from modelworks.backends.llama_generation import Outcome, Params, TextStream
from modelworks.errors import ModelworksError, Unavailable
from modelworks.backends.llama_sampling import Sampler, Vocab, lib, logprob_entry

log = logging.getLogger("modelworks.llama")

_RATE_WINDOW_S = 10.0
COPY_GAIN = 64  # a longer prefix in another sequence is copied (its whole stream) when it saves this many tokens


class Job:
    """One choice to generate. `emit` (thread-safe) receives its Steps, then its Outcome, or an exception; `done`
    is called once, from the engine thread, when its sequence is free again (after the Outcome, or when it was
    cancelled)."""

    __slots__ = ("prompt", "params", "emit", "done", "cancelled")

    def __init__(self, prompt: list[int], params: Params, emit: Callable[[Any], None],
                 done: Callable[[], None]) -> None:
        self.prompt, self.params, self.emit, self.done = prompt, params, emit, done
        self.cancelled = False


class _Seq:
    __slots__ = ("id", "tokens", "job", "pending", "next", "sampler", "text", "count", "cached", "used",
                 "order")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.tokens: list[int] = []  # in the KV cache, at positions 0..len-1
        self.job: Job | None = None
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next: int | None = None  # the token drawn last, evaluated at the next step
        self.sampler: Sampler | None = None
        self.text: TextStream | None = None
        self.count = 0
        self.cached = 0
        self.used = 0.0
        self.order = 0


class ModelView:
    """The loaded model as the backend's tokenizing and templating code reads it (llama-cpp-python's `Llama`
    methods of the same names), without a context of its own."""

    def __init__(self, model) -> None:
        self._model = model
        self.metadata = model.metadata()

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_bos, special)

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return self._model.detokenize(tokens, special)

    def n_vocab(self) -> int:
        return self._model.n_vocab()

    def token_bos(self) -> int:
        return self._model.token_bos()

    def token_eos(self) -> int:
        return self._model.token_eos()


class Engine:
    def __init__(self, name: str, path: Path, *, sequences: int, threads: int, context_size: int, batch_size: int,
                 top_k: int = 40, prompt_cache: bool = True, swa_full: bool = True) -> None:
        self.name, self.path = name, path
        self.prompt_cache, self.swa_full = prompt_cache, swa_full
        self.sequences, self.threads = sequences, threads
        self.context_size, self.batch_size, self.top_k = context_size, batch_size, top_k
        self.n_cells = context_size * sequences
        self._seqs = [_Seq(i) for i in range(sequences)]
        self._incoming: list[Job] = []
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._order = itertools.count()
        self._rates: collections.deque[tuple[float, int]] = collections.deque()
        self.generated = 0  # completion tokens drawn since start
        self.evaluated = 0  # prompt tokens evaluated since start
        self.reused = 0  # prompt tokens taken from the cache since start
        self.model = self.view = self.vocab = None
        self.ctx = self.mem = self.batch = None
        self.n_swa = 0

    # -- lifecycle (start and close from any thread) ---------------------------------------------------------

    def load(self) -> None:
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp's own log: errors only
        l = lib()
        self.model = _internals.LlamaModel(path_model=str(self.path), params=l.llama_model_default_params(),
                                           verbose=False)
        params = l.llama_context_default_params()
        params.n_ctx = self.n_cells
        params.n_batch = params.n_ubatch = self.batch_size
        params.n_seq_max = self.sequences
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # a stream per sequence (llama.cpp's default): no sequence moves another's cells
        params.swa_full = self.swa_full
        # Flash attention where llama.cpp supports it (its default, and llama-server's): measured side by side on
        # this CPU, 4 SmolLM2 streams ran at 98 tokens/s with it against 76 without. Its tiles follow the call's
        # shape, so a reused prefix moves a first token's logprob by up to ~0.25 (0.05 without; tests/test_engine.py).
        params.flash_attn_type = l.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.no_perf = True
        self.n_swa = l.llama_model_n_swa(self.model.model)
        self.ctx = l.llama_init_from_model(self.model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {self.path}")
        self.mem = l.llama_get_memory(self.ctx)
        self.batch = l.llama_batch_init(self.batch_size, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.batch.token, (self.batch_size,))
        self._positions = np.ctypeslib.as_array(self.batch.pos, (self.batch_size,))
        self._n_seq = np.ctypeslib.as_array(self.batch.n_seq_id, (self.batch_size,))
        self._logits = np.ctypeslib.as_array(ctypes.cast(self.batch.logits, ctypes.POINTER(ctypes.c_int8)),
                                             (self.batch_size,))
        self._n_seq[:] = 1
        self.vocab = Vocab(self.model.model, self.top_k)
        self.view = ModelView(self.model)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"llama-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                return  # a step that does not end: leave the memory to the process
        l = lib()
        for seq in self._seqs:
            if seq.sampler is not None:
                seq.sampler.free()
        if self.vocab is not None:
            self.vocab.close()
        if self.batch is not None:
            l.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            l.llama_free(self.ctx)
            self.ctx = None
        # The model (its vocabulary) stays: requests still being prepared may tokenize with it until they hear
        # the engine is closed; the process's end frees it.

    # -- requests (from the event loop) -----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise Unavailable(f"The model '{self.name}' is shutting down; retry on another replica.")
            self._incoming.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._cv:
            self._cv.notify()

    @property
    def active(self) -> int:
        return sum(1 for s in self._seqs if s.job is not None)

    @property
    def waiting(self) -> int:
        return len(self._queue) + len(self._incoming)

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens drawn per second over the last ten seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._rates) if now - t <= _RATE_WINDOW_S]
        return sum(n for _, n in recent) / _RATE_WINDOW_S if recent else 0.0

    # -- the engine thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._incoming and not self._queue and not self.active:
                    self._cv.wait()
                if self._stopping:
                    self._queue.extend(self._incoming)
                    self._incoming.clear()
                    break
                self._queue.extend(self._incoming)
                self._incoming.clear()
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - every running request hears of it; the engine goes on
                log.exception("%s: a decode step failed", self.name)
                message = f"The model '{self.name}' failed a step: {exc}"
                self._fail(lambda: RuntimeError(message))
        # closed: whatever still runs or waits hears so (a retryable 503), and its place is given back
        stopped = functools.partial(Unavailable, f"The model '{self.name}' is shutting down; retry on another "
                                                 "replica.")
        self._fail(stopped)
        while self._queue:
            job = self._queue.popleft()
            job.emit(stopped())
            job.done()

    def _step(self) -> None:
        for seq in self._seqs:
            if seq.job is not None and seq.job.cancelled:
                self._end(seq, None)
        for job in [j for j in self._queue if j.cancelled]:
            self._queue.remove(job)
            job.done()
        while self._queue:
            free = [s for s in self._seqs if s.job is None]
            if not free:
                break
            job = self._queue.popleft()
            try:
                self._admit(job, free)
            except Exception as exc:  # noqa: BLE001 - never a job without an answer
                log.exception("%s: a request could not join", self.name)
                seq = next((s for s in self._seqs if s.job is job), None)
                if seq is not None:
                    self._drop(seq, exc)
                else:
                    job.emit(exc)
                    job.done()
        groups = [(s, [s.next], True) for s in self._seqs if s.job is not None and s.next is not None]
        budget = self.batch_size - len(groups)
        for seq in sorted((s for s in self._seqs if s.job is not None and s.pending), key=lambda s: s.order):
            take = min(len(seq.pending), budget)
            if take <= 0:
                break
            budget -= take
            tokens, seq.pending = seq.pending[:take], seq.pending[take:]
            self.evaluated += take
            groups.append((seq, tokens, not seq.pending))
        if not groups:
            return
        self._decode(groups)
        drawn = index = 0
        for seq, tokens, wants in groups:
            seq.tokens.extend(tokens)
            index += len(tokens)
            if wants:
                seq.next = None
                try:
                    drawn += self._advance(seq, index - 1)
                except Exception as exc:  # noqa: BLE001 - this sequence's own failure: the others go on
                    if seq.job is not None:
                        self._drop(seq, exc)
        if drawn:
            now = time.monotonic()
            self._rates.append((now, drawn))
            while self._rates and now - self._rates[0][0] > _RATE_WINDOW_S:
                self._rates.popleft()

    def _decode(self, groups: list[tuple[_Seq, list[int], bool]]) -> None:
        """One llama_decode call: each group's tokens at its sequence's next positions, the logits of a group's last
        token kept when it wants them (its batch index: the running count of tokens)."""
        l = lib()
        b = self.batch
        i = 0
        for seq, tokens, wants in groups:
            n = len(tokens)
            self._tokens[i:i + n] = tokens
            self._positions[i:i + n] = np.arange(len(seq.tokens), len(seq.tokens) + n, dtype=np.int32)
            self._logits[i:i + n] = 0
            self._logits[i + n - 1] = 1 if wants else 0
            for k in range(i, i + n):
                b.seq_id[k][0] = seq.id
            i += n
        b.n_tokens = i
        rc = l.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def _advance(self, seq: _Seq, index: int) -> int:
        """Draw the sequence's next token from the logits at batch index `index` of the last call; 1 if a
        completion token was drawn."""
        job = seq.job
        token = seq.sampler.sample(self.ctx, index)
        if self.vocab.is_eog(token):
            self._end(seq, "stop")
            return 0
        seq.count += 1
        self.generated += 1
        piece = self.vocab.piece(token)
        entry = None
        if job.params.logprobs is not None:
            entry = logprob_entry(self.vocab, self.ctx, index, token, piece, job.params.logprobs)
        step, stopped = seq.text.push(piece, entry)
        if step is not None:
            job.emit(step)
        if stopped:
            self._end(seq, "stop")
        elif seq.count >= job.params.max_tokens:
            self._end(seq, "length")
        else:
            seq.next = token
        return 1

    def _end(self, seq: _Seq, reason: str | None) -> None:
        job = seq.job
        if reason is not None:
            step = seq.text.finish()
            if step is not None:
                job.emit(step)
            job.emit(Outcome(reason, seq.count, seq.cached))
        self._release(seq)
        job.done()

    def _release(self, seq: _Seq) -> None:
        """The sequence is free; its cells stay as a cache."""
        if seq.sampler is not None:
            seq.sampler.free()
        seq.job = seq.sampler = seq.text = seq.next = None
        seq.pending = []
        seq.used = time.monotonic()

    def _drop(self, seq: _Seq, exc: Exception) -> None:
        """One sequence failed: its request hears why, and its cells are forgotten."""
        if not isinstance(exc, ModelworksError):
            log.exception("%s: a sequence failed", self.name, exc_info=exc)
        lib().llama_memory_seq_rm(self.mem, seq.id, -1, -1)
        seq.tokens = []
        job = seq.job
        job.emit(exc)
        self._release(seq)
        job.done()

    def _fail(self, error: Callable[[], Exception]) -> None:
        """A step failed (or the engine closes): each request hears why (an error of its own), and the cache
        starts afresh."""
        lib().llama_memory_clear(self.mem, True)
        for seq in self._seqs:
            seq.tokens = []
            job = seq.job
            if job is not None:
                job.emit(error())
                self._release(seq)
                job.done()

    # -- joining: the prompt cache ----------------------------------------------------------------------------

    def _admit(self, job: Job, free: list[_Seq]) -> None:
        l = lib()
        try:
            sampler = Sampler(self.vocab, job.params)
        except Exception as exc:  # noqa: BLE001 - this request's own fault (a grammar llama.cpp refuses)
            job.emit(exc)
            job.done()
            return
        prompt = job.prompt
        # what each sequence's cells can stand for, once; a seeded request is evaluated afresh (module docstring)
        reach = {s.id: self._reuse(s, prompt) if job.params.seed is None else 0 for s in self._seqs}
        seq = max(free, key=lambda s: (reach[s.id], not s.tokens, -s.used))
        reuse = reach[seq.id]
        donor = max((s for s in self._seqs if s is not seq), key=lambda s: reach[s.id], default=None)
        if donor is not None and reach[donor.id] >= reuse + COPY_GAIN:
            reuse = reach[donor.id]
            l.llama_memory_seq_rm(self.mem, seq.id, -1, -1)
            l.llama_memory_seq_cp(self.mem, donor.id, seq.id, -1, -1)  # another stream: a copy of all of it
            seq.tokens = donor.tokens[:reuse]
        if not l.llama_memory_seq_rm(self.mem, seq.id, reuse, -1):
            l.llama_memory_seq_rm(self.mem, seq.id, -1, -1)
            reuse = 0
        del seq.tokens[reuse:]
        self.reused += reuse
        seq.job, seq.pending, seq.cached, seq.count = job, prompt[reuse:], reuse, 0
        seq.sampler = sampler
        seq.text = TextStream(job.params)
        seq.order = next(self._order)

    def _reuse(self, seq: _Seq, prompt: list[int]) -> int:
        """How many of the prompt's first tokens `seq`'s cells can stand for: shared, short of the prompt's last
        token, and (sliding-window layers) with the window of the first new token still in the cache."""
        if not self.prompt_cache or not seq.tokens:
            return 0
        n = min(_common(seq.tokens, prompt), len(prompt) - 1)
        if n > 0 and self.n_swa > 0:
            oldest = lib().llama_memory_seq_pos_min(self.mem, seq.id)
            if not 0 <= oldest <= max(0, n - self.n_swa):
                return 0
        return n


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if a[:n] == b[:n]:
        return n
    x = np.asarray(a[:n])
    y = np.asarray(b[:n])
    return int(np.argmax(x != y))
