"""Bench section "Retrieval" (`make bench`, `--only retrieval`): vector stores on BEIR SciFact and at 100,000 chunks.

1. Quality and ingestion: the 5,183 SciFact abstracts are uploaded through the Files API (one file each, title and
   text), added to a vector store in file batches and ingested by the server (auto chunking, the built-in MiniLM
   through the embeddings path); ingestion is timed (chunks per second). The 300 test queries are searched through
   `POST /v1/vector_stores/{id}/search` (50 results, the API's most): nDCG@10 and Recall@50 against the qrels, for
   the hybrid search and for each half alone (`ranking_options.hybrid_search` weights), beside the published
   anchors (BM25 0.665, all-MiniLM-L6-v2 dense 0.645). Recall@100 needs 100 results, more than the API gives: it is
   measured on the same store's index in process.
2. Speed at 100,000 chunks: a store of 100,000 chunks (SciFact's texts and vectors, repeated with a little noise on
   the vectors) is written to the store; search p50 and p99 through the API over three passes of the 300 queries
   (each query embedded by MiniLM first, as every search is, on the server's runtime: ONNX Runtime, 2 threads), the
   index alone in process, and the IVF index's recall@10 against exact search.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.servers import Process, free_port  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "retrieval" / "scifact"
KEY = "mw-bench-retrieval-key-0123456789"
ANCHORS = {"bm25": 0.665, "minilm_dense": 0.6451}
BIG = 100_000
ROUNDS = 3  # passes over the 300 queries for the API latency at BIG chunks (p50 and p99 of all of them)
# the server here serves embeddings only: its encoder may take both cores
MINILM = {"type": "minilm", "threads": min(2, os.cpu_count() or 1)}


def _server(tmp: Path, name: str) -> Process:
    port = free_port()
    config = {"server": {"port": port, "data_dir": str(tmp / f"{name}-data")},
              "backends": {"minilm": MINILM},
              "deployments": {"all-minilm-l6-v2": {"backend": "minilm"}}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    proc = Process([sys.executable, "-m", "modelworks", "serve", "--config", str(tmp / f"{name}.yaml")],
                   f"http://127.0.0.1:{port}", tmp / f"{name}.log", env={"MODELWORKS_API_KEY": KEY})
    proc.wait_ready("/readyz", timeout=300)
    proc.db = tmp / f"{name}-data" / "modelworks.db"
    return proc


def _load():
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").open()]
    qrels: dict[str, set[str]] = {}
    for line in (DATA / "qrels-test.tsv").read_text().splitlines()[1:]:
        q, d, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(q, set()).add(d)
    return corpus, queries, qrels


def ndcg10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    return dcg / sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))


def _recall(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant)


def _files_in_order(hits) -> list[str]:
    seen, out = set(), []
    for h in hits:
        if h not in seen:
            seen.add(h)
            out.append(h)
    return out


def quality(tmp: Path) -> dict:
    corpus, queries, qrels = _load()
    proc = _server(tmp, "retrieval")
    h = {"authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=proc.url, headers=h, timeout=600) as http:
            def upload(doc):
                body = f"{doc['title']}\n{doc['text']}".encode()
                r = http.post("/v1/files", files={"file": (f"{doc['_id']}.txt", body)}, data={"purpose": "assistants"})
                r.raise_for_status()
                return r.json()["id"], doc["_id"]
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                uploaded = list(pool.map(upload, corpus))
            upload_s = time.perf_counter() - started
            doc_of = {f: d for f, d in uploaded}
            store = http.post("/v1/vector_stores", json={"name": "scifact"}).json()["id"]
            started = time.perf_counter()
            ids = [f for f, _ in uploaded]
            for i in range(0, len(ids), 2000):
                http.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": ids[i:i + 2000]}).raise_for_status()
            while True:
                counts = http.get(f"/v1/vector_stores/{store}").json()["file_counts"]
                if counts["in_progress"] == 0:
                    break
                time.sleep(2)
            ingest_s = time.perf_counter() - started
            chunks = _chunks(proc.db)
            result = {"documents": len(corpus), "chunks": chunks, "files_failed": counts["failed"],
                      "upload_s": round(upload_s, 1), "ingest_s": round(ingest_s, 1),
                      "chunks_per_s": round(chunks / ingest_s, 1)}
            for name, weights in (("hybrid", None), ("bm25_only", {"embedding_weight": 0, "text_weight": 1}),
                                  ("dense_only", {"embedding_weight": 1, "text_weight": 0})):
                scores, recalls, lat = [], [], []
                for q in queries:
                    body = {"query": q["text"], "max_num_results": 50}
                    if weights:
                        body["ranking_options"] = {"hybrid_search": weights}
                    t = time.perf_counter()
                    r = http.post(f"/v1/vector_stores/{store}/search", json=body)
                    lat.append(time.perf_counter() - t)
                    r.raise_for_status()
                    ranked = _files_in_order([doc_of[d["file_id"]] for d in r.json()["data"]])
                    scores.append(ndcg10(ranked, qrels[q["_id"]]))
                    recalls.append(_recall(ranked, qrels[q["_id"]], 50))
                lat.sort()
                result[name] = {"ndcg_at_10": round(statistics.mean(scores), 4),
                                "recall_at_50": round(statistics.mean(recalls), 4),
                                "api_p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                                "api_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1)}
            result["hybrid"]["recall_at_100_in_process"] = _recall100(proc.db, store, queries, qrels, doc_of)
            result["anchors"] = ANCHORS
            result["_vectors"] = _doc_vectors(proc.db, store, doc_of, corpus)
            result["ratio_to_bm25"] = round(result["hybrid"]["ndcg_at_10"] / ANCHORS["bm25"], 3)
            result["ratio_to_dense"] = round(result["hybrid"]["ndcg_at_10"] / ANCHORS["minilm_dense"], 3)
            return result
    finally:
        proc.stop()


def _doc_vectors(db: Path, store: str, doc_of: dict, corpus: list) -> np.ndarray:
    """Each document's (first) chunk vector, as ingestion stored it: the 100,000-chunk store is made of these."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT file_id, vector FROM vector_chunks WHERE vector_store_id = ? ORDER BY idx DESC",
                            (store,)).fetchall()
    by_doc = {doc_of[f]: np.frombuffer(v, dtype="<f4") for f, v in rows}
    return np.stack([by_doc[d["_id"]] for d in corpus])


def _chunks(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM vector_chunks").fetchone()[0]


def _minilm():
    """The encoder as the bench's server runs it (same runtime and threads)."""
    from modelworks.backends.minilm import load_model
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import EmbeddedEmbeddingsBackend

    spec = EmbeddedEmbeddingsBackend(**MINILM)
    cache = Path(tempfile.gettempdir()) / "modelworks-bench-models"
    return load_model(spec, resolve_model_source(spec.model, cache), cache)


def _index(db: Path, store: str):
    from modelworks.store.db import Database
    from modelworks.vectors.index import StoreIndex
    from modelworks.vectors.store import VectorStoreDB

    vdb = VectorStoreDB(Database(f"sqlite:///{db}"))
    index = StoreIndex(store)
    while rows := vdb.chunks_after(store, index.last_seq, 20_000):
        index.add_chunks(rows)
    index.set_files(vdb.live_files(store))
    vdb.db.dispose()
    return index


def _recall100(db: Path, store: str, queries, qrels, doc_of) -> float:
    from modelworks.vectors.terms import terms

    index = _index(db, store)
    vectors, _ = _minilm().encode([q["text"] for q in queries])
    total = 0.0
    for q, v in zip(queries, vectors):
        ranked = _files_in_order([doc_of[h.file.file_id] for h in index.search(v, terms(q["text"]), 100)])
        total += _recall(ranked, qrels[q["_id"]], 100)
    return round(total / len(queries), 4)


def at_scale(tmp: Path, vectors: np.ndarray) -> dict:
    """100,000 chunks: API search latency, the index alone, the IVF index's recall@10 against exact search."""
    from modelworks.store.db import Database
    from modelworks.vectors.terms import terms

    corpus, queries, _ = _load()
    proc = _server(tmp, "scale")
    h = {"authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=proc.url, headers=h, timeout=600) as http:
            store = http.post("/v1/vector_stores", json={"name": "big"}).json()["id"]
            project = _project(proc.db)
            model = _minilm()
            texts = [f"{d['title']}\n{d['text']}" for d in corpus]
            started = time.perf_counter()
            _fill(Database(f"sqlite:///{proc.db}"), store, project, texts, vectors, BIG)
            fill_s = time.perf_counter() - started
            http.post(f"/v1/vector_stores/{store}/search", json={"query": "warm up"}).raise_for_status()
            deadline = time.monotonic() + 300  # the IVF index is built in the background after the first search
            while "built the IVF index" not in proc.output():
                assert time.monotonic() < deadline, "the server did not build the IVF index"
                time.sleep(1)
            lat = []
            for _ in range(ROUNDS):
                for q in queries:
                    t = time.perf_counter()
                    http.post(f"/v1/vector_stores/{store}/search", json={"query": q["text"]}).raise_for_status()
                    lat.append(time.perf_counter() - t)
            first = sorted(lat[:len(queries)])  # each query's first time (no term's BM25 part cached for it yet)
            lat.sort()
            index = _index(proc.db, store)
            qv, _ = model.encode([q["text"] for q in queries])
            qt = [terms(q["text"]) for q in queries]
            exact_lat, exact = [], []
            for v, t_ in zip(qv, qt):
                t = time.perf_counter()
                exact.append([x.seq for x in index.search(v, t_, 10)])
                exact_lat.append(time.perf_counter() - t)
            started = time.perf_counter()
            index.build_clusters()
            build_s = time.perf_counter() - started
            ivf_lat, recall = [], 0.0
            for v, t_, e in zip(qv, qt, exact):
                t = time.perf_counter()
                got = [x.seq for x in index.search(v, t_, 10)]
                ivf_lat.append(time.perf_counter() - t)
                recall += len(set(got) & set(e)) / 10
            embed = []
            for q in queries:
                t = time.perf_counter()
                model.encode([q["text"]])
                embed.append(time.perf_counter() - t)
            for series in (exact_lat, ivf_lat, embed):
                series.sort()
            return {"chunks": BIG, "fill_s": round(fill_s, 1), "ivf_build_s": round(build_s, 1),
                    "api_p50_ms": _ms(lat, 0.5), "api_p99_ms": _ms(lat, 0.99),
                    "api_first_pass_p50_ms": _ms(first, 0.5), "api_first_pass_p99_ms": _ms(first, 0.99),
                    "index_ivf_p50_ms": _ms(ivf_lat, 0.5), "index_ivf_p99_ms": _ms(ivf_lat, 0.99),
                    "index_exact_p50_ms": _ms(exact_lat, 0.5), "index_exact_p99_ms": _ms(exact_lat, 0.99),
                    "ivf_recall_at_10_vs_exact": round(recall / len(queries), 4),
                    "query_embedding_p50_ms": _ms(embed, 0.5)}
    finally:
        proc.stop()


def _ms(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 2)


def _project(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT project_id FROM vector_stores").fetchone()[0]


def _fill(database, store: str, project: str, texts: list[str], vectors: np.ndarray, total: int) -> None:
    """`total` chunks in 1,000 files of the store, completed, as ingestion would have left them."""
    from datetime import datetime, timezone

    from sqlalchemy import insert

    from modelworks.store.schema import VectorChunkRow, VectorStoreFileRow
    from modelworks.vectors.terms import terms

    rng = np.random.default_rng(0)
    terms_of = [" ".join(terms(t)) for t in texts]
    now = datetime.now(timezone.utc)
    files = 1000
    with database.session() as s:
        s.execute(insert(VectorStoreFileRow), [
            {"vector_store_id": store, "file_id": f"file-bench{k:06d}", "project_id": project, "filename": f"{k}.txt",
             "created_at": now, "status": "completed", "chunking": json.dumps({"type": "static", "static": {
                 "max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}), "usage_bytes": 0, "attempts": 1}
            for k in range(files)])
    for start in range(0, total, 10_000):
        rows = []
        for n in range(start, min(total, start + 10_000)):
            i = n % len(texts)
            v = vectors[i] + rng.normal(0, 0.02, vectors.shape[1]).astype(np.float32)
            v /= np.linalg.norm(v)
            rows.append({"vector_store_id": store, "file_id": f"file-bench{n % files:06d}", "idx": n // files,
                         "text": texts[i], "terms": terms_of[i], "tokens": 300, "vector": v.astype("<f4").tobytes()})
        with database.session() as s:
            s.execute(insert(VectorChunkRow), rows)
    with database.session() as s:
        from sqlalchemy import update

        from modelworks.store.schema import VectorStoreRow
        s.execute(update(VectorStoreRow).where(VectorStoreRow.id == store).values(version=VectorStoreRow.version + 1))
    database.dispose()


def run(tmp: Path) -> dict:
    scifact = quality(tmp)
    return {"scifact": scifact, "at_100k_chunks": at_scale(tmp, scifact.pop("_vectors"))}


def print_result(r: dict) -> None:
    q = r["scifact"]
    print(f"\nRetrieval on BEIR SciFact ({q['documents']} files, {q['chunks']} chunks):")
    print(f"  ingestion: {q['chunks_per_s']} chunks/s ({q['ingest_s']} s; uploads {q['upload_s']} s)")
    for name in ("hybrid", "bm25_only", "dense_only"):
        x = q[name]
        print(f"  {name:<11} nDCG@10 {x['ndcg_at_10']:.4f}  Recall@50 {x['recall_at_50']:.4f}  "
              f"search p50 {x['api_p50_ms']} ms  p99 {x['api_p99_ms']} ms")
    print(f"  hybrid Recall@100 (same index, in process): {q['hybrid']['recall_at_100_in_process']}")
    print(f"  anchors: BM25 {ANCHORS['bm25']}, MiniLM dense {ANCHORS['minilm_dense']}; hybrid / BM25 "
          f"{q['ratio_to_bm25']}, hybrid / dense {q['ratio_to_dense']} (target nDCG@10 >= 0.69)")
    s = r["at_100k_chunks"]
    print(f"At {s['chunks']} chunks: API search p50 {s['api_p50_ms']} ms, p99 {s['api_p99_ms']} ms (first pass "
          f"{s['api_first_pass_p50_ms']} / {s['api_first_pass_p99_ms']} ms; query embedding "
          f"p50 {s['query_embedding_p50_ms']} ms of it); index alone IVF p50 {s['index_ivf_p50_ms']} ms, p99 "
          f"{s['index_ivf_p99_ms']} ms, exact p50 {s['index_exact_p50_ms']} ms; IVF recall@10 vs exact "
          f"{s['ivf_recall_at_10_vs_exact']} (build {s['ivf_build_s']} s)")


if __name__ == "__main__":
    import tempfile

    out = run(Path(tempfile.mkdtemp(prefix="mw-retrieval-")))
    print_result(out)
    print(json.dumps(out, indent=2))
