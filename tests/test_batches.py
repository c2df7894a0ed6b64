"""The Batch API through the official openai SDK: chat, embeddings and Responses batches run in the background
through the same gateway (metered once per line, with the batch's id), output and error files in OpenAI's line
shape, cancellation, Azure's batch deployment types, isolation between projects, and bad input files refused up
front with a 400 that names `input_file_id` and the line."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import httpx
import openai
import pytest

from conftest import API_KEY, AZURE_API_VERSION
from support.servers import start_modelworks
from support.spec import CheckingTransport


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batches")
    config = {"backends": {"fake": {"type": "fake"}, "minilm": {"type": "minilm"},
                           "slow": {"type": "fake", "chunk_delay_s": 0.02, "reply": " ".join(["word"] * 20)}},
              "deployments": {"fake": {"backend": "fake"}, "slow": {"backend": "slow"},
                              "fake-batch": {"backend": "fake", "type": "GlobalBatch"},
                              "all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000}},
              "batches": {"concurrency": 2, "lease_s": 5}}
    proc = start_modelworks(tmp, config, API_KEY, name="batches")
    proc.db = tmp / "batches-data" / "modelworks.db"
    yield proc
    proc.stop()


@pytest.fixture
def sdk(batch_server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=120) as http:
        yield openai.OpenAI(base_url=f"{batch_server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
def http(batch_server, recorder):
    with httpx.Client(base_url=batch_server.url, transport=CheckingTransport(recorder), timeout=120,
                      headers={"authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def jsonl(lines: list[dict]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def chat_line(i, model="fake", **body):
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body}}


def wait_done(sdk, batch_id: str, timeout: float = 120):
    end = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < end, batch.status
        time.sleep(0.2)


def read_lines(sdk, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).read().decode().splitlines() if line]


def usage_rows(server, batch_id: str) -> list[tuple]:
    time.sleep(1.5)  # metering reaches the store within its flush interval
    with sqlite3.connect(server.db) as conn:
        return conn.execute("SELECT id, operation, status FROM usage_records WHERE batch_id = ?",
                            (batch_id,)).fetchall()


def test_chat_batch(sdk, batch_server):
    made = sdk.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(12)])), purpose="batch")
    batch = sdk.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "nightly"})
    assert batch.status == "validating" and batch.request_counts.total == 12 and batch.model == "fake"
    done = wait_done(sdk, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 12 and done.request_counts.failed == 0
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.metadata == {"run": "nightly"}
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    out = read_lines(sdk, done.output_file_id)
    assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(12)]  # input order
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    assert first["response"]["body"]["object"] == "chat.completion"
    assert done.error_file_id is None
    output_file = sdk.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.filename == f"{batch.id}_output.jsonl"
    rows = usage_rows(batch_server, batch.id)
    assert len(rows) == 12 and {r[1] for r in rows} == {"batch.chat.completions"}
    assert sdk.batches.retrieve(batch.id).status == "completed"
    assert batch.id in [b.id for b in sdk.batches.list(limit=5)]


def test_embeddings_and_responses_batches(sdk):
    emb = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "all-minilm-l6-v2", "input": [f"sentence {i}", "another"]}} for i in range(3)]
    made = sdk.files.create(file=("emb.jsonl", jsonl(emb)), purpose="batch")
    done = wait_done(sdk, sdk.batches.create(input_file_id=made.id, endpoint="/v1/embeddings",
                                             completion_window="24h").id)
    out = read_lines(sdk, done.output_file_id)
    assert len(out) == 3 and len(out[0]["response"]["body"]["data"]) == 2
    assert len(out[0]["response"]["body"]["data"][0]["embedding"]) == 384
    resp = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
             "body": {"model": "fake", "input": f"hello {i}", "store": False}} for i in range(3)]
    made = sdk.files.create(file=("resp.jsonl", jsonl(resp)), purpose="batch")
    done = wait_done(sdk, sdk.batches.create(input_file_id=made.id, endpoint="/v1/responses",
                                             completion_window="24h").id)
    out = read_lines(sdk, done.output_file_id)
    assert {line["custom_id"] for line in out} == {"r0", "r1", "r2"}
    assert out[0]["response"]["body"]["object"] == "response" and out[0]["response"]["body"]["status"] == "completed"


def test_cancel_puts_every_line_somewhere_once(sdk):
    made = sdk.files.create(file=("slow.jsonl", jsonl([chat_line(i, "slow") for i in range(40)])), purpose="batch")
    batch = sdk.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    end = time.monotonic() + 60
    while sdk.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < end
        time.sleep(0.1)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_done(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    out, errors = read_lines(sdk, done.output_file_id), read_lines(sdk, done.error_file_id)
    ids = [line["custom_id"] for line in out + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))  # each exactly once
    assert out and errors and all(e["error"]["code"] == "batch_cancelled" for e in errors if e["response"] is None)
    with pytest.raises(openai.BadRequestError):
        _cancel_ended(sdk)


def _cancel_ended(sdk):
    made = sdk.files.create(file=("one.jsonl", jsonl([chat_line(0)])), purpose="batch")
    done = wait_done(sdk, sdk.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions",
                                             completion_window="24h").id)
    sdk.batches.cancel(done.id)  # a completed batch cannot be cancelled


def test_azure_batches_need_a_batch_deployment(batch_server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=120) as h:
        az = openai.AzureOpenAI(azure_endpoint=batch_server.url, api_key=API_KEY, api_version=AZURE_API_VERSION,
                                http_client=h, max_retries=0)
        standard = az.files.create(file=("a.jsonl", jsonl([chat_line(0)])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as err:
            az.batches.create(input_file_id=standard.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert "GlobalBatch" in err.value.message
        ok = az.files.create(file=("b.jsonl", jsonl([chat_line(0, "fake-batch")])), purpose="batch")
        batch = az.batches.create(input_file_id=ok.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert wait_done(az, batch.id).status == "completed"


@pytest.fixture(scope="module")
def other_key(batch_server):
    admin = {"authorization": f"Bearer {API_KEY}"}
    project = httpx.post(f"{batch_server.url}/admin/v1/projects", headers=admin,
                         json={"name": f"other-{uuid.uuid4().hex[:8]}"}).json()
    return httpx.post(f"{batch_server.url}/admin/v1/keys", headers=admin,
                      json={"name": "u", "role": "user", "project_id": project["id"]}).json()["key"]


def test_another_projects_batches_are_not_there(sdk, batch_server, other_key, recorder):
    made = sdk.files.create(file=("mine.jsonl", jsonl([chat_line(0)])), purpose="batch")
    mine = sdk.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as h:
        theirs = openai.OpenAI(base_url=f"{batch_server.url}/v1", api_key=other_key, http_client=h, max_retries=0)
        for call in (theirs.batches.retrieve, theirs.batches.cancel):
            with pytest.raises(openai.NotFoundError):
                call(mine.id)
        assert mine.id not in [b.id for b in theirs.batches.list()]
        with pytest.raises(openai.BadRequestError) as err:  # nor may they run my file
            theirs.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert err.value.body["param"] == "input_file_id"
    wait_done(sdk, mine.id)


BAD_FILES = [
    ([chat_line(0), chat_line(0)], "duplicate custom_id"),
    ([{"method": "POST", "url": "/v1/chat/completions", "body": chat_line(0)["body"]}], "custom_id"),
    ([{**chat_line(0), "url": "/v1/embeddings"}], "endpoint"),
    ([{**chat_line(0), "method": "GET"}], "method"),
    ([chat_line(0), chat_line(1, "slow")], "one model"),
    ([chat_line(0, "no-such-model")], "not a deployment"),
    ([chat_line(0, stream=True)], "stream"),
    ([{**chat_line(0), "body": "text"}], "body must be a JSON object"),
    ([{**chat_line(0), "body": {"model": "fake"}}], "body.messages"),
    ([chat_line(0, temperature=7)], "body.temperature"),
    ([{**chat_line(0), "extra": 1}], "unknown field"),
]


@pytest.mark.parametrize("lines,words", BAD_FILES)
def test_bad_input_files_name_the_line(sdk, http, lines, words):
    made = sdk.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
    r = http.post("/v1/batches", json={"input_file_id": made.id, "endpoint": "/v1/chat/completions",
                                       "completion_window": "24h"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "input_file_id" and words in error["message"], error
    assert "line" in error["message"]


def test_too_many_lines(sdk, http):
    line = json.dumps(chat_line(0)).replace('"req-0"', '"r%d"')
    made = sdk.files.create(file=("big.jsonl", "\n".join(line % i for i in range(50_001)).encode()), purpose="batch")
    r = http.post("/v1/batches", json={"input_file_id": made.id, "endpoint": "/v1/chat/completions",
                                       "completion_window": "24h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"
    assert "at most 50000" in r.json()["error"]["message"]
    sdk.files.delete(made.id)


def test_bad_batch_requests_name_the_field(sdk, http):
    good = sdk.files.create(file=("good.jsonl", jsonl([chat_line(0)])), purpose="batch").id
    notes = sdk.files.create(file=("notes.txt", b"not for batches"), purpose="assistants").id
    base = {"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for changes, param in (({"endpoint": "/v1/images/generations"}, "endpoint"),
                           ({"completion_window": "48h"}, "completion_window"),
                           ({"input_file_id": "file-nope"}, "input_file_id"),
                           ({"input_file_id": notes}, "input_file_id"),
                           ({"metadata": {"k": "v" * 600}}, "metadata"),
                           ({"output_expires_after": {"anchor": "created_at", "seconds": 60}},
                            "output_expires_after.seconds"),
                           ({"surprise": True}, "surprise")):
        r = http.post("/v1/batches", json={**base, **changes})
        assert r.status_code == 400, (changes, r.text)
        assert r.json()["error"]["param"] == param, (changes, r.json())
    for query, param in (("limit=0", "limit"), ("after=batch_nope", "after")):
        r = http.get(f"/v1/batches?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert http.get("/v1/batches/batch_nope").status_code == 404
    # a malformed line, or an empty file, is refused at upload (purpose batch), naming the file
    r = http.post("/v1/files", files={"file": ("x.jsonl", b'{"custom_id": "a"}\n{oops\n')}, data={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file" and "line 2" in r.json()["error"]["message"]
