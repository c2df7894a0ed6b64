"""What batching gives on this machine (issue 14, item 3's first step): one llama.cpp context holding N sequences,
each decode step adding one token to every sequence, against N = 1. Greedy sampling from the logits in NumPy; the
same short prompt for every sequence, evaluated once per sequence before the timed steps.

    .venv/bin/python bench/batching_probe.py [--threads 2] [--steps 64] [--model smollm2|gemma]

Prints aggregate tokens/s for 1, 2, 4 and 8 sequences and their ratio to one sequence (median of 3 rounds,
interleaved); the time to evaluate 1, 2, 4 and 8 distinct prompts in one call (the floor of the time to first token
of the last of N simultaneous requests); the sampling costs; and one stream through llama-cpp-python's high-level
`Llama.generate` (how the embedded backend drove each slot before the engine) for comparison.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import numpy as np

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def model_path(name: str) -> Path:
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import load_settings

    settings = load_settings(environ={})
    spec = settings.backends.get(name)
    if spec is None or getattr(spec, "type", "") != "llama_cpp":
        raise SystemExit(f"no built-in llama.cpp backend named {name!r} (smollm2, gemma)")
    return resolve_model_source(spec.model, settings.model_cache_path)


class Probe:
    def __init__(self, path: Path, threads: int, max_seqs: int, n_ctx: int) -> None:
        import llama_cpp as l

        self.l = l
        self._quiet = l.llama_log_callback(lambda level, text, data: None)  # kept: llama.cpp holds the pointer
        l.llama_log_set(self._quiet, ctypes.c_void_p())
        l.llama_backend_init()
        mparams = l.llama_model_default_params()
        self.model = l.llama_model_load_from_file(str(path).encode(), mparams)
        cparams = l.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = 512
        cparams.n_ubatch = 512
        cparams.n_seq_max = max_seqs
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = l.llama_init_from_model(self.model, cparams)
        self.vocab = l.llama_model_get_vocab(self.model)
        self.n_vocab = l.llama_vocab_n_tokens(self.vocab)
        self.batch = l.llama_batch_init(512, 0, max_seqs)
        buf = (l.llama_token * 256)()
        n = l.llama_tokenize(self.vocab, PROMPT.encode(), len(PROMPT.encode()), buf, 256, True, False)
        self.prompt = list(buf[:n])

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        if self.l.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        ptr = self.l.llama_get_logits_ith(self.ctx, i)
        return int(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)).argmax())

    def run(self, seqs: int, steps: int) -> float:
        """Aggregate tokens/s of `steps` decode steps over `seqs` sequences (prompts evaluated first, untimed)."""
        self.l.llama_memory_clear(self.l.llama_get_memory(self.ctx), True)
        last = []
        for s in range(seqs):
            self._decode([(t, p, s, p == len(self.prompt) - 1) for p, t in enumerate(self.prompt)])
            last.append(self._argmax(len(self.prompt) - 1))
        pos = len(self.prompt)
        started = time.perf_counter()
        for _ in range(steps):
            self._decode([(last[s], pos, s, True) for s in range(seqs)])
            last = [self._argmax(s) for s in range(seqs)]
            pos += 1
        return seqs * steps / (time.perf_counter() - started)


def prefill(probe: Probe, seqs: int, rounds: int = 5) -> float:
    """Seconds to evaluate `seqs` distinct prompts of the probe's prompt's length in one `llama_decode` (how the
    engine admits requests that arrive together), up to the first token's logits of each: the floor of the time to
    first token of the last of `seqs` simultaneous requests. Median of `rounds`."""
    l, n = probe.l, len(probe.prompt)
    times = []
    for r in range(rounds):
        l.llama_memory_clear(l.llama_get_memory(probe.ctx), True)
        # each sequence's prompt has its own second token (after BOS), so no two share a prefix past BOS
        entries = [((t + 101 * s + 7 * r) % probe.n_vocab if p == 1 else t, p, s, p == n - 1)
                   for s in range(seqs) for p, t in enumerate(probe.prompt)]
        assert len(entries) <= 512, "the probe's batch holds 512 tokens"
        started = time.perf_counter()
        probe._decode(entries)
        for s in range(seqs):
            probe._argmax((s + 1) * n - 1)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sampling_costs(probe: Probe, rounds: int = 200) -> dict[str, float]:
    """Microseconds to draw one token from one sequence's logits with llama.cpp's own samplers, for chains of
    increasing cost (a 262k vocabulary makes a full-vocabulary top_p the expensive part)."""
    l = probe.l
    probe.l.llama_memory_clear(l.llama_get_memory(probe.ctx), True)
    probe._decode([(t, p, 0, p == len(probe.prompt) - 1) for p, t in enumerate(probe.prompt)])
    chains = {"greedy": [lambda: l.llama_sampler_init_greedy()],
              "temp 1, top_p 0.9 (whole vocabulary)": [lambda: l.llama_sampler_init_top_p(0.9, 1),
                                                        lambda: l.llama_sampler_init_temp(1.0),
                                                        lambda: l.llama_sampler_init_dist(1234)],
              "top_k 40, then top_p 0.9, temp 1": [lambda: l.llama_sampler_init_top_k(40),
                                                   lambda: l.llama_sampler_init_top_p(0.9, 1),
                                                   lambda: l.llama_sampler_init_temp(1.0),
                                                   lambda: l.llama_sampler_init_dist(1234)]}
    out = {}
    for name, parts in chains.items():
        chain = l.llama_sampler_chain_init(l.llama_sampler_chain_default_params())
        for make in parts:
            l.llama_sampler_chain_add(chain, make())
        started = time.perf_counter()
        for _ in range(rounds):
            l.llama_sampler_sample(chain, probe.ctx, -1)
        out[name] = (time.perf_counter() - started) / rounds * 1e6
        l.llama_sampler_free(chain)
    return out


def grammar_and_bias_costs(probe: Probe, rounds: int = 200) -> dict[str, float]:
    """Microseconds per token of what the engine's samplers (backends/llama_sampling.py) do beside the draw: a
    JSON grammar applied to the whole vocabulary against a check of the drawn token alone (the engine's first try),
    and a 10-token logit bias in llama.cpp's sampler against the same bias added to the logits in NumPy."""
    from llama_cpp.llama_grammar import JSON_GBNF

    from modelworks.backends.llama_generation import Params
    from modelworks.backends.llama_sampling import Sampler, Vocab, logits

    l = probe.l
    l.llama_memory_clear(l.llama_get_memory(probe.ctx), True)
    probe._decode([(t, p, 0, p == len(probe.prompt) - 1) for p, t in enumerate(probe.prompt)])
    vocab = Vocab(probe.model, 40)
    out = {}
    sampler = Sampler(vocab, Params(max_tokens=8, temperature=0, grammar=JSON_GBNF))

    def timed(fn) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - started) / rounds * 1e6

    out["greedy draw alone (llama.cpp's greedy sampler)"] = timed(
        lambda: l.llama_sampler_sample(sampler.chain, probe.ctx, -1))
    out["greedy draw alone (the engine's: argmax in place)"] = timed(lambda: sampler._draw(probe.ctx, -1))
    out["JSON grammar on the whole vocabulary, then the draw"] = timed(lambda: sampler._draw_allowed(probe.ctx, -1))
    out["JSON grammar checked on the drawn token only"] = timed(lambda: sampler._allowed(int(probe.prompt[1])))
    sampler.free()
    bias = {i * 7 + 11: 5.0 for i in range(10)}
    biased = Sampler(vocab, Params(max_tokens=8, temperature=0, logit_bias=bias))
    out["10-token logit bias in llama.cpp, then the greedy draw"] = timed(
        lambda: l.llama_sampler_sample(biased.chain, probe.ctx, -1))
    out["10-token logit bias, greedy, the engine's way (NumPy, in place of llama.cpp's candidate array)"] = timed(
        lambda: biased._draw(probe.ctx, -1))
    biased.free()
    plain = Sampler(vocab, Params(max_tokens=8, temperature=0))
    ids = np.array(list(bias), dtype=np.int64)
    values = np.array(list(bias.values()), dtype=np.float32)

    def numpy_bias() -> None:  # the old way: a Python callback over a copy of the logits, then the draw
        scores = logits(probe.ctx, -1, probe.n_vocab).copy()
        scores[ids] += values
        int(scores.argmax())

    out["10-token logit bias as a NumPy callback (a copy of the logits), then the draw"] = timed(numpy_bias)
    plain.free()
    vocab.close()
    return out


def high_level(path: Path, threads: int, steps: int, rounds: int) -> tuple[float, float]:
    """One stream as the embedded backend drives it today (llama-cpp-python's `Llama.generate`, its sampling in
    Python): tokens/s greedy (temperature 0) and sampled (temperature 1, top_p 0.9), medians of `rounds`."""
    from llama_cpp import Llama

    llama = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False,
                  flash_attn=True)
    prompt = llama.tokenize(PROMPT.encode())
    out = []
    for temp, top_p in ((0.0, 1.0), (1.0, 0.9)):
        rates = []
        for _ in range(rounds):
            llama.reset()
            gen = llama.generate(prompt, top_k=0, top_p=top_p, min_p=0.0, typical_p=1.0, temp=temp,
                                 repeat_penalty=1.0)
            next(gen)  # the prompt is evaluated before the first token: not timed
            started = time.perf_counter()
            for _, _token in zip(range(steps), gen):
                pass
            gen.close()
            rates.append(steps / (time.perf_counter() - started))
        out.append(statistics.median(rates))
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    counts = (1, 2, 4, 8)
    probe = Probe(model_path(args.model), args.threads, max(counts), n_ctx=8 * 256)
    probe.run(1, 8)  # warm up
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            rates[n].append(probe.run(n, args.steps))
    one = statistics.median(rates[1])
    print(f"{args.model}, {args.threads} threads, {args.steps} steps, median of {args.rounds} rounds:")
    for n in counts:
        rate = statistics.median(rates[n])
        print(f"  {n} sequence(s): {rate:7.1f} tokens/s aggregate  {rate / one:5.2f}x one sequence")
    lone = prefill(probe, 1)
    for n in counts:
        took = prefill(probe, n)
        print(f"  {n} prompt(s) of {len(probe.prompt)} tokens evaluated in one call: {took * 1000:6.1f} ms, "
              f"{took / lone:5.2f}x one prompt")
    for name, us in {**sampling_costs(probe), **grammar_and_bias_costs(probe)}.items():
        print(f"  sampling one token, {name}: {us:.0f} us")
    greedy, sampled = high_level(model_path(args.model), args.threads, args.steps, args.rounds)
    print(f"  for comparison, one stream through llama-cpp-python's Llama.generate: {greedy:.1f} tokens/s greedy, "
          f"{sampled:.1f} sampled (temperature 1, top_p 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
