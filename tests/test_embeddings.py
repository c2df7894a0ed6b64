"""Embedded sentence embeddings (all-MiniLM-L6-v2) through the SDK."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.model
MODEL = "all-minilm-l6-v2"


def _cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_384_dimensions_unit_length(client):
    result = client.embeddings.create(model=MODEL, input="The quick brown fox.")
    vector = result.data[0].embedding
    assert len(vector) == 384
    assert abs(sum(x * x for x in vector) - 1) < 1e-4
    assert result.usage.prompt_tokens > 0


def test_paraphrases_are_closer_than_unrelated(client):
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The new movie is awful.", "Stock markets fell sharply on Monday."]
    v = [d.embedding for d in client.embeddings.create(model=MODEL, input=texts).data]
    assert _cos(v[0], v[1]) > 0.6
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.3
    assert _cos(v[0], v[1]) > _cos(v[0], v[3]) + 0.3
    # Reference from sentence-transformers' own documentation for this model and pair: 0.7553.
    assert abs(_cos(v[0], v[1]) - 0.7553) < 0.01


def test_batch_order_and_dimensions_parameter(client):
    texts = ["short", "a much longer sentence with many more words in it than the first", "mid length text"]
    batch = client.embeddings.create(model=MODEL, input=texts).data
    single = [client.embeddings.create(model=MODEL, input=t).data[0].embedding for t in texts]
    for got, want in zip(batch, single):
        assert _cos(got.embedding, want) > 0.9999
    cut = client.embeddings.create(model=MODEL, input="hello", dimensions=64).data[0].embedding
    assert len(cut) == 64 and abs(sum(x * x for x in cut) - 1) < 1e-4


def test_the_runtime_is_onnx_and_readyz_says_so(server):
    import httpx

    detail = httpx.get(f"{server.url}/readyz", timeout=60).json()["backends"]["minilm"]["detail"]
    assert detail.startswith("onnxruntime ") and "fp32" in detail and "2 threads)" in detail, detail
