"""The built-in safety classifiers: logistic heads over hashed n-gram features (`features.py`), on the CPU.

One model file holds the features' inverse document frequencies and one head per label: the harm categories
(hate, sexual, violence, self_harm), `flagged` (harmful in any way) and `jailbreak` (a user prompt attack). A
head's score is a probability; the harm categories map it to Azure's 0-7 severity as floor(8 x score), so
"medium" (4) starts at 0.5, where the class-balanced training puts its decision boundary. Each head also has
the operating threshold chosen in training (the card, `models/CARD.md`, says how and what it measured).
The weights come from `modelworks safety train`; see that module for the data and the split.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelworks.safety import features

MODEL_PATH = Path(__file__).parent / "models" / "text-safety-v1.npz"
HARM_HEADS = ("hate", "sexual", "violence", "self_harm")


@dataclass(frozen=True, slots=True)
class Scores:
    values: dict[str, float]   # head -> probability (the highest over a long text's windows)
    window: dict[str, tuple[int, int]]  # head -> the character span of the window that scored it

    def severity(self, category: str) -> int:
        return min(7, int(self.values[category] * 8))


class TextSafetyModel:
    def __init__(self, path: Path = MODEL_PATH) -> None:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(data["meta"].tobytes().decode())
        self.meta = meta
        self.heads: tuple[str, ...] = tuple(meta["heads"])
        self.thresholds: dict[str, float] = meta["thresholds"]
        self.idf = data["idf"].astype(np.float32)
        self.weights = data["weights"].astype(np.float32)  # heads x dimensions
        self.bias = data["bias"].astype(np.float32)

    def score(self, text: str) -> Scores:
        best = {h: 0.0 for h in self.heads}
        where = {h: (0, len(text)) for h in self.heads}
        offset = 0
        for piece in features.windows(text):
            index, values = features.vector(piece, self.idf)
            logits = self.weights[:, index] @ values + self.bias if len(index) else self.bias
            probs = 1.0 / (1.0 + np.exp(-logits))
            for h, p in zip(self.heads, probs.tolist()):
                if p > best[h]:
                    best[h], where[h] = p, (offset, offset + len(piece))
            offset += len(piece)
        return Scores(best, where)


@functools.lru_cache(maxsize=1)
def default_model() -> TextSafetyModel:
    return TextSafetyModel()
