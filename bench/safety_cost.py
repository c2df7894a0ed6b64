"""The built-in classifiers' cost on varied 500-token prompts, in process (`make bench`, section `safety`).

The wrk figure in `run.py` sends one everyday prompt again and again (after the first, its score is kept): it
shows what the policy adds to a request, not what the cascade costs on a text it has not seen. Here each prompt is
500 tokens (MiniLM's tokenizer) of rows never trained on (`modelworks.safety.longprompts`): everyday kinds (a
to-do list of instructions, a question with scientific abstracts as sources), harmless rows of the moderation
sets (forum posts and tweets, sampled for being near the line) and hostile ones, and `TextSafetyModel.score` is
timed per prompt with kept scores dropped first:
- the cascade, side by side with the n-gram stage alone (v1's cost) and with every window sent to MiniLM (no
  cascade), the encoder on one thread (as served: the LLM's decode keeps the other core);
- the everyday kinds together: the figure the targets are about (the moderation sets' harmless rows are not what
  a prompt usually is; their cost is printed beside);
- a chat's next turn: a 500-token conversation whose earlier messages were scored on earlier turns (the policy
  scores each message; a chat resends its history every turn), so only the new message is scored;
- the same cascade while a second process keeps one core busy (a decode running beside it).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


def _time(fn, prompts: list, forget=None) -> dict:
    if not prompts:
        return {"prompts": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    times = []
    for p in prompts:
        if forget:
            forget()
        started = time.perf_counter()
        fn(p)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"prompts": len(times), "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
            "mean_ms": round(statistics.fmean(times), 2)}


def _chats(prompts: dict[str, list[str]]) -> list[list[str]]:
    """Conversations of six messages (system, then user and assistant turns) cut from the everyday prompts."""
    out = []
    for text in prompts["instructions"]:
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) >= 6:
            step = len(lines) // 6
            out.append(["\n".join(lines[i * step:(i + 1) * step]) for i in range(5)] + ["\n".join(lines[5 * step:])])
    return out


def run(tmp: Path) -> dict:
    from modelworks.safety import longprompts
    from modelworks.safety.classifier import TextSafetyModel
    from modelworks.safety.encoder import windows

    model = TextSafetyModel(cache_dir=tmp / "cache", threads=1).load()
    prompts = longprompts.build(DATASETS, model.tokenizer)
    for p in prompts["instructions"][:5]:  # warm-up
        model.score(p)
        model.encoder.logits(p)

    def ngram_only(text: str) -> None:
        for a, b in windows(model.tokenizer, text)[1]:
            model.ngram.logits(text[a:b])

    out: dict = {"tokens": longprompts.TOKENS, "runtime": model.encoder.runtime, "kinds": {}}
    for kind, texts in prompts.items():
        if not texts:
            continue
        model.forget()
        sent = [model.score(t).minilm_windows for t in texts]
        out["kinds"][kind] = {
            "cascade": _time(model.score, texts, model.forget), "escalated": round(sum(s > 0 for s in sent) / len(texts), 3),
            "windows_to_minilm": round(statistics.fmean(sent), 2), "ngram_only": _time(ngram_only, texts),
            "minilm_always": _time(lambda t: (ngram_only(t), model.encoder.logits(t)), texts)}
    everyday = [t for k in longprompts.EVERYDAY for t in prompts[k]]
    out["everyday"] = _time(model.score, everyday, model.forget)
    out["everyday_kinds"] = list(longprompts.EVERYDAY)
    chats = _chats(prompts)
    model.forget()
    for chat in chats:
        for message in chat[:-1]:
            model.score(message)
    out["chat_turn"] = _time(lambda chat: [model.score(m) for m in chat], chats)
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        out["everyday_one_core_busy"] = _time(model.score, everyday, model.forget)
        out["hostile_one_core_busy"] = _time(model.score, prompts["hostile"], model.forget)
    finally:
        stop.set()
        busy.join(5)
    return out


def print_result(r: dict) -> None:
    print(f"\n== The classifiers on varied {r['tokens']}-token prompts, in process ({r['runtime']}) ==")
    for kind, k in r["kinds"].items():
        print(f"  {kind}: {k['cascade']['prompts']} prompts, {k['escalated']:.0%} sent to MiniLM "
              f"({k['windows_to_minilm']:.2f} of their windows on average)")
        for name in ("cascade", "ngram_only", "minilm_always"):
            print(f"    {name:14} p50 {k[name]['p50_ms']:7.2f} ms  p99 {k[name]['p99_ms']:7.2f} ms")
        print(f"    cascade / MiniLM always at p50: {k['cascade']['p50_ms'] / k['minilm_always']['p50_ms']:.2f}")
    e, c = r["everyday"], r["chat_turn"]
    print(f"  everyday prompts ({' and '.join(r['everyday_kinds'])}, {e['prompts']}): p50 {e['p50_ms']:.2f} ms  "
          f"p99 {e['p99_ms']:.2f} ms")
    print(f"  a chat's next turn, earlier messages kept ({c['prompts']} chats): p50 {c['p50_ms']:.2f} ms  "
          f"p99 {c['p99_ms']:.2f} ms")
    for kind in ("everyday", "hostile"):
        k = r[f"{kind}_one_core_busy"]
        print(f"  {kind}, one core busy beside it: p50 {k['p50_ms']:.2f} ms  p99 {k['p99_ms']:.2f} ms")
    print("  (targets for what the default policy adds to a 500-token prompt: p50 <= 10 ms, p99 <= 30 ms)")


if __name__ == "__main__":
    import tempfile

    result = run(Path(tempfile.mkdtemp()))
    print_result(result)
    print(json.dumps(result))
