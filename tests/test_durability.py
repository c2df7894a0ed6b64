"""Durable before answered: a call's usage record is in the write-ahead log before the last byte of its answer
goes out, on every path (JSON, streams, errors, refusals), so a SIGKILL at any moment loses no record of an
answered call. The kill test runs beside two busy processes: it must not depend on the machine being idle."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import orjson

from modelworks.backends.base import Usage
from modelworks.metering.wal import UsageWAL
from modelworks.policies.chain import Call, PolicyChain
from modelworks.policies.metering import MeteringPolicy
from support.servers import start_modelworks

API_KEY = "mw-durability-key-0123456789"


def _config(upstream_url: str) -> dict:
    return {
        "metering": {"flush_seconds": 3600},  # records stay in the write-ahead log only, until the kill
        "content_filters": {"clean": {"prompt": {"profanity": "block"}}},
        "backends": {"fake": {"type": "fake", "reply": "alpha beta gamma delta"},
                     "upstream": {"type": "openai", "base_url": f"{upstream_url}/v1"}},
        "routing": {"max_attempts": 1},
        "deployments": {"json": {"backend": "fake"}, "stream": {"backend": "fake"},
                        "failing": {"backend": "upstream", "model": "error-500"},  # the fake upstream fails it
                        "limited": {"backend": "fake", "rpm": 6},
                        "filtered": {"backend": "fake", "content_filter": "clean"}},
    }

HELLO = [{"role": "user", "content": "hello there"}]
CALLS = {  # deployment -> (request body, expected status)
    "json": ({"model": "json", "messages": HELLO}, (200,)),
    "stream": ({"model": "stream", "messages": HELLO, "stream": True}, (200,)),
    "failing": ({"model": "failing", "messages": HELLO}, (502, 503)),  # the upstream's 500, or its circuit open
    "limited": ({"model": "limited", "messages": HELLO}, (200, 429)),  # the first in 10 s served, the rest refused
    "filtered": ({"model": "filtered", "messages": [{"role": "user", "content": "what the fuck"}]}, (400,)),
}


class _Route:
    deployment, backend, info = "d", type("B", (), {"name": "b"})(), {}


def test_complete_returns_only_once_the_record_is_written(tmp_path):
    async def scenario() -> tuple[int, int]:
        wal = UsageWAL(tmp_path, lambda lines: None)
        wal.open()
        chain = PolicyChain([MeteringPolicy(wal)])
        await chain.complete(Call(operation="chat.completions", headers={}, route=_Route()), Usage(3, 4), 200)
        alone = len(wal.path.read_bytes().splitlines())  # read before anything else could run
        # three calls that complete in the same turn of the loop share one write
        calls = [Call(operation="chat.completions", headers={}, route=_Route()) for _ in range(3)]
        await asyncio.gather(*(chain.complete(c, Usage(3, 4), 200) for c in calls))
        together = len(wal.path.read_bytes().splitlines())
        await wal.close()
        return alone, together

    assert asyncio.run(scenario()) == (1, 4)


def test_every_answer_is_sent_after_its_record_is_written(tmp_path, upstream):
    """In process, deterministic: the ASGI `send` looks at the write-ahead log when the last byte of an answer
    (or a stream's [DONE]) is handed to it, on every path that makes a record."""
    from modelworks.api.app import create_app
    from modelworks.settings import settings_from_dict

    config = {**_config(upstream.url), "server": {"data_dir": str(tmp_path / "data")}, "api_key": API_KEY}
    app = create_app(settings_from_dict(config))
    app.control.prepare()

    def written() -> int:
        return sum(p.read_bytes().count(b"\n") for p in (tmp_path / "data" / "usage-wal").glob("*.jsonl"))

    async def call(body: dict) -> tuple[int, int]:
        """(status, records written when the answer's end was sent)"""
        payload = orjson.dumps(body)
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": [(b"api-key", API_KEY.encode()), (b"content-type", b"application/json")]}
        sent = [payload]
        seen: dict = {}

        async def receive():
            if sent:
                return {"type": "http.request", "body": sent.pop(), "more_body": False}
            await asyncio.Event().wait()  # the client stays

        async def send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif b"[DONE]" in message.get("body", b"") or not message.get("more_body", False):
                seen.setdefault("records", written())

        await app(scope, receive, send)
        return seen["status"], seen["records"]

    async def scenario() -> list[tuple[str, int, int, int]]:
        events: asyncio.Queue = asyncio.Queue()
        await events.put({"type": "lifespan.startup"})
        done = asyncio.get_running_loop().create_future()

        async def lifespan_send(message):
            if not done.done():
                done.set_result(message)
        life = asyncio.ensure_future(app({"type": "lifespan"}, events.get, lifespan_send))
        assert (await done)["type"] == "lifespan.startup.complete"
        out = []
        for name in list(CALLS) * 2:
            before = written()
            status, records = await call(CALLS[name][0])
            out.append((name, status, before, records))
        await events.put({"type": "lifespan.shutdown"})
        await life
        return out

    for name, status, before, records in asyncio.run(scenario()):
        assert status in CALLS[name][1], (name, status)
        assert records == before + 1, f"{name}: the answer ({status}) went out before its record was written"


def _call(http: httpx.Client, name: str) -> int:
    body, expected = CALLS[name]
    if body.get("stream"):
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]", events[-3:]
            status = r.status_code
    else:
        status = http.post("/v1/chat/completions", json=body).status_code
    assert status in expected, (name, status)
    return status


def _records(url: str) -> dict[str, int]:
    r = httpx.get(f"{url}/admin/v1/usage", params={"group_by": "deployment"}, headers={"api-key": API_KEY},
                  timeout=60)
    assert r.status_code == 200, r.text
    return {row["deployment"]: row["requests"] for row in r.json()["data"]}


def test_no_answered_call_loses_its_record_to_sigkill(tmp_path, upstream, busy_machine):
    config = _config(upstream.url)
    names = list(CALLS)
    sent = {name: 0 for name in names}
    for round_ in range(len(names)):  # each kind of answer is the last one before the kill once
        server = start_modelworks(tmp_path, config, API_KEY, name="killed")
        order = names[round_ + 1:] + names[:round_ + 1]
        with httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=60) as http:
            for i in range(40):  # 40 is a multiple of 5: the round ends with order[-1]
                name = order[i % len(order)]
                _call(http, name)
                sent[name] += 1
            os.kill(server.proc.pid, signal.SIGKILL)  # the instant the last answer is in
        server.proc.wait()
        server.stop()
    again = start_modelworks(tmp_path, config, API_KEY, name="killed")
    try:
        assert _records(again.url) == sent
    finally:
        again.stop()
    assert not list(Path(tmp_path, "killed-data", "usage-wal").glob("*.jsonl"))  # replayed, then deleted


def test_a_failed_authentication_is_answered_after_its_audit_entry_is_stored(tmp_path):
    server = start_modelworks(tmp_path, {"backends": {"fake": {"type": "fake"}},
                                         "deployments": {"fake": {"backend": "fake"}}}, API_KEY, name="audited")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i, path in enumerate(["/admin/v1/projects", "/v1/models", "/admin/v1/keys"] * 3):
                assert http.get(path, headers={"api-key": f"mw-wrong-{i}"}).status_code == 401
                # read at once: the entry was stored before the 401 went out
                entries = http.get("/admin/v1/audit", headers={"api-key": API_KEY}).json()["data"]
                assert sum(e["action"] == "auth.failed" for e in entries) == i + 1, (path, entries[-3:])
    finally:
        server.stop()


def test_a_short_or_failed_log_write_loses_no_later_line(tmp_path, monkeypatch):
    """A write the disk cuts short is finished; one that fails leaves a torn line that the next line does not
    join: replay skips only the torn one."""
    from modelworks.store import wal as wal_module
    from modelworks.store.wal import WriteAheadLog

    stored: list[bytes] = []
    log = WriteAheadLog(tmp_path / "wal", stored.extend, what="test records")
    log.open()
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:5]))  # short: the rest is written by the next call
        if calls["n"] == 3:
            real_write(fd, bytes(data[:4]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(wal_module.os, "write", flaky)
    for k in range(3):
        log.write(orjson.dumps({"k": k}))
    monkeypatch.setattr(wal_module.os, "write", real_write)
    lines = log.path.read_bytes().split(b"\n")
    assert orjson.loads(lines[0]) == {"k": 0}  # finished after the short write
    assert lines[1] == b"{\"k\"" and orjson.loads(lines[2]) == {"k": 2}  # torn, then whole on its own line
    fd = log.fd  # what a killed process leaves: its segment, replayed by the next
    log.fd = -1
    os.close(fd)
    again = WriteAheadLog(tmp_path / "wal", stored.extend, what="test records")
    assert again.replay_orphans() == 2
    assert sorted(orjson.loads(line)["k"] for line in stored) == [0, 2]
