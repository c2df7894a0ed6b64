"""Files and vector stores on two replicas sharing PostgreSQL (files in the store): a file uploaded through one is
read, indexed and searched through the other; a file added through one replica is searchable through the other
within 5 s of its ingestion; an ingesting replica killed with SIGKILL leaves its file to the other, which
finishes it (the lease runs out)."""

from __future__ import annotations

import json
import signal
import time

import httpx
import openai
import pytest

from conftest import API_KEY
from support.servers import start_modelworks

pytestmark = pytest.mark.model

LEASE_S = 4


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from support.databases import fresh_postgres

    url, drop = fresh_postgres()
    tmp = tmp_path_factory.mktemp("data-replicas")
    config = {"database": {"url": url}, "files": {"storage": "database"},
              "backends": {"minilm": {"type": "minilm"}, "fake": {"type": "fake"},
                           "slow": {"type": "fake", "chunk_delay_s": 0.01, "reply": " ".join(["word"] * 20)}},
              "deployments": {"all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
                              "fake": {"backend": "fake"}, "slow": {"backend": "slow"}},
              "vector_stores": {"ingest_lease_s": LEASE_S}, "batches": {"lease_s": LEASE_S, "concurrency": 2}}
    a = start_modelworks(tmp, config, API_KEY, name="replica-a")
    b = start_modelworks(tmp, config, API_KEY, name="replica-b")
    procs = {"a": a, "b": b, "tmp": tmp, "config": config, "url": url}
    yield procs
    for name in ("a", "b"):
        procs[name].stop()
    drop()


def _sdk(proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key=API_KEY, max_retries=0,
                         http_client=httpx.Client(timeout=120))


def _wait(sdk: openai.OpenAI, store_id: str, timeout: float = 120):
    end = time.monotonic() + timeout
    while True:
        store = sdk.vector_stores.retrieve(store_id)
        if store.file_counts.in_progress == 0:
            return store
        assert time.monotonic() < end, store.file_counts
        time.sleep(0.2)


def test_a_file_from_one_replica_is_searched_through_the_other(replicas):
    a, b = _sdk(replicas["a"]), _sdk(replicas["b"])
    made = a.files.create(file=("glaciers.txt", b"Glaciers are rivers of ice that carve valleys as they move."),
                          purpose="assistants")
    assert b.files.content(made.id).read().startswith(b"Glaciers")  # the bytes are in the shared store
    store = b.vector_stores.create(name="shared", file_ids=[made.id])
    _wait(b, store.id)
    assert a.vector_stores.search(store.id, query="ice carving valleys").data[0].file_id == made.id
    # a second file through A: searchable through B (whose index already holds the store) within 5 s
    b.vector_stores.search(store.id, query="warm up B's index")
    second = a.files.create(file=("deserts.txt", b"Deserts receive less than 250 millimetres of rain a year."),
                            purpose="assistants")
    a.vector_stores.files.create(vector_store_id=store.id, file_id=second.id)
    _wait(a, store.id)
    done = time.monotonic()
    while True:
        hits = b.vector_stores.search(store.id, query="rain in deserts").data
        if hits and hits[0].file_id == second.id:
            break
        assert time.monotonic() - done < 5, "not searchable through the other replica within 5 s"
        time.sleep(0.1)
    a.files.delete(second.id)  # and a File deleted through A leaves the store seen through B
    assert all(h.file_id != second.id for h in b.vector_stores.search(store.id, query="rain in deserts").data)


def test_a_killed_ingesting_replica_leaves_its_file_to_the_other(replicas):
    a, b = _sdk(replicas["a"]), _sdk(replicas["b"])
    lines = "\n".join(f"Line {i}: the lighthouse keeper logs ship number {i} passing the northern reef at dawn."
                      for i in range(1500))
    made = a.files.create(file=("log.txt", lines.encode()), purpose="assistants")
    store = a.vector_stores.create(name="killed", file_ids=[made.id], chunking_strategy={
        "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})
    # the file is A's or B's: whichever took it is killed while it embeds
    end = time.monotonic() + 60
    while not any(f"ingesting {made.id}" in replicas[name].output() for name in ("a", "b")):
        assert time.monotonic() < end, "no replica took the file"
        time.sleep(0.1)
    time.sleep(1.0)
    name = "a" if f"ingesting {made.id}" in replicas["a"].output() else "b"
    victim = replicas[name]
    survivor = b if name == "a" else a
    assert survivor.vector_stores.retrieve(store.id).file_counts.in_progress == 1
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    finished = _wait(survivor, store.id, timeout=300)
    assert finished.file_counts.completed == 1, finished.file_counts
    hits = survivor.vector_stores.search(store.id, query="ship number 417 passing the reef").data
    assert hits and hits[0].file_id == made.id and "417" in hits[0].content[0].text
    content = survivor.vector_stores.files.content(file_id=made.id, vector_store_id=store.id)
    assert len(list(content)) == len(set(p.text for p in content))  # no chunk stored twice
    victim.stop()
    replicas[name] = start_modelworks(replicas["tmp"], replicas["config"], API_KEY, name=f"replica-{name}")
    assert _sdk(replicas[name]).vector_stores.search(store.id, query="lighthouse").data


def test_a_replica_killed_mid_batch(replicas):
    """Both replicas run lines; one is killed with SIGKILL mid-batch. The other takes its lines when their leases
    run out; every custom_id is answered exactly once, and once the killed replica is back (its usage log
    replayed), each line has exactly one usage record."""
    a, b = _sdk(replicas["a"]), _sdk(replicas["b"])
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "slow", "messages": [{"role": "user", "content": f"question {i}"}]}}
             for i in range(60)]
    made = a.files.create(file=("work.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    batch = b.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    end = time.monotonic() + 120
    while a.batches.retrieve(batch.id).request_counts.completed < 8:
        assert time.monotonic() < end
        time.sleep(0.1)
    replicas["a"].proc.send_signal(signal.SIGKILL)
    replicas["a"].proc.wait()
    end = time.monotonic() + 300
    while (done := b.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < end, done.request_counts
        time.sleep(0.3)
    assert done.status == "completed" and done.request_counts.completed == 60, done
    out = [json.loads(x) for x in b.files.content(done.output_file_id).read().decode().splitlines()]
    errors = [json.loads(x) for x in b.files.content(done.error_file_id).read().decode().splitlines()] if (
        done.error_file_id) else []
    assert sorted(x["custom_id"] for x in out + errors) == sorted(x["custom_id"] for x in lines)
    assert "batch" in replicas["b"].output()
    replicas["a"].stop()
    replicas["a"] = start_modelworks(replicas["tmp"], replicas["config"], API_KEY, name="replica-a")
    time.sleep(3)  # its usage log replayed, both flushed
    import psycopg

    with psycopg.connect(replicas["url"].replace("postgresql+psycopg://", "postgresql://")) as conn:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM usage_records WHERE batch_id = %s",
                                       (batch.id,)).fetchone()
    assert total == distinct == 60, (total, distinct)

