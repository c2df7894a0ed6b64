"""Usage metering: a record per request (streams cut by the client included), the usage API and CSV, and no
record lost when the server is killed."""

from __future__ import annotations

import csv
import io
import os
import signal
import time

import httpx
import pytest

from conftest import API_KEY
from modelworks.metering.usage import UsageService
from modelworks.metering.wal import UsageWAL
from modelworks.store.db import Database
from support.raw_http import open_stream
from support.servers import start_modelworks
from support.waiting import wait_until

SLOW_WORDS = 10_000  # one every 50 ms: the slow stream would take over 8 minutes to end by itself
CONFIG = {"backends": {"fake": {"type": "fake", "reply": "alpha beta gamma delta"},
                       "slow": {"type": "fake", "chunk_delay_s": 0.05, "reply": " ".join(["w"] * SLOW_WORDS)}},
          "deployments": {"priced": {"backend": "fake", "price_input_per_1k": 1.0, "price_output_per_1k": 2.0,
                                     "region": "westeurope"},
                          "limited": {"backend": "fake", "rpm": 6},
                          "slow": {"backend": "slow"}}}


HTTP_TIMEOUT = 60


def _usage(url: str, key: str = API_KEY, **params) -> httpx.Response:
    return httpx.get(f"{url}/admin/v1/usage", params=params, headers={"api-key": key}, timeout=HTTP_TIMEOUT)


def _wait_for(url: str, predicate, **params) -> list[dict]:
    """The usage rows once `predicate(rows)` holds (records are flushed to the store in the background)."""
    return wait_until(lambda: _usage(url, **params).json()["data"], predicate, interval=0.1,
                      what=f"usage rows ({params}) as expected")


def test_every_request_is_metered(tmp_path):
    server = start_modelworks(tmp_path, CONFIG, API_KEY, name="meter")
    try:
        url, headers = server.url, {"api-key": API_KEY}
        body = {"model": "priced", "messages": [{"role": "user", "content": "one two three"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers,
                          timeout=HTTP_TIMEOUT).status_code == 200
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers,
                          timeout=HTTP_TIMEOUT) as r:
            r.read()
        # rpm 6 admits one call per 10-second window (of 1-second buckets): refusals are metered too
        first_second = int(time.time())
        limited = [httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "limited"}, headers=headers,
                              timeout=HTTP_TIMEOUT).status_code for _ in range(3)]
        windows = -(-(int(time.time()) - first_second + 1) // 10)  # 10-second windows the three calls spanned
        assert set(limited) <= {200, 429} and 1 <= limited.count(200) <= windows, (limited, windows)
        sock = open_stream(url, API_KEY, {"model": "slow", "messages": body["messages"]}, events=4)
        sock.close()  # the client leaves: metered for what was delivered
        rows = _wait_for(url, lambda rows: len(rows) == 3 and sum(r["requests"] for r in rows) == 6,
                         group_by="deployment")
        by = {r["deployment"]: r for r in rows}
        assert by["priced"]["requests"] == 2 and by["priced"]["completion_tokens"] == 8
        assert by["priced"]["cost"] == pytest.approx((by["priced"]["prompt_tokens"] * 1.0 + 8 * 2.0) / 1000)
        assert by["limited"]["requests"] == 3 and by["limited"]["errors"] == limited.count(429)
        assert 0 < by["slow"]["completion_tokens"] < SLOW_WORDS  # what was sent before it left, not the reply
        daily = _usage(url, group_by="day,deployment,key").json()["data"]
        assert {r["key_id"] for r in daily} == {r["key_id"] for r in daily if r["key_id"]}
        exported = _usage(url, group_by="deployment", format="csv")
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert {row["deployment"] for row in table} == {"priced", "limited", "slow"}
        assert _usage(url, group_by="colour").status_code == 400
    finally:
        server.stop()


def test_no_record_is_lost_when_the_server_is_killed(tmp_path):
    config = {**CONFIG, "metering": {"flush_seconds": 60}}  # records stay in the write-ahead log only
    server = start_modelworks(tmp_path, config, API_KEY, name="killed")
    body = {"model": "priced", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(25):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"api-key": API_KEY},
                          timeout=HTTP_TIMEOUT).status_code == 200
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.stop()
    again = start_modelworks(tmp_path, config, API_KEY, name="killed")
    try:
        rows = _usage(again.url, group_by="deployment").json()["data"]
        assert [(r["deployment"], r["requests"]) for r in rows] == [("priced", 25)]
    finally:
        again.stop()


def test_wal_replay_is_idempotent_and_skips_a_torn_line(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'u.db'}")
    db.upgrade()
    usage = UsageService(db)
    record = {"id": "r1", "at": time.time(), "project_id": "p", "key_id": "k", "deployment": "d", "backend": "b",
              "region": None, "operation": "chat.completions", "prompt_tokens": 3, "completion_tokens": 4,
              "cost": 0.0, "latency_ms": 1.0, "ttft_ms": None, "status": 200, "filter_outcome": None}
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    import orjson

    (wal_dir / "dead-1.jsonl").write_bytes(orjson.dumps(record) + b"\n" + orjson.dumps({**record, "id": "r2"})
                                           + b"\n" + b'{"id": "r3", "at"')
    usage.insert([record])  # r1 was already stored before the process died
    wal = UsageWAL(wal_dir, usage.insert_json)
    assert wal.replay_orphans() == 2
    assert not list(wal_dir.glob("*.jsonl"))
    assert sum(r["requests"] for r in usage.aggregate(project_id=None, since=None, until=None, group_by=())) == 2


def test_a_spent_budget_answers_insufficient_quota(tmp_path, specs):
    server = start_modelworks(tmp_path, CONFIG, API_KEY, name="budget")
    try:
        url, admin = server.url, {"api-key": API_KEY}
        project = httpx.post(f"{url}/admin/v1/projects", json={"name": "capped", "monthly_token_cap": 60,
                                                               "soft_threshold": 0.5}, headers=admin,
                             timeout=HTTP_TIMEOUT).json()
        key = httpx.post(f"{url}/admin/v1/keys", json={"name": "k", "project_id": project["id"]},
                         headers=admin, timeout=HTTP_TIMEOUT).json()["key"]
        body = {"model": "priced", "messages": [{"role": "user", "content": "a few words to spend tokens"}]}
        statuses = []
        for _ in range(12):
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"api-key": key}, timeout=HTTP_TIMEOUT)
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
        assert statuses[0] == 200 and statuses[-1] == 429, statuses
        assert r.json()["error"]["code"] == "insufficient_quota" and r.headers["x-should-retry"] == "false"
        specs.check("/v1/chat/completions", 429, r.json())
        # the usage records reach the store in the background (flushed every second): until then the budget
        # read from it lags
        budget = wait_until(lambda: _usage(url, key=key).json()["budget"], lambda b: b["exhausted"], interval=0.1,
                            what="the spent budget seen in the usage API")
        assert budget["monthly_token_cap"] == 60 and budget["tokens"] >= 60
        assert budget["soft_threshold_reached"] and budget["exhausted"]
        free = httpx.post(f"{url}/v1/chat/completions", json=body, headers=admin, timeout=HTTP_TIMEOUT)
        assert free.status_code == 200  # other projects are not affected
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("path", ["json", "rows"])
def test_batch_insert_stores_each_field_as_written(tmp_path, backend, path):
    """The batch insert (one JSON document unpacked by the database, or row by row where it cannot) stores what
    metering wrote: the time to the microsecond, nulls as nulls, numbers as numbers."""
    from datetime import datetime, timezone

    import orjson

    from modelworks.metering.usage import COLUMNS
    from support.databases import fresh_postgres

    drop = None
    if backend == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'u.db'}")
    else:
        url, drop = fresh_postgres()
        db = Database(url)
    try:
        db.upgrade()
        usage = UsageService(db)
        if path == "rows":
            usage._json_sql = None
        at = 1795000000.987654  # late in its second: the second must not round up
        rows = [["r1", at, "p", "k", "d", "b", None, "chat.completions", 3, 4, 0.00125, 12.5, None, 200, None],
                ["r2", at + 1.5, "p", None, "d", "b", "westeurope", "completions", 0, 0, 0.0, 1.0, 0.25, 429, "filtered"]]
        usage.insert_json([orjson.dumps(r) for r in rows])
        usage.insert_json([orjson.dumps(rows[0])])  # a replay: stored once
        assert (usage._json_sql is not None) == (path == "json"), "the JSON insert failed and fell back"
        stored = {r["id"]: r for r in usage.records()}
        assert set(stored) == {"r1", "r2"}
        for row in rows:
            got = stored[row[0]]
            when = got["at"] if got["at"].tzinfo else got["at"].replace(tzinfo=timezone.utc)
            assert abs(when - datetime.fromtimestamp(row[1], timezone.utc)).total_seconds() < 2e-6, (when, row[1])
            for name, value in zip(COLUMNS[2:], row[2:]):
                assert got[name] == value, (name, got[name], value)
    finally:
        db.engine.dispose()
        if drop:
            drop()
