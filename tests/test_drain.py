"""Draining on SIGTERM (issue 15): readiness fails at once, new work is answered 503 with `retry-after`, what is in
flight finishes within `drain_timeout_s`, and what is still running at the deadline ends cleanly (a stream with an
SSE error event and its end, an answer with a retryable 503). The server then exits 0, its usage records kept."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest

from conftest import API_KEY
from support.servers import start_modelworks
from support.spec import sse_payloads
from support.waiting import wait_until

HEADERS = {"authorization": f"Bearer {API_KEY}"}
TIMEOUT = 60


def _config(upstream_url: str, drain_s: float, words: int) -> dict:
    return {"server": {"drain_timeout_s": drain_s},
            "backends": {"paced": {"type": "fake", "chunk_delay_s": 0.05, "reply": " ".join(["word"] * words)},
                         "slow-upstream": {"type": "openai", "base_url": f"{upstream_url}/drain-slow/v1",
                                           "model": "fake-model", "timeout_s": 120}},
            "deployments": {"paced": {"backend": "paced"}, "slow-upstream": {"backend": "slow-upstream"}},
            "quota": {"default_tpm": None}}


class Stream(threading.Thread):
    """A chat completion streamed in a thread: its raw body, whether it ended cleanly, and an event once the
    first content has arrived."""

    CHAT = ("/v1/chat/completions", {"model": "paced", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                                      "stream_options": {"include_usage": True}})
    RESPONSES = ("/v1/responses", {"model": "paced", "stream": True, "input": "hi"})

    def __init__(self, url: str, kind: tuple = CHAT) -> None:
        super().__init__(daemon=True)
        self.url, self.raw, self.clean, self.error = url, b"", False, None
        self.path, self.body = kind
        self.started = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}{self.path}", json=self.body, headers=HEADERS,
                              timeout=TIMEOUT) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    self.raw += chunk
                    if b"word" in self.raw:
                        self.started.set()
            self.clean = True  # the chunked body ended with its terminator, not a dropped connection
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.started.set()


class Call(threading.Thread):
    """A non-streaming call in a thread."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.response = url, model, None

    def run(self) -> None:
        self.response = httpx.post(f"{self.url}/v1/chat/completions", headers=HEADERS, timeout=TIMEOUT,
                                   json={"model": self.model, "messages": [{"role": "user", "content": "hi"}]})


def _events(raw: bytes) -> list:
    return [json.loads(p) for p in sse_payloads(raw) if p != "[DONE]"]


def _background(url: str) -> str:
    r = httpx.post(f"{url}/v1/responses", headers=HEADERS, timeout=TIMEOUT,
                   json={"model": "paced", "input": "Count.", "background": True})
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    return r.json()["id"]


def _response(url: str, response_id: str) -> dict:
    r = httpx.get(f"{url}/v1/responses/{response_id}", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def _usage(url: str) -> dict:
    rows = httpx.get(f"{url}/admin/v1/usage", params={"group_by": "deployment"}, headers=HEADERS,
                     timeout=TIMEOUT).json()["data"]
    return {row["deployment"]: row for row in rows}


@pytest.fixture
def slow_upstream(upstream):
    httpx.post(f"{upstream.url}/_fake/faults/drain-slow", json={"mode": "slow_first_byte", "seconds": 30},
               timeout=TIMEOUT)
    yield
    httpx.delete(f"{upstream.url}/_fake/faults/drain-slow", timeout=TIMEOUT)


def test_in_flight_work_finishes_and_new_work_is_refused(tmp_path, upstream, specs):
    # a stream of 10 s: the checks below fit within it on a busy machine
    proc = start_modelworks(tmp_path, _config(upstream.url, drain_s=60, words=200), API_KEY, name="drain")
    stream = Stream(proc.url)
    stream.start()
    background = _background(proc.url)  # runs without a client: the drain waits for it too
    assert stream.started.wait(TIMEOUT) and stream.error is None
    proc.proc.send_signal(signal.SIGTERM)

    ready = wait_until(lambda: httpx.get(f"{proc.url}/readyz", timeout=TIMEOUT),
                       lambda r: r.status_code == 503, what="readiness to fail")
    assert ready.json()["status"] == "draining"
    alive = httpx.get(f"{proc.url}/healthz", timeout=TIMEOUT)
    assert alive.status_code == 200  # alive: not to be restarted
    assert alive.headers["connection"] == "close"  # answers started while draining end their connection
    refused = httpx.post(f"{proc.url}/v1/chat/completions", headers=HEADERS, timeout=TIMEOUT,
                         json={"model": "paced", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "service_unavailable"
    specs.check("/v1/chat/completions", 503, refused.json())

    stream.join(TIMEOUT)
    assert stream.clean, stream.error
    events = _events(stream.raw)
    assert sse_payloads(stream.raw)[-1] == "[DONE]"
    assert not [e for e in events if "error" in e]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    assert text.split() == ["word"] * 200
    assert proc.proc.wait(TIMEOUT) == 0

    again = start_modelworks(tmp_path, _config(upstream.url, drain_s=60, words=200), API_KEY, name="drain")
    try:
        usage = _usage(again.url)
        assert usage["paced"]["requests"] == 2 and usage["paced"]["completion_tokens"] == 400  # the refused one: not
        finished = _response(again.url, background)
        assert finished["status"] == "completed"
        specs.check(f"/v1/responses/{background}", 200, finished, method="GET")
    finally:
        again.stop()


def test_the_deadline_ends_streams_with_an_error_event_and_answers_with_503(tmp_path, upstream, slow_upstream,
                                                                            specs):
    proc = start_modelworks(tmp_path, _config(upstream.url, drain_s=1, words=2000), API_KEY, name="deadline")
    stream = Stream(proc.url)
    stream.start()
    responses = Stream(proc.url, Stream.RESPONSES)
    responses.start()
    waiting = Call(proc.url, "slow-upstream")  # its upstream answers after 30 s
    waiting.start()
    background = _background(proc.url)
    assert stream.started.wait(TIMEOUT) and stream.error is None
    assert responses.started.wait(TIMEOUT) and responses.error is None
    wait_until(lambda: httpx.get(f"{upstream.url}/_fake/requests", timeout=TIMEOUT).json(),
               lambda log: any(r["instance"] == "drain-slow" for r in log["requests"]),
               what="the slow call to reach its upstream")
    proc.proc.send_signal(signal.SIGTERM)

    stream.join(TIMEOUT)
    assert stream.clean, stream.error  # an error event, then the body's clean end: not a dropped connection
    events = _events(stream.raw)
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert errors[0]["error"]["code"] == "service_unavailable"
    specs.check_sse("/v1/chat/completions", stream.raw)
    words = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", [])).split()
    assert 0 < len(words) < 2000

    # a Responses stream ends as a failed response does (response.failed, stored), not with a chat error event
    responses.join(TIMEOUT)
    assert responses.clean, responses.error
    events = _events(responses.raw)
    assert events[-1]["type"] == "response.failed" and not any("error" in e and "type" not in e for e in events)
    failed_stream = events[-1]["response"]
    assert "send the request again" in failed_stream["error"]["message"]
    specs.check_sse("/v1/responses", responses.raw)

    waiting.join(TIMEOUT)
    assert waiting.response.status_code == 503
    assert waiting.response.headers["retry-after"] == "1"
    assert waiting.response.json()["error"]["code"] == "service_unavailable"
    specs.check("/v1/chat/completions", 503, waiting.response.json())
    assert proc.proc.wait(TIMEOUT) == 0

    again = start_modelworks(tmp_path, _config(upstream.url, drain_s=1, words=2000), API_KEY, name="deadline")
    try:
        usage = _usage(again.url)
        assert usage["paced"]["requests"] == 3  # the cut streams and background run are metered, with what they made
        assert 0 < usage["paced"]["completion_tokens"] < 6000
        assert _response(again.url, failed_stream["id"])["status"] == "failed"  # stored as it was streamed
        failed = _response(again.url, background)  # ended by the deadline: failed, with a reason, and stored
        assert failed["status"] == "failed" and "send the request again" in failed["error"]["message"]
    finally:
        again.stop()


def test_batch_lines_held_at_the_stop_go_back_at_once(tmp_path, upstream, slow_upstream):
    """A stopping replica takes no new batch line, and gives back the lines it runs when they are cut, instead of
    holding them until their lease (here 10 minutes) runs out: the next replica finishes the batch."""
    import sqlite3

    config = {**_config(upstream.url, drain_s=1, words=5), "batches": {"concurrency": 2, "lease_s": 600}}
    line = {"method": "POST", "url": "/v1/chat/completions",  # its upstream answers after 30 s for now
            "body": {"model": "slow-upstream", "messages": [{"role": "user", "content": "hi"}]}}
    data = "".join(json.dumps({"custom_id": f"req-{i}", **line}) + "\n" for i in range(4)).encode()
    proc = start_modelworks(tmp_path, config, API_KEY, name="batch")
    made = httpx.post(f"{proc.url}/v1/files", headers=HEADERS, timeout=TIMEOUT, data={"purpose": "batch"},
                      files={"file": ("in.jsonl", data)}).json()
    batch = httpx.post(f"{proc.url}/v1/batches", headers=HEADERS, timeout=TIMEOUT,
                       json={"input_file_id": made["id"], "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"}).json()
    db = tmp_path / "batch-data" / "modelworks.db"

    def statuses() -> list[tuple]:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT status, lease_owner FROM batch_lines ORDER BY line").fetchall()

    wait_until(statuses, lambda rows: sum(1 for s, _ in rows if s == "running") == 2, what="two lines running")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(TIMEOUT) == 0
    assert statuses() == [("pending", None)] * 4  # given back, not held until their lease runs out

    httpx.delete(f"{upstream.url}/_fake/faults/drain-slow", timeout=TIMEOUT)  # the upstream answers at once now
    again = start_modelworks(tmp_path, config, API_KEY, name="batch")
    try:
        done = wait_until(lambda: httpx.get(f"{again.url}/v1/batches/{batch['id']}", headers=HEADERS,
                                            timeout=TIMEOUT).json(),
                          lambda b: b["status"] in ("completed", "failed", "cancelled", "expired"),
                          what="the batch to finish on the next replica")
        assert done["status"] == "completed" and done["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
        out = httpx.get(f"{again.url}/v1/files/{done['output_file_id']}/content", headers=HEADERS, timeout=TIMEOUT)
        assert sorted(json.loads(x)["custom_id"] for x in out.text.splitlines()) == [f"req-{i}" for i in range(4)]
    finally:
        again.stop()
