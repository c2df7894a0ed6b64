"""The cheap stage: one logistic head per label over hashed word and character n-grams (`features.py`), NumPy.

About 2 ms a thousand characters. On its own it learns the surface of its training sets (v1 flagged "I love you"
as hate); in the cascade (`classifier.py`) it decides only the clear negatives, and its score is one input of the
calibrated ensemble with the MiniLM heads for everything else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from modelworks.safety import features

L2 = 1e-4  # per-sample L2 strength, every head


class NgramModel:
    def __init__(self, path: Path) -> None:
        data = np.load(path, allow_pickle=False)
        self.meta = json.loads(data["meta"].tobytes().decode())
        self.heads: tuple[str, ...] = tuple(self.meta["heads"])
        self.idf = data["idf"].astype(np.float32)
        self.weights = data["weights"].astype(np.float32)  # heads x dimensions
        self.bias = data["bias"].astype(np.float32)

    def logits(self, text: str) -> np.ndarray:
        """The highest logit per head over the text's windows (the cascade passes one window at a time)."""
        best = np.full(len(self.heads), -np.inf, dtype=np.float32)
        for piece in features.windows(text):
            index, values = features.vector(piece, self.idf)
            z = self.weights[:, index] @ values + self.bias if len(index) else self.bias
            np.maximum(best, z, out=best)
        return best


    def window_logits(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """Each window's logits (windows x heads), the windows being MiniLM's (`encoder.windows`); a text of one
        window is scored whole. Serving and calibration both score through here, so they cut alike."""
        if len(spans) == 1:
            return self.logits(text)[None, :]
        return np.array([self.logits(text[a:b]) for a, b in spans])


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

    def take(self, picked: np.ndarray) -> "Matrix":
        keep = np.isin(self.rows, picked)
        out = Matrix.__new__(Matrix)
        renumber = np.full(self.n, -1, dtype=np.int64)
        renumber[picked] = np.arange(len(picked))
        out.n, out.rows, out.cols, out.vals = len(picked), renumber[self.rows[keep]], self.cols[keep], self.vals[keep]
        return out


def fit_idf(texts: list[str]) -> np.ndarray:
    df = np.zeros(features.DIMENSIONS)
    for text in texts:
        for b in features.counts(text):
            df[b] += 1
    return (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)  # sklearn's smooth idf


def fit_head(x: Matrix, y: np.ndarray, sample: np.ndarray, l2: float = L2, steps: int = 400
             ) -> tuple[np.ndarray, float]:
    """Logistic regression, class-balanced, by Adam on the full batch; `sample` weighs rows (sources)."""
    size = features.DIMENSIONS
    pos = max(1e-9, float((sample * y).sum()))
    neg = max(1e-9, float((sample * (1 - y)).sum()))
    total = pos + neg
    weight = sample * np.where(y == 1, total / (2 * pos), total / (2 * neg))
    w, b = np.zeros(size), 0.0
    m, v, mb, vb = np.zeros(size), np.zeros(size), 0.0, 0.0
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        p = 1 / (1 + np.exp(-(x.dot(w) + b)))
        g = weight * (p - y) / total
        gw = x.t_dot(g, size) + l2 * w
        gb = g.sum()
        m = beta1 * m + (1 - beta1) * gw
        v = beta2 * v + (1 - beta2) * gw * gw
        mb = beta1 * mb + (1 - beta1) * gb
        vb = beta2 * vb + (1 - beta2) * gb * gb
        w -= lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        b -= lr * (mb / (1 - beta1 ** step)) / (math.sqrt(vb / (1 - beta2 ** step)) + eps)
    return w, b


def train(rows, heads: tuple[str, ...], weigh, out: Path, log=print) -> None:
    """Fit the IDF and one head per label on `rows` (corpus.Row); `weigh(row)` gives a row's sample weight."""
    idf = fit_idf([r.text for r in rows])
    x = Matrix([features.vector(r.text, idf) for r in rows])
    sample = np.array([weigh(r) for r in rows])
    weights, biases = [], []
    for head in heads:
        picked = np.array([i for i, r in enumerate(rows) if head in r.targets], dtype=np.int64)
        y = np.array([rows[i].targets[head] for i in picked], dtype=np.float64)
        w, b = fit_head(x.take(picked), y, sample[picked])
        weights.append(w)
        biases.append(b)
        log(f"  n-gram {head}: {len(y)} rows ({int(y.sum())} positive)")
    meta = {"version": 2, "heads": list(heads), "features": {"bits": features.BITS,
                                                            "window_chars": features.WINDOW_CHARS}}
    np.savez_compressed(out, idf=idf.astype(np.float16), weights=np.array(weights, dtype=np.float16),
                        bias=np.array(biases, dtype=np.float32), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
