"""500-token prompts built from rows training never saw: what the eval's long-prompt figures and the cost bench
(`bench/safety_cost.py`) score.

Short rows say little about a long prompt: a window of many instructions or of several documents is not any
single row, and the first v2 model flagged half of the 500-token instruction lists as jailbreaks while passing
98% of the same instructions one by one. Kinds, each prompt cut at a token boundary after `TOKENS` tokens of
MiniLM's tokenizer:
- `instructions`: everyday instructions (alpaca_benign, never trained on) one per line, as a to-do list;
- `documents`: a question and scientific abstracts as sources, as retrieval puts them together (SciFact from
  `retrieval/scifact`, evaluation only: its license is non-commercial; absent, the kind is empty);
- `social`: held-out harmless moderation rows and Davidson's `neither` tweets: text those sets sampled for being
  near the line (forum posts on suicide, sexual spam labelled `neither`), not what a prompt usually is, so it is
  reported beside the everyday kinds, not among them;
- `hostile`: held-out jailbreak prompts, ToxiGen's hateful statements and flagged moderation rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelworks.safety import corpus

TOKENS = 500
EVERYDAY = ("instructions", "documents")


def build(data_dir: Path, tokenizer, per_kind: int = 60, tokens: int = TOKENS) -> dict[str, list[str]]:
    rows = [r for r in corpus.load(data_dir, synthetic_rows=0) if r.holdout or r.source == "alpaca_benign"]
    texts = {
        "instructions": [r.text for r in rows if r.source == "alpaca_benign"],
        "social": [r.text for r in rows if r.benign and r.source in ("openai_moderation", "davidson_hate_offensive")],
        "hostile": [r.text for r in rows if r.source == "jailbreak_prompts"
                    or (r.source in ("toxigen", "openai_moderation") and 1 in r.targets.values())],
    }
    out = {kind: _join(found, tokenizer, per_kind, tokens) for kind, found in texts.items()}
    out["documents"] = _documents(data_dir / "retrieval" / "scifact", tokenizer, per_kind, tokens)
    return out


def _cut(text: str, tokenizer, tokens: int) -> str | None:
    enc = tokenizer.encode(text)
    if len(enc.ids) < tokens:
        return None
    return text[:enc.offsets[tokens - 2][1]]  # [CLS] and [SEP] count among the tokens


def _join(texts: list[str], tokenizer, count: int, tokens: int) -> list[str]:
    prompts, current = [], []
    for text in texts:
        current.append(text)
        cut = _cut("\n".join(current), tokenizer, tokens)
        if cut is not None:
            prompts.append(cut)
            current = []
            if len(prompts) == count:
                break
    return prompts


def _documents(folder: Path, tokenizer, count: int, tokens: int) -> list[str]:
    if not (folder / "corpus.jsonl").exists() or not (folder / "queries.jsonl").exists():
        return []
    with open(folder / "corpus.jsonl") as f:
        docs = [json.loads(line) for _, line in zip(range(2000), f) if line.strip()]
    with open(folder / "queries.jsonl") as f:
        questions = [json.loads(line)["text"] for line in f if line.strip()]
    if not docs:
        return []
    prompts = []
    for k in range(min(count, len(questions))):
        text = (f"Answer the question using only the sources below, and cite them by number.\n\n"
                f"Question: is it true that {questions[k]}\n\nSources:\n")
        j = 0
        while (cut := _cut(text, tokenizer, tokens)) is None:
            doc = docs[(k * 13 + j) % len(docs)]
            text += f"[{j + 1}] {doc['title']}\n{doc['text']}\n\n"
            j += 1
        prompts.append(cut)
    return prompts
