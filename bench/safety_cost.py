"""The built-in classifiers' cost on varied 500-token prompts, in process (`make bench`, section `safety`).

The wrk figure in `run.py` sends one everyday prompt again and again: it shows what the policy adds to a request
but not what the cascade costs when text is suspicious. Here each prompt is 500 tokens (MiniLM's tokenizer) of
held-out rows of one source (never trained on), and `TextSafetyModel.score` is timed per prompt:
- everyday: instructions (alpaca_benign, evaluation-only) and benign moderation/tweet text;
- hostile: jailbreak prompts, hateful statements (ToxiGen), flagged moderation text;
side by side with the n-gram stage alone (v1's cost) and with every prompt sent to MiniLM (no cascade), the
encoder on one thread (as served: the LLM's decode keeps the other core), then the same cascade while a second
process keeps one core busy (a decode running beside it).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TOKENS = 500


def _prompts(tokenizer, per_kind: int = 60) -> dict[str, list[str]]:
    from modelworks.safety import labels

    def rows(name: str, keep) -> list[str]:
        return [r["text"] for r in labels.read(DATASETS / name) if labels.is_holdout(r["text"]) and keep(r)]

    def label(key):
        return lambda r: r["labels"].get(key) == 1

    def benign(r):
        return not any(v == 1 for k, v in r["labels"].items() if k not in ("neither", "benign"))

    sources = {
        "everyday": rows("alpaca_benign.jsonl", lambda r: True) + rows("openai_moderation.jsonl", benign)
        + rows("davidson_hate_offensive.jsonl", label("neither")),
        "hostile": rows("jailbreak_prompts.jsonl", lambda r: True) + rows("toxigen.jsonl", label("hate"))
        + rows("openai_moderation.jsonl", lambda r: not benign(r)),
    }
    out: dict[str, list[str]] = {}
    for kind, texts in sources.items():
        prompts, current = [], []
        for text in texts:
            current.append(text)
            ids = tokenizer.encode("\n".join(current))
            if len(ids.ids) >= TOKENS:
                cut = ids.offsets[TOKENS - 2][1]
                prompts.append("\n".join(current)[:cut])
                current = []
                if len(prompts) == per_kind:
                    break
        out[kind] = prompts
    return out


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


def _time(fn, prompts: list[str]) -> dict:
    times = []
    for p in prompts:
        started = time.perf_counter()
        fn(p)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"prompts": len(times), "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
            "mean_ms": round(statistics.fmean(times), 2)}


def run(tmp: Path) -> dict:
    from modelworks.safety.classifier import TextSafetyModel

    model = TextSafetyModel(cache_dir=tmp / "cache", threads=1).load()
    prompts = _prompts(model.encoder.tokenizer)
    for p in prompts["everyday"][:5]:  # warm-up
        model.score(p)
        model.encoder.logits(p)
    out: dict = {"tokens": TOKENS, "runtime": model.encoder.runtime}
    for kind, texts in prompts.items():
        escalated = sum("minilm" in model.score(t).stage.values() for t in texts) / len(texts)
        out[kind] = {"cascade": _time(model.score, texts), "escalated": round(escalated, 3),
                     "ngram_only": _time(model.ngram.logits, texts),
                     "minilm_always": _time(lambda t: (model.ngram.logits(t), model.encoder.logits(t)), texts)}
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        out["everyday_one_core_busy"] = _time(model.score, prompts["everyday"])
        out["hostile_one_core_busy"] = _time(model.score, prompts["hostile"])
    finally:
        stop.set()
        busy.join(5)
    return out


def print_result(r: dict) -> None:
    print(f"\n== The classifiers on varied {r['tokens']}-token prompts, in process ({r['runtime']}) ==")
    for kind in ("everyday", "hostile"):
        k = r[kind]
        print(f"  {kind}: {k['cascade']['prompts']} prompts, {k['escalated']:.0%} sent to MiniLM")
        for name in ("cascade", "ngram_only", "minilm_always"):
            print(f"    {name:14} p50 {k[name]['p50_ms']:7.2f} ms  p99 {k[name]['p99_ms']:7.2f} ms")
        print(f"    cascade / MiniLM always at p50: {k['cascade']['p50_ms'] / k['minilm_always']['p50_ms']:.2f}")
    for kind in ("everyday", "hostile"):
        k = r[f"{kind}_one_core_busy"]
        print(f"  {kind}, one core busy beside it: p50 {k['p50_ms']:.2f} ms  p99 {k['p99_ms']:.2f} ms")
    print("  (targets for what the default policy adds to a 500-token prompt: p50 <= 10 ms, p99 <= 30 ms)")


if __name__ == "__main__":
    import tempfile

    result = run(Path(tempfile.mkdtemp()))
    print_result(result)
    print(json.dumps(result))
