"""One server on SQLite killed with SIGKILL while it ingests a file and runs a batch, then started again on the
same data: the file is ingested, the batch finishes with every custom_id exactly once, and each line has one
usage record."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import httpx
import openai
import pytest

from conftest import API_KEY
from support.servers import start_modelworks

pytestmark = pytest.mark.model


def test_ingestion_and_batches_survive_a_kill(tmp_path):
    config = {"backends": {"minilm": {"type": "minilm"},
                           "slow": {"type": "fake", "chunk_delay_s": 0.01, "reply": " ".join(["word"] * 20)}},
              "deployments": {"all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
                              "slow": {"backend": "slow"}},
              "vector_stores": {"ingest_lease_s": 3}, "batches": {"lease_s": 3}}
    proc = start_modelworks(tmp_path, config, API_KEY, name="restart")
    try:
        sdk = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=API_KEY, max_retries=0,
                            http_client=httpx.Client(timeout=120))
        text = "\n".join(f"Entry {i}: the harbour master records vessel {i} leaving at noon." for i in range(1200))
        made = sdk.files.create(file=("harbour.txt", text.encode()), purpose="assistants")
        store = sdk.vector_stores.create(name="harbour", file_ids=[made.id], chunking_strategy={
            "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})
        lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "slow", "messages": [{"role": "user", "content": f"q{i}"}]}} for i in range(30)]
        batch_file = sdk.files.create(file=("b.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                      purpose="batch")
        batch = sdk.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        end = time.monotonic() + 60
        while sdk.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < end
            time.sleep(0.1)
        assert sdk.vector_stores.retrieve(store.id).file_counts.in_progress == 1
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        proc.stop()
        proc = start_modelworks(tmp_path, config, API_KEY, name="restart")
        sdk = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=API_KEY, max_retries=0,
                            http_client=httpx.Client(timeout=120))
        end = time.monotonic() + 300
        while True:
            done = sdk.batches.retrieve(batch.id)
            counts = sdk.vector_stores.retrieve(store.id).file_counts
            if done.status == "completed" and counts.in_progress == 0:
                break
            assert time.monotonic() < end, (done.status, counts)
            time.sleep(0.3)
        assert counts.completed == 1
        assert "vessel 1017" in sdk.vector_stores.search(store.id, query="vessel 1017 leaving").data[0].content[0].text
        out = [json.loads(x) for x in sdk.files.content(done.output_file_id).read().decode().splitlines()]
        assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
        time.sleep(2)
        with sqlite3.connect(tmp_path / "restart-data" / "modelworks.db") as conn:
            total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM usage_records WHERE batch_id = ?",
                                           (batch.id,)).fetchone()
        assert total == distinct == 30, (total, distinct)
    finally:
        proc.stop()
