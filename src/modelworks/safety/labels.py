"""The labelled data in `../shared/datasets` and what each row says about each classifier head.

Every file is JSON Lines `{"text", "labels", "source"}`. openai_moderation labels the harm categories (`S`
sexual, `H` hate, `V` violence, `HR` harassment, `SH` self-harm, `S3` sexual/minors, `H2` hate/threatening,
`V2` violence/graphic; absent = unknown); jailbreak_prompts `jailbreak: 1`; harmful_questions
`harmful_request: 1`; xstest `unsafe` 0/1. The split is fixed by each text's hash: one row in five is held out
for evaluation and never trained on, so anyone who reruns training gets the same split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HARM_LABELS = {"hate": ("H", "H2", "HR"), "sexual": ("S", "S3"), "violence": ("V", "V2"), "self_harm": ("SH",)}
MODERATION_KEYS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")


def fold(text: str) -> int:
    """0-4, fixed by the text: fold 0 is the held-out fifth."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 5


def is_holdout(text: str) -> bool:
    return fold(text) == 0


def read(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def targets(row: dict) -> dict[str, int | None]:
    """Head -> 1 (positive), 0 (negative) or None (unknown) for one row; heads the row says nothing of are absent."""
    labels = row.get("labels", {})
    out: dict[str, int | None] = {}
    if any(k in labels for k in MODERATION_KEYS):
        for head, keys in HARM_LABELS.items():
            known = [labels[k] for k in keys if k in labels]
            out[head] = 1 if any(v == 1 for v in known) else (0 if known else None)
        out["flagged"] = 1 if any(labels.get(k) == 1 for k in MODERATION_KEYS) else 0
    if "jailbreak" in labels:
        out["jailbreak"] = int(labels["jailbreak"])
    if "harmful_request" in labels:
        out["harmful_request"] = int(labels["harmful_request"])
    if "unsafe" in labels:
        out["unsafe"] = int(labels["unsafe"])
    return out
