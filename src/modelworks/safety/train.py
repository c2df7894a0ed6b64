"""`modelworks safety train`: rebuild the built-in classifiers from `../shared/datasets` (rerunnable, seeded).

1. Rows and splits: `corpus.py` (folds 2-4 train, fold 1 calibrates, fold 0 is held out for the figures).
2. The n-gram heads (`ngram.py`) on the training folds, each source weighted so that the two large tweet and
   statement sets count as `finetune.CAP` rows each (as the MiniLM stage samples them).
3. The MiniLM adapter and heads (`finetune.py`, PyTorch on the CPU: 5-8 minutes on 2 cores, by CPU; 12-14 with
   `windows_per_text=4`, twice the batches).
4. The cascade's calibration, gates and thresholds (`calibrate.py`) on the calibration fold, scored by the
   shipped runtime itself (ONNX, int8 where this CPU keeps it close to fp32), so what is calibrated is what serves.
Writes the three model files (`classifier.py`) into `out` (the package's models folder by default).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import numpy as np

from modelworks.safety import calibrate, corpus, finetune, ngram
from modelworks.safety.classifier import ADAPTER, CALIBRATION, MODEL_DIR, NGRAM

HEADS = corpus.HEADS


def train(data_dir: Path, out: Path = MODEL_DIR, *, epochs: int = 3, seed: int = 0, exclude: tuple[str, ...] = (),
          limit: int = 0, cache_dir: Path | None = None, calibrate_only: bool = False, windows_per_text: int = 1,
          log=print) -> dict:
    """`calibrate_only`: keep both stages' files in `out` and fit the calibration again (a minute, not the 5-8 of
    fine-tuning); `windows_per_text`: MiniLM trains on each text's first this many windows (`finetune.py`)."""
    from modelworks.safety.encoder import minilm_dir

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    rows = corpus.load(data_dir)
    fit = corpus.usable(rows, (2, 3, 4), exclude)
    cal = corpus.usable(rows, (1,), exclude)
    if limit:
        fit, cal = fit[:limit], cal[:limit]
    log(f"{len(rows):,} rows: {len(fit):,} to train on, {len(cal):,} to calibrate on"
        + (f" (left out: {', '.join(exclude)})" if exclude else ""))
    if calibrate_only:
        meta = json.loads((out / CALIBRATION).read_text())["finetune"]
    else:
        sizes = collections.Counter(r.source for r in fit)
        ngram.train(fit, HEADS, lambda r: min(1.0, finetune.CAP / sizes[r.source]), out / NGRAM, log=log)
        log(f"n-gram heads written ({time.monotonic() - started:.0f} s)")
        meta = finetune.finetune(fit, HEADS, minilm_dir(), out / ADAPTER, epochs=epochs, seed=seed, limit=limit,
                                 windows_per_text=windows_per_text, log=log)
        log(f"MiniLM adapter written ({time.monotonic() - started:.0f} s)")
    zn, ze, zn_any = score_both(out, [r.text for r in cal], cache_dir)
    # the ensemble and the probabilities are fitted on real rows only: this project's templated rows are easy
    # for both stages (the n-gram heads most), and would teach the ensemble to trust what only fits templates;
    # they do count among the benign rows a threshold must leave alone (the only instruction-like ones)
    real = np.array([r.source != corpus.SYNTHETIC for r in cal])
    targets = [r.targets if keep else {} for r, keep in zip(cal, real)]
    benign = np.array([i for i, r in enumerate(cal) if r.benign], dtype=np.int64)
    lookalikes = np.array([i for i, r in enumerate(cal) if r.benign and r.source == "xstest"], dtype=np.int64)
    floor = ngram.NgramModel(out / NGRAM).bias
    fitted = calibrate.fit(HEADS, zn, ze, targets, benign, lookalikes, floor, zn_any)
    fitted.update({"version": 2, "seed": seed, "epochs": epochs, "excluded": list(exclude),
                   "split": "sha256(text) first 8 hex digits mod 5: 0 held out, 1 calibration, 2-4 training",
                   "training_rows": dict(collections.Counter(r.source for r in fit)),
                   "calibration_rows": dict(collections.Counter(r.source for r in cal)),
                   "finetune": meta, "seconds": round(time.monotonic() - started)})
    (out / CALIBRATION).write_text(json.dumps(fitted, indent=1) + "\n")
    for head, f in fitted["heads"].items():
        gate = "flagged's" if f["gate"] is None else f"{f['gate']:.2f}"
        log(f"  {head}: ensemble {np.round(f['ensemble'], 3).tolist()}, gate {gate}, "
            f"threshold {f['threshold']:.3f} ({f['positive']} of {f['rows']} calibration rows positive)")
    log(f"written {out} in {time.monotonic() - started:.0f} s")
    return fitted


def score_both(model_dir: Path, texts: list[str], cache_dir: Path | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each text's logits (rows x heads) on the windows the cascade cuts (`encoder.windows`): MiniLM's highest
    window per head, the n-gram logit of that same window (serving combines each window's own pair), and the
    highest n-gram logit of any window (what decides whether MiniLM reads the text at all)."""
    from modelworks.safety.classifier import DEFAULT_CACHE
    from modelworks.safety.encoder import EncoderModel, windows

    grams = ngram.NgramModel(model_dir / NGRAM)
    # two threads score what one does (serving's): the same logits, bit for bit, on 261 windows of the calibration fold
    encoder = EncoderModel(model_dir / ADAPTER, (cache_dir or DEFAULT_CACHE).expanduser(), threads=2)
    paired, best, highest = [], [], []
    for text in texts:
        ids, spans = windows(encoder.tokenizer, text)
        zn = grams.window_logits(text, spans)                        # windows x heads
        ze = encoder.window_logits(ids)
        top = ze.argmax(axis=0)
        heads = np.arange(ze.shape[1])
        best.append(ze[top, heads])
        paired.append(zn[top, heads])
        highest.append(zn.max(axis=0))
    return np.array(paired), np.array(best), np.array(highest)
