"""Files and vector stores on two replicas sharing PostgreSQL (files in the store): a file uploaded through one is
read, indexed and searched through the other; a file added through one replica is searchable through the other
within 5 s of its ingestion; an ingesting replica killed with SIGKILL leaves its file to the other, which
finishes it (the lease runs out)."""

from __future__ import annotations

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
              "backends": {"minilm": {"type": "minilm"}, "fake": {"type": "fake"}},
              "deployments": {"all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
                              "fake": {"backend": "fake"}},
              "vector_stores": {"ingest_lease_s": LEASE_S}}
    a = start_modelworks(tmp, config, API_KEY, name="replica-a")
    b = start_modelworks(tmp, config, API_KEY, name="replica-b")
    yield {"a": a, "b": b, "tmp": tmp, "config": config}
    for proc in (a, b):
        proc.stop()
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
    victim = replicas["a"] if f"ingesting {made.id}" in replicas["a"].output() else replicas["b"]
    survivor = b if victim is replicas["a"] else a
    assert survivor.vector_stores.retrieve(store.id).file_counts.in_progress == 1
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    finished = _wait(survivor, store.id, timeout=300)
    assert finished.file_counts.completed == 1, finished.file_counts
    hits = survivor.vector_stores.search(store.id, query="ship number 417 passing the reef").data
    assert hits and hits[0].file_id == made.id and "417" in hits[0].content[0].text
    content = survivor.vector_stores.files.content(file_id=made.id, vector_store_id=store.id)
    assert len(list(content)) == len(set(p.text for p in content))  # no chunk stored twice
    restarted = start_modelworks(replicas["tmp"], replicas["config"], API_KEY, name="replica-restarted")
    try:
        assert _sdk(restarted).vector_stores.search(store.id, query="lighthouse").data
    finally:
        restarted.stop()
