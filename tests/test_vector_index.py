"""The in-memory search index of a vector store, without a server: the IVF index against exact search, the same
results from the same data (any replica, either database), filters and removed files."""

from __future__ import annotations

import numpy as np

from modelworks.vectors import ivf
from modelworks.vectors.index import StoreIndex

WORDS = [f"w{i}" for i in range(2000)]


def _store(n: int, seed: int = 1) -> tuple[StoreIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(64, 48)).astype(np.float32)
    vectors = topics[rng.integers(0, 64, n)] + 0.6 * rng.normal(size=(n, 48)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = StoreIndex("vs_test")
    rows = [(i + 1, f"file-{i % 500}", " ".join(rng.choice(WORDS, 12)), vectors[i].astype("<f4").tobytes())
            for i in range(n)]
    index.add_chunks(rows)
    index.set_files([(f"file-{k}", f"f{k}.txt", {"k": k}) for k in range(500)])
    return index, vectors


def test_ivf_finds_what_exact_search_finds():
    index, vectors = _store(ivf.MIN_CHUNKS + 5000)
    rng = np.random.default_rng(7)
    queries = vectors[rng.integers(0, len(vectors), 60)] + 0.1 * rng.normal(size=(60, 48)).astype(np.float32)
    terms = [list(rng.choice(WORDS, 3)) for _ in queries]
    exact = [[h.seq for h in index.search(q, t, 10)] for q, t in zip(queries, terms)]
    assert index.needs_clusters()
    index.build_clusters()
    assert index.clusters is not None and not index.needs_clusters()
    approx = [[h.seq for h in index.search(q, t, 10)] for q, t in zip(queries, terms)]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    # chunks added after the build are searched exactly, at once
    extra = vectors[0] * 0 + 1 / np.sqrt(48)
    index.add_chunks([(10**6, "file-new", "brandnewterm", extra.astype("<f4").tobytes())])
    index.set_files([(f"file-{k}", f"f{k}.txt", {"k": k}) for k in range(500)] + [("file-new", "new.txt", {})])
    top = index.search(extra, ["brandnewterm"], 1)
    assert top[0].file.file_id == "file-new" and top[0].seq == 10**6


def test_the_same_data_gives_the_same_results():
    one, vectors = _store(ivf.MIN_CHUNKS + 100, seed=3)
    two, _ = _store(ivf.MIN_CHUNKS + 100, seed=3)
    one.build_clusters()
    two.build_clusters()
    for q in vectors[:20]:
        assert [(h.seq, h.score) for h in one.search(q, ["w5"], 10)] == [(h.seq, h.score) for h in two.search(
            q, ["w5"], 10)]


def test_filters_and_removed_files():
    index, vectors = _store(3000)
    only = index.search(vectors[3], [], 50, allowed_files={index.file_number("file-3")})
    assert only and {h.file.file_id for h in only} == {"file-3"}
    index.set_files([(f"file-{k}", f"f{k}.txt", {}) for k in range(500) if k != 3])
    assert all(h.file.file_id != "file-3" for h in index.search(vectors[3], [], 50))
    assert index.masked_fraction > 0


def test_a_file_ingested_again_leaves_no_old_chunks():
    index = StoreIndex("vs_again")
    one = np.ones(4, dtype="<f4") / 2
    index.begin_load()
    assert index.add_chunks([(1, "file-a", "alpha", one.tobytes()), (2, "file-b", "beta", one.tobytes())])
    assert index.add_chunks([(3, "file-a", "alpha more", one.tobytes())])  # the same load's next page
    index.set_files([("file-a", "a.txt", {}), ("file-b", "b.txt", {})])
    index.begin_load()
    assert not index.add_chunks([(9, "file-a", "alpha new", one.tobytes())])  # replaced: build anew


def test_extraction_counts_what_a_zip_inflates(monkeypatch):
    import pytest

    from modelworks.vectors import extract
    from support.documents import make_docx

    monkeypatch.setattr(extract, "MAX_XML", 2000)
    with pytest.raises(extract.ExtractionError) as err:
        extract.extract_text("big.docx", make_docx(["word " * 1000]))
    assert "too large" in err.value.message
    with pytest.raises(extract.ExtractionError):
        extract.extract_text("deep.json", b"[" * 50_000 + b"]" * 50_000)
