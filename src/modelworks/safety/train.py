"""`modelworks safety train`: train the built-in safety classifiers from `../shared/datasets` (rerunnable).

Features: `features.py` (hashed word and character n-grams, TF-IDF). Heads, each an L2-regularised logistic
regression with class-balanced weights, trained on the rows outside the held-out fifth (`labels.is_holdout`):
- hate, sexual, violence, self_harm and flagged: openai_moderation rows whose label for it is known;
- jailbreak: jailbreak_prompts (positive) against every other file's rows (negative), harmful questions
  included: asking for something harmful is not an attack on the model's instructions.
Each head's operating threshold is 0.5 for the harm heads (severity medium) and, for jailbreak, the lowest score
that flags at most 2% of the benign training rows (the target allows 5% on unseen ones).
Writes `models/text-safety-v1.npz` (float16 weights, about 1 MB) and prints the held-out figures, which the
card (`models/CARD.md`) records.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from modelworks.safety import features, labels
from modelworks.safety.classifier import MODEL_PATH

HEADS = ("hate", "sexual", "violence", "self_harm", "flagged", "jailbreak")
L2 = 1e-4  # per-sample L2 strength, every head


class Matrix:
    """Rows of sparse features as flat arrays (row, column, value): what the gradient needs, nothing more."""

    def __init__(self, vectors: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.n = len(vectors)
        self.rows = np.concatenate([np.full(len(i), r, dtype=np.int64) for r, (i, _) in enumerate(vectors)])
        self.cols = np.concatenate([i for i, _ in vectors])
        self.vals = np.concatenate([v for _, v in vectors]).astype(np.float64)

    def dot(self, w: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=self.vals * w[self.cols], minlength=self.n)

    def t_dot(self, g: np.ndarray, size: int) -> np.ndarray:
        return np.bincount(self.cols, weights=self.vals * g[self.rows], minlength=size)


def fit_idf(texts: list[str]) -> np.ndarray:
    df = np.zeros(features.DIMENSIONS)
    for text in texts:
        for b in features.counts(text):
            df[b] += 1
    return (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)  # sklearn's smooth idf


def fit_head(x: Matrix, y: np.ndarray, l2: float, steps: int = 600) -> tuple[np.ndarray, float]:
    """Logistic regression, class-balanced, by Adam on the full batch."""
    size = features.DIMENSIONS
    pos = max(1, int(y.sum()))
    neg = max(1, len(y) - pos)
    weight = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg))
    w, b = np.zeros(size), 0.0
    m, v, mb, vb = np.zeros(size), np.zeros(size), 0.0, 0.0
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        p = 1 / (1 + np.exp(-(x.dot(w) + b)))
        g = weight * (p - y) / len(y)
        gw = x.t_dot(g, size) + l2 * w
        gb = g.sum()
        m = beta1 * m + (1 - beta1) * gw
        v = beta2 * v + (1 - beta2) * gw * gw
        mb = beta1 * mb + (1 - beta1) * gb
        vb = beta2 * vb + (1 - beta2) * gb * gb
        w -= lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        b -= lr * (mb / (1 - beta1 ** step)) / (math.sqrt(vb / (1 - beta2 ** step)) + eps)
    return w, b


def train(data_dir: Path, out: Path = MODEL_PATH, log=print) -> dict:
    started = time.monotonic()
    rows = []
    for name in labels.FILES:
        for row in labels.read(data_dir / name):
            row["file"] = name
            rows.append(row)
    training = [r for r in rows if not labels.is_holdout(r["text"])]
    log(f"{len(rows)} rows, {len(training)} for training, {len(rows) - len(training)} held out")
    idf = fit_idf([r["text"] for r in training])
    vectors = [features.vector(r["text"], idf) for r in training]
    weights, biases, thresholds, counts = [], [], {}, {}
    for head in HEADS:
        picked, ys = [], []
        for i, row in enumerate(training):
            target = labels.targets(row)
            if head == "jailbreak":
                value = target.get("jailbreak", 0)
            else:
                value = target.get(head)
            if value is not None:
                picked.append(i)
                ys.append(value)
        y = np.array(ys, dtype=np.float64)
        x = Matrix([vectors[i] for i in picked])
        w, b = fit_head(x, y, L2)
        weights.append(w)
        biases.append(b)
        counts[head] = {"rows": len(ys), "positive": int(y.sum())}
        if head == "jailbreak":
            scores = 1 / (1 + np.exp(-(x.dot(w) + b)))
            benign = np.sort(scores[y == 0])
            thresholds[head] = float(max(0.5, benign[int(math.ceil(0.98 * len(benign))) - 1] + 1e-6))
        else:
            thresholds[head] = 0.5
        log(f"  {head}: {counts[head]['rows']} rows ({counts[head]['positive']} positive), threshold "
            f"{thresholds[head]:.3f}")
    meta = {"version": 1, "heads": list(HEADS), "thresholds": thresholds, "features": {
        "bits": features.BITS, "window_chars": features.WINDOW_CHARS}, "training_rows": counts,
        "split": "sha256(text) first 8 hex digits mod 5 == 0 held out"}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, idf=idf.astype(np.float16), weights=np.array(weights, dtype=np.float16),
                        bias=np.array(biases, dtype=np.float32), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    log(f"written {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.monotonic() - started:.0f} s")
    return meta
