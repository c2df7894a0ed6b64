"""all-MiniLM-L6-v2 (a 6-layer BERT) in NumPy: tokenizer from `tokenizers`, weights from safetensors.

Mean pooling over real tokens, then L2 normalisation, as sentence-transformers does for this model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


class MiniLM:
    """`weights_path`: other weights of the same shape (a fine-tuned copy, adapters merged: the safety classifiers'
    way to the same encoder and runtime); the package's own by default."""

    def __init__(self, model_dir: Path, batch_size: int = 32, *, weights_path: Path | None = None) -> None:
        self.batch_size = batch_size
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_len = int(st_config.get("max_seq_length", 256))
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dimensions = int(config["hidden_size"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_len)
        self.tokenizer.no_padding()
        self.tokenizer.encode_special_tokens = True  # "[SEP]" typed in an input is text, not the separator
        self._load(weights_path or model_dir / "model.safetensors")

    def _load(self, weights_path: Path) -> None:
        """Read the weights for `_forward` (subclasses running another runtime load them their way)."""
        self.runtime = "numpy"
        w = load_file(str(weights_path))
        self.word = w["embeddings.word_embeddings.weight"]
        self.pos = w["embeddings.position_embeddings.weight"]
        self.type0 = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.blocks = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T.copy()
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.blocks.append((
                qkv_w, qkv_b,
                w[p + "attention.output.dense.weight"].T.copy(), w[p + "attention.output.dense.bias"],
                (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                w[p + "intermediate.dense.weight"].T.copy(), w[p + "intermediate.dense.bias"],
                w[p + "output.dense.weight"].T.copy(), w[p + "output.dense.bias"],
                (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            ))

    def _clip(self, text: str) -> str:
        """A long text's prefix with the same first `max_len` tokens. Only those are used, but tokenizing all of a
        few MiB takes seconds. The cut is made just after whitespace, ASCII punctuation or a CJK character, where
        BERT's pre-tokenizer splits anyway (each of those ends a word), so
        the words before it tokenize as they would in the whole text; a prefix that already fills the window
        (the tokenizer had to truncate it) gives exactly the whole text's tokens."""
        chars = self.max_len * 16
        while chars < len(text):
            cut = _last_boundary(text, chars)
            if cut > 0 and self.tokenizer.encode(text[:cut]).overflowing:
                return text[:cut]
            chars *= 4
        return text

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch([self._clip(t) for t in texts])]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Return (unit vectors [len(texts), dims], tokens used)."""
        encodings = self.tokenizer.encode_batch([self._clip(t) for t in texts])
        lengths = [len(e.ids) for e in encodings]
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        # Batch texts of similar length together to keep padding (wasted work) small.
        order = np.argsort(lengths)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(lengths[i] for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.float32)
            for row, i in enumerate(idx):
                ids[row, :lengths[i]] = encodings[i].ids
                mask[row, :lengths[i]] = 1.0
            out[idx] = self._forward(ids, mask)
        return out, int(sum(lengths))

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, width = ids.shape
        x = self.word[ids] + self.pos[:width][None, :, :] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps)
        heads, dim = self.heads, self.dimensions
        head_dim = dim // heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        scale = float(1.0 / np.sqrt(head_dim))  # a Python float: a NumPy float64 would promote to float64
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.blocks:
            qkv = x @ qkv_w + qkv_b
            qkv = qkv.reshape(batch, width, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, width, dim)
            x = _layer_norm(ctx @ o_w + o_b + x, *ln1, self.eps)
            h = _gelu(x @ i_w + i_b)
            x = _layer_norm(h @ f_w + f_b + x, *ln2, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT uses: x * Phi(x), with erf by Abramowitz-Stegun 7.1.26 (error below 1.5e-7).

    Written in place over two buffers: this runs on (batch, tokens, 1536) arrays in every layer.
    """
    a = np.abs(x)
    a *= 0.7071067811865476                      # |z| = |x| / sqrt(2)
    t = a * 0.3275911
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * 1.061405429
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += c
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a                                    # 1 - erf(|z|)
    poly *= 0.5                                  # Phi(-|x|)
    # Phi(x) = Phi(-|x|) for x < 0, and 1 - Phi(-|x|) for x >= 0.
    np.copyto(poly, 1.0 - poly, where=x >= 0)
    poly *= x
    return poly


# what ends a word for BERT's pre-tokenizer: whitespace, ASCII punctuation, a CJK ideograph (each its own word)
_BOUNDARY = re.compile(r"[\s!-/:-@\[-`{-~\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _last_boundary(text: str, end: int) -> int:
    """The position just after the last word boundary in the 1,000 characters before `end`, or 0 if none."""
    start = max(0, end - 1000)
    last = None
    for last in _BOUNDARY.finditer(text, start, end):
        pass
    return last.end() if last is not None else 0
