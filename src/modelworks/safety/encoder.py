"""The MiniLM stage: the packaged all-MiniLM-L6-v2 with this project's fine-tuned adapter, on ONNX Runtime.

The committed file (`models/text-safety-minilm.npz`, 1.2 MB) holds only what fine-tuning changed: a low-rank
update (LoRA, B @ A times `scale`) of every layer's four matrices (Q/K/V together, attention output, the two
feed-forward ones), every layer's biases and layer norms, and the heads. At start the update is merged into the
package's weights and the result written once, as safetensors, to the model cache; `minilm_onnx` then writes
and caches the same graph the embeddings backend runs (mean pooling, unit length), so the classifier costs what
an embedding costs: one pass per window of `WINDOW` tokens. A long text is split into windows at token
boundaries and each head takes its highest window (whose character span explains the decision).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

WINDOW = 128          # tokens per window, [CLS] and [SEP] included
INT8_MIN_COSINE = 0.97  # int8 serves if its pooled vectors stay this close to fp32's (checked a sentence at a time,
# as windows run: 0.9913 on the AVX-512 VNNI EPYC of the card's figures; the calibration is fitted on the int8
# outputs, half the cost of fp32 on 500 tokens)
MATRICES = {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "o": ("attention.output.dense",), "i": ("intermediate.dense",), "f": ("output.dense",)}
NORMS = {"ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm"}


def merge(base: dict[str, np.ndarray], adapter: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The package's weights with the adapter applied (what `finetune.export` wrote)."""
    scale = float(adapter["lora_scale"])
    out = dict(base)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, keys in MATRICES.items():
            a, b = f"l{i}.{name}.A", f"l{i}.{name}.B"
            weight = np.concatenate([base[p + k + ".weight"] for k in keys]).astype(np.float32)
            bias = adapter[f"l{i}.{name}.bias"].astype(np.float32)
            if a in adapter:
                weight = weight + scale * (adapter[b].astype(np.float32) @ adapter[a].astype(np.float32))
            rows = weight.shape[0] // len(keys)
            for j, k in enumerate(keys):
                out[p + k + ".weight"] = np.ascontiguousarray(weight[j * rows:(j + 1) * rows])
                out[p + k + ".bias"] = np.ascontiguousarray(bias[j * rows:(j + 1) * rows])
        for name, key in NORMS.items():
            out[p + key + ".weight"] = adapter[f"l{i}.{name}.weight"].astype(np.float32)
            out[p + key + ".bias"] = adapter[f"l{i}.{name}.bias"].astype(np.float32)
    return out


class EncoderModel:
    """`logits(text)`: the MiniLM heads' logits, highest window per head, with each head's character span."""

    def __init__(self, adapter_path: Path, cache_dir: Path, threads: int = 1, model_dir: Path | None = None,
                 quantize: bool = True) -> None:
        from modelworks.backends.minilm_onnx import OnnxMiniLM

        data = np.load(adapter_path, allow_pickle=False)
        self.meta = json.loads(data["meta"].tobytes().decode())
        self.heads: tuple[str, ...] = tuple(self.meta["heads"])
        self.head_w = data["head_w"].astype(np.float32)   # heads x hidden (the pooled vector is scaled first)
        self.head_b = data["head_b"].astype(np.float32)
        self.pool_scale = float(self.meta["pool_scale"])
        model_dir = model_dir or minilm_dir()
        weights = merged_weights(model_dir / "model.safetensors", adapter_path, data, cache_dir)
        self.encoder = OnnxMiniLM(model_dir, batch_size=1, threads=threads, cache_dir=cache_dir,
                                  weights_path=weights, quantize=quantize, min_cosine=INT8_MIN_COSINE)
        self.tokenizer = load_tokenizer(model_dir)
        self.runtime = self.encoder.runtime

    def logits(self, text: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Every window's logits: the highest per head, and the character span of the window that gave it."""
        ids, spans = windows(self.tokenizer, text)
        z = self.window_logits(ids)
        best = z.argmax(axis=0)
        return z.max(axis=0), [spans[w] for w in best]

    def window_logits(self, ids: list[list[int]]) -> np.ndarray:
        """The heads' logits (windows x heads) of token windows from `windows`, each window run alone: the int8
        graph quantises its activations with one scale per input, so a window batched beside others scored up to
        0.43 (logit) apart from alone, and the per-window cache kept whichever it was read with first. Alone, a
        window's logits are its own, whatever is read with it or before it (one thread gains nothing by batching)."""
        out = []
        for window in ids:  # the graph's unit-length mean-pooled vector, then the heads, a window at a time (a
            # matrix product's rounding depends on its rows too)
            pooled = self.encoder._forward(np.array([window], dtype=np.int64), np.ones((1, len(window)), np.float32))
            out.append((pooled * self.pool_scale) @ self.head_w.T + self.head_b)
        return np.concatenate(out)


def load_tokenizer(model_dir: Path | None = None):
    """MiniLM's tokenizer, set for windows: no truncation (the package's file truncates at 128 tokens), no
    padding, and "[SEP]" typed in a prompt is text, not the separator."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str((model_dir or minilm_dir()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    return tokenizer


def windows(tokenizer, text: str) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token windows of at most WINDOW tokens ([CLS] ... [SEP]) covering the text, and their character spans (a
    text without tokens is one empty window spanning it)."""
    enc = tokenizer.encode(text)
    cls, sep = enc.ids[0], enc.ids[-1]
    body, offsets = enc.ids[1:-1], enc.offsets[1:-1]
    size = WINDOW - 2
    if not body:
        return [[cls, sep]], [(0, len(text))]
    ids, spans = [], []
    for start in range(0, len(body), size):
        chunk = body[start:start + size]
        ids.append([cls, *chunk, sep])
        spans.append((offsets[start][0], offsets[start + len(chunk) - 1][1]))
    return ids, spans


def minilm_dir() -> Path:
    from modelworks.model_files import MINILM_PACKAGE, _import

    return Path(_import(MINILM_PACKAGE).get_model_path())


def merged_weights(base_path: Path, adapter_path: Path, adapter: dict, cache_dir: Path) -> Path:
    """The merged weights file in the cache, written once per (base, adapter) pair."""
    from safetensors.numpy import load_file, save_file

    digest = hashlib.sha256()
    for path in (base_path, adapter_path):
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    folder = cache_dir / "safety"
    target = folder / f"minilm-safety-{digest.hexdigest()[:16]}.safetensors"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    base = load_file(str(base_path))
    layers = sum(1 for k in base if k.endswith("attention.self.query.weight"))
    handle, name = tempfile.mkstemp(dir=folder, prefix=target.stem + ".", suffix=".partial")
    os.close(handle)
    try:
        save_file(merge(base, adapter, layers), name)
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)
    return target
