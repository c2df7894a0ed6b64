"""all-MiniLM-L6-v2 on ONNX Runtime: the graph is written here from the packaged safetensors (no PyTorch, no
exported file), optionally int8-quantised, cached on disk, and run by ORT's CPU provider.

The graph is the same computation as the NumPy forward in `minilm_model.py` (the reference the tests compare it
with): embeddings and their layer norm, six encoder layers, mean pooling over real tokens and L2 normalisation.
Each layer's attention is ORT's fused `com.microsoft.Attention` operator (Q, K and V in one matrix, the padding
mask as a raw 0/1 mask); the rest is standard ONNX that ORT's optimiser fuses further (Add + LayerNormalization
into SkipLayerNormalization, MatMul + bias + Gelu into one kernel).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from modelworks.backends.minilm_model import MiniLM

log = logging.getLogger(__name__)

GRAPH_VERSION = "1"   # bump when the graph written below changes: cached files carry it in their name
OPSET = 20            # Gelu is a standard operator from opset 20
MIN_COSINE = 0.99     # int8 is used only if its vectors stay this close to fp32's on every CHECK sentence
# (on the AMD EPYC with AVX2 and no VNNI this project is built on, dynamic int8 reaches 0.973: refused)
CHECK = [
    "A man is eating food.", "A woman is playing the violin.", "The new movie is awesome.",
    "Two men pushed carts through the woods.", "How do I reset my password?", "x", "",
    "The committee will publish its final report on water quality in the northern districts next spring.",
    "Patients receiving the higher dose showed a significant reduction in systolic blood pressure after 12 weeks.",
    "Der Vertrag tritt am ersten Januar in Kraft.", "Les données restent dans l'Union européenne.",
    "SELECT id, name FROM users WHERE created_at > now() - interval '7 days';",
    "Revenue grew 14% year over year, driven by subscriptions in Europe and Asia. " * 12,
]


class OnnxMiniLM(MiniLM):
    """MiniLM whose forward pass runs on ONNX Runtime; tokenisation and batching are MiniLM's."""

    def __init__(self, model_dir: Path, batch_size: int = 32, *, threads: int = 1, quantize: bool = False,
                 cache_dir: Path | None = None, weights_path: Path | None = None,
                 min_cosine: float = MIN_COSINE) -> None:
        self.threads = threads
        self.min_cosine = min_cosine
        self.quantize = quantize
        self.cache_dir = cache_dir
        super().__init__(model_dir, batch_size, weights_path=weights_path)

    def _load(self, weights_path: Path) -> None:
        import onnxruntime as ort

        fp32 = self._graph_file(weights_path, "fp32", lambda out: self._write_fp32(weights_path, out))
        self.session = self._session(fp32)
        precision = "fp32"
        if self.quantize:
            precision = self._use_int8(weights_path, fp32, ort.__version__)
        self.runtime = (f"onnxruntime {ort.__version__} ({precision}; {self.threads} thread"
                        f"{'' if self.threads == 1 else 's'})")

    def _use_int8(self, weights_path: Path, fp32: Path, version: str) -> str:
        """Switch to the int8 graph if its vectors stay within MIN_COSINE of fp32's on every CHECK sentence: checked
        at every start (a fraction of a second), as the answer depends on this CPU's integer kernels (the graph
        file, made by this ONNX Runtime's quantiser, is cached). Returns what runs."""
        try:
            int8 = self._graph_file(weights_path, f"int8-ort{version}", lambda out: _quantize(fp32, out))
            quantized = self._session(int8)
        except Exception as exc:  # noqa: BLE001 - a quantiser that fails leaves the fp32 graph running
            log.warning("int8 quantisation of MiniLM failed (%s); running fp32", exc)
            return "fp32; int8 failed to build"
        reference = self._vectors(self.session, CHECK)
        cosine = float((reference * self._vectors(quantized, CHECK)).sum(axis=1).min())
        if cosine < self.min_cosine:
            log.warning("int8 MiniLM refused: its lowest cosine to fp32 on the check sentences is %.4f < %s; "
                        "running fp32", cosine, self.min_cosine)
            return f"fp32; int8 refused, its lowest cosine to fp32 {cosine:.4f} < {self.min_cosine}"
        self.session = quantized
        return f"int8, lowest cosine to fp32 {cosine:.4f}"

    def _session(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between operators would take a core from the LLM's decode on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _graph_file(self, weights_path: Path, kind: str, write) -> Path:
        """The cached graph file for these weights, written first (by `write(path)`) if it is not there yet."""
        stat = weights_path.stat()
        key = hashlib.sha256(f"{weights_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GRAPH_VERSION}".encode()
                             ).hexdigest()[:16]
        folder = (self.cache_dir or weights_path.parent) / "onnx"
        path = folder / f"minilm-{key}-{kind}.onnx"
        if path.exists():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=folder, prefix=path.stem + ".", suffix=".partial")
        os.close(handle)
        partial = Path(name)
        try:
            write(partial)
            os.replace(partial, path)  # atomic: processes writing at once each rename a whole file of their own
        finally:
            partial.unlink(missing_ok=True)
        log.info("wrote the %s ONNX graph of %s to %s", kind, weights_path.parent.name, path)
        return path

    def _write_fp32(self, weights_path: Path, out: Path) -> None:
        import onnx
        from safetensors.numpy import load_file

        onnx.save_model(build_graph(load_file(str(weights_path)), heads=self.heads, layers=self.layers,
                                    eps=self.eps), str(out))

    def _vectors(self, session, texts: list[str]) -> np.ndarray:
        current, self.session = getattr(self, "session", None), session
        try:
            return self.encode(texts)[0]
        finally:
            self.session = current

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask.astype(np.int32)})[0]


def build_graph(w: dict[str, np.ndarray], *, heads: int, layers: int, eps: float):
    """The ONNX model of the sentence encoder: (input_ids int64 [B, T], attention_mask int32 [B, T]) ->
    sentence_embedding float32 [B, hidden], unit length."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def linear(inp: str, key: str, name: str) -> str:
        """A PyTorch Linear (`key`.weight is [out, in]): inp @ weight.T + bias."""
        const(name + "_w", np.ascontiguousarray(w[key + ".weight"].T))
        const(name + "_b", w[key + ".bias"])
        return node("Add", [node("MatMul", [inp, name + "_w"], name), name + "_b"], name + "b")

    def add_norm(h: str, residual: str, key: str, name: str) -> str:
        """LayerNorm(h + residual) with the weights under `key`."""
        const(name + "_w", w[key + ".weight"])
        const(name + "_b", w[key + ".bias"])
        return node("LayerNormalization", [node("Add", [h, residual], name + "_in"), name + "_w", name + "_b"],
                    name, axis=-1, epsilon=eps)

    # embeddings: word + position (the first T rows) + token type 0, then layer norm
    const("word", w["embeddings.word_embeddings.weight"])
    const("pos", w["embeddings.position_embeddings.weight"])
    const("type0", w["embeddings.token_type_embeddings.weight"][0])
    const("zero", np.array([0], dtype=np.int64))
    const("emb_ln_w", w["embeddings.LayerNorm.weight"])
    const("emb_ln_b", w["embeddings.LayerNorm.bias"])
    node("Shape", ["input_ids"], "width", start=1, end=2)
    node("Slice", ["pos", "zero", "width", "zero"], "pos_rows")
    node("Gather", ["word", "input_ids"], "words")
    node("Add", ["words", "pos_rows"], "emb_wp")
    node("Add", ["emb_wp", "type0"], "emb")
    x = node("LayerNormalization", ["emb", "emb_ln_w", "emb_ln_b"], "x0", axis=-1, epsilon=eps)

    for i in range(layers):
        p = f"encoder.layer.{i}."
        n = f"l{i}_"
        qkv_w = np.concatenate([w[p + f"attention.self.{k}.weight"] for k in ("query", "key", "value")]).T
        qkv_b = np.concatenate([w[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")])
        const(n + "qkv_w", np.ascontiguousarray(qkv_w))
        const(n + "qkv_b", qkv_b)
        attn = node("Attention", [x, n + "qkv_w", n + "qkv_b", "attention_mask"], n + "attn",
                    domain="com.microsoft", num_heads=heads)
        h = linear(attn, p + "attention.output.dense", n + "o")
        x = add_norm(h, x, p + "attention.output.LayerNorm", n + "ln1")
        h = node("Gelu", [linear(x, p + "intermediate.dense", n + "i")], n + "gelu")
        h = linear(h, p + "output.dense", n + "f")
        x = add_norm(h, x, p + "output.LayerNorm", n + "ln2")

    # mean over real tokens, then unit length
    const("last", np.array([-1], dtype=np.int64))
    const("one", np.array([1], dtype=np.int64))
    const("tiny", np.array(1e-9, dtype=np.float32))
    const("tiny_norm", np.array(1e-12, dtype=np.float32))
    node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    node("Unsqueeze", ["mask_f", "last"], "mask3")
    node("Mul", [x, "mask3"], "masked")
    node("ReduceSum", ["masked", "one"], "summed", keepdims=0)
    node("ReduceSum", ["mask_f", "one"], "count", keepdims=1)
    node("Max", ["count", "tiny"], "count_safe")
    node("Div", ["summed", "count_safe"], "pooled")
    node("ReduceL2", ["pooled", "last"], "norm", keepdims=1)
    node("Max", ["norm", "tiny_norm"], "norm_safe")
    node("Div", ["pooled", "norm_safe"], "sentence_embedding")

    hidden = w["embeddings.word_embeddings.weight"].shape[1]
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "tokens"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="modelworks")
    model.ir_version = 9
    return model


def _quantize(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantisation of the matrix multiplications (weights int8 per output channel, activations
    quantised per call); the embedding tables and layer norms stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # (the contrib Attention operator has no shape inference in `onnx`: its output's type is given here)
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
