"""A rolling restart, proven (issue 15): two replicas on PostgreSQL (through PgBouncer in transaction mode) and Redis,
behind a loopback balancer that follows their readiness as a Kubernetes Service does. Clients stream, call without
streaming and create keys (audited) all along, retrying 429 and 503 as the SDKs do; each replica in turn is stopped
with SIGTERM (it drains, exits 0) and started again.

Counted: streams that ended without [DONE] or an error event (0), requests that got no answer or one that is not
retryable (0), usage records missing for answers the clients got (0), audit entries missing for keys made (0), and
the requests admitted in any 10 seconds against the deployment's limit (never over)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from conftest import API_KEY

from modelworks.store.db import make_engine
from support.balancer import Balancer
from support.databases import fresh_postgres, require_redis
from support.pgbouncer import PgBouncer
from support.servers import start_modelworks
from support.waiting import wait_until

RPM = 240            # the chat deployment's limit: 40 requests in any 10 seconds (the tighter window); streams
                     # go to a deployment of their own, so that some are always in flight
WINDOW_10S = RPM // 6
STREAM_WORDS = 40    # x 0.1 s: a stream of about 4 s, most of which end within the drain (2 s)
LONG_WORDS = 150     # x 0.1 s: 15 s, cut at the drain's deadline unless in its last 2 s


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.failures: list[str] = []

    def add(self, what: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if failure:
                self.failures.append(failure)


def _answer(http: httpx.Client, tally: Tally, kind: str, body: dict,
            path: str = "/v1/chat/completions", headers: dict | None = None) -> tuple[int, str | None, float] | None:
    """One request; its status, its last SSE data line (streams) or body, and how long to wait before the next
    (its retry-after, at most 1 s); or None when the connection closed before any
    answer began. That happens when a replica closes an idle kept-alive connection as it stops, just as the client
    sends on it: the server never read the request (so nothing was admitted or metered), and clients retry it,
    as the OpenAI SDK retries a connection error. Closed after the answer began, it is a loss."""
    began = False
    try:
        with http.stream("POST", path, json=body, headers=headers) as r:
            began = True
            last = None
            if not body.get("stream"):
                r.read()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    last = line[6:]
            try:
                pause = min(float(r.headers.get("retry-after", "0.2")), 1.0)
            except ValueError:
                pause = 0.2
            return r.status_code, (last if body.get("stream") else r.text), pause
    except httpx.TransportError as exc:
        if began:
            tally.add("lost", f"{kind}: cut after its answer began: {exc!r}")
            return -1, None, 0.0
        tally.add("no_answer_retried")
        return None


def _chat(http: httpx.Client, tally: Tally, deployment: str, stop: threading.Event) -> None:
    body = {"model": deployment, "messages": [{"role": "user", "content": "hello"}]}
    while not stop.is_set():
        answer = _answer(http, tally, "chat", body)
        if answer is None or answer[0] == -1:
            continue
        status, text, pause = answer
        if status == 200:
            tally.add("chat_ok")
        elif status in (429, 503):
            tally.add(f"chat_{status}")
            time.sleep(pause)
        else:
            tally.add("bad", f"chat: {status} {text[:200]}")


def _stream(http: httpx.Client, tally: Tally, deployment: str, stop: threading.Event) -> None:
    body = {"model": deployment, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    while not stop.is_set():
        answer = _answer(http, tally, "stream", body)
        if answer is None or answer[0] == -1:
            continue
        status, last, pause = answer
        if status in (429, 503):
            tally.add(f"stream_{status}")
            time.sleep(pause)
        elif status != 200:
            tally.add("bad", f"stream: {status}")
        elif last == "[DONE]":
            tally.add("stream_done")
        elif last is not None and "error" in json.loads(last):
            tally.add("stream_cut_with_error")
        else:
            tally.add("lost", f"stream: ended without [DONE] or an error event (last: {last!r})")


def _keys(http: httpx.Client, tally: Tally, made: list, stop: threading.Event) -> None:
    while not stop.is_set():
        answer = _answer(http, tally, "key", {"name": f"roll-{uuid.uuid4().hex[:8]}"}, path="/admin/v1/keys",
                         headers={"api-key": API_KEY})
        if answer is None or answer[0] == -1:
            continue
        status, text, _ = answer
        if status in (200, 201):
            made.append(json.loads(text)["id"])
            tally.add("key_ok")
        elif status == 503:
            tally.add("key_503")
            time.sleep(0.1)
        else:
            tally.add("bad", f"key: {status} {text[:200]}")
        time.sleep(0.2)


def _port(proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def _pinned_stream(url: str, deployment: str, started: threading.Event) -> str | None:
    """A stream straight to one replica; returns its last data line once it ends."""
    body = {"model": deployment, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    last = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = line[6:]
                started.set()
    return last


def test_a_rolling_restart_loses_nothing(tmp_path):
    redis_url = require_redis()
    url, drop = fresh_postgres()
    bouncer = PgBouncer(pool_size=4)
    balancer = Balancer()
    deployment = f"roll-{uuid.uuid4().hex[:8]}"  # its own keys in the shared Redis
    config = {"database": {"url": bouncer.url(url), "transaction_pooler": True},
              "quota": {"limiter": "redis", "redis_url": redis_url},
              "server": {"drain_timeout_s": 2},
              "backends": {"slow": {"type": "fake", "chunk_delay_s": 0.1,
                                    "reply": " ".join(["word"] * STREAM_WORDS)},
                           "long": {"type": "fake", "chunk_delay_s": 0.1, "reply": " ".join(["word"] * LONG_WORDS)}},
              "deployments": {deployment: {"backend": "slow", "rpm": RPM, "tpm": 10_000_000},
                              f"{deployment}-streams": {"backend": "slow", "rpm": 100_000, "tpm": 100_000_000},
                              f"{deployment}-long": {"backend": "long", "rpm": 100_000, "tpm": 100_000_000}}}
    replicas = {}
    tally, made, stop = Tally(), [], threading.Event()
    exits = []
    try:
        for name in ("a", "b"):
            replicas[name] = start_modelworks(tmp_path, config, API_KEY, name=f"replica-{name}")
            balancer.set_upstream(name, _port(replicas[name]))
        wait_until(lambda: dict(balancer.ready), lambda r: all(r.values()) and len(r) == 2,
                   what="the balancer to see both replicas ready")

        headers = {"authorization": f"Bearer {API_KEY}"}
        clients = [httpx.Client(base_url=balancer.url, headers=headers, timeout=60) for _ in range(7)]
        with ThreadPoolExecutor(8) as pool:
            work = [pool.submit(_chat, clients[0], tally, deployment, stop),
                    pool.submit(_chat, clients[1], tally, deployment, stop),
                    pool.submit(_stream, clients[2], tally, f"{deployment}-streams", stop),
                    pool.submit(_stream, clients[3], tally, f"{deployment}-streams", stop),
                    pool.submit(_stream, clients[4], tally, f"{deployment}-long", stop),
                    pool.submit(_stream, clients[6], tally, f"{deployment}-long", stop),
                    pool.submit(_keys, clients[5], tally, made, stop)]
            try:
                time.sleep(3)
                for name in ("a", "b"):  # one at a time, as maxUnavailable: 0 and maxSurge: 1 do: the new one first
                    old = replicas[name]
                    new = start_modelworks(tmp_path, config, API_KEY, name=f"replica-{name}-2")
                    balancer.set_upstream(f"{name}-2", _port(new))
                    wait_until(lambda: balancer.ready.get(f"{name}-2"), what=f"the new replica {name} to be ready")
                    # a long stream on the old replica as it stops: it outlasts the drain, so it must be cut with
                    # an error event (whatever the clients' own connections happen to be doing then)
                    started = threading.Event()
                    pinned = pool.submit(_pinned_stream, old.url, f"{deployment}-long", started)
                    assert started.wait(30), "the pinned stream did not start"
                    old.proc.terminate()  # SIGTERM: readiness fails at once, then the drain
                    wait_until(lambda: httpx.get(f"{old.url}/readyz", timeout=10).status_code,
                               lambda status: status == 503, what="the old replica to fail readiness")
                    late = httpx.post(f"{old.url}/v1/chat/completions", headers=headers, timeout=30,
                                      json={"model": deployment, "messages": [{"role": "user", "content": "hi"}]})
                    assert late.status_code == 503 and late.headers["retry-after"] == "1", late.text
                    exits.append(old.proc.wait(30))
                    old.stop()
                    balancer.set_upstream(name, None)
                    last = pinned.result(timeout=30)
                    assert last is not None and "error" in json.loads(last), f"the pinned stream ended with {last!r}"
                    tally.add("stream_cut_with_error")
                    replicas[name] = new
                    time.sleep(2)
            finally:
                stop.set()
                for f in work:
                    f.result(timeout=60)
        for client in clients:
            client.close()
        for proc in replicas.values():
            proc.stop()
            exits.append(proc.proc.returncode)

        direct = make_engine(url)
        try:
            with direct.connect() as conn:
                rows = conn.execute(text("SELECT deployment, status, extract(epoch FROM at) - latency_ms / 1000.0 "
                                         "FROM usage_records")).all()
                audited = set(conn.execute(text(
                    "SELECT target FROM audit_log WHERE action = 'key.create'")).scalars().all())
        finally:
            direct.dispose()
    finally:
        stop.set()
        for proc in replicas.values():
            proc.stop()
        balancer.close()
        bouncer.stop()
        drop()

    counts = tally.counts
    served = [row for row in rows if row[1] == 200]
    print(f"\nrolling restart: {dict(sorted(counts.items()))}; connections per replica {balancer.connections}; "
          f"usage records {len(rows)}, {len(served)} of them 200")
    assert exits == [0, 0, 0, 0], exits  # drained replicas exit 0
    assert tally.failures == [], tally.failures[:10]
    assert counts["stream_done"] > 0 and counts["chat_ok"] > 0 and counts["key_ok"] > 0
    assert balancer.refused == 0, "a replica refused connections while the balancer still took it for ready"
    assert counts["chat_429"] > 0, "the limit was never reached"
    # every answer the clients got is metered, and nothing else (a cut stream is metered too, with what it sent)
    answered = counts["chat_ok"] + counts["stream_done"] + counts["stream_cut_with_error"]
    assert len(served) == answered
    assert set(made) <= audited, set(made) - audited
    # the limiter's 10-second windows are whole seconds of Redis time: requests that arrived within any 9 seconds
    # were admitted within 10 such seconds (each within a second of arriving), so they are at most the limit
    # (counted: every request admitted, whatever became of it: all but the refused ones)
    arrivals = sorted(float(t) for d, status, t in rows if d == deployment and status != 429)
    worst = max(sum(1 for t in arrivals if s <= t < s + 9) for s in arrivals)
    assert worst <= WINDOW_10S, f"{worst} requests admitted within 9 s; the limit is {WINDOW_10S} in 10 s"
