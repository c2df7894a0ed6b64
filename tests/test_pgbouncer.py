"""PostgreSQL through Debian's PgBouncer in transaction mode (issue 15): why `database.transaction_pooler` exists,
and a gateway that migrates, meters, audits and stores responses through the pooler with it on."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from sqlalchemy import text

from conftest import API_KEY

from modelworks.store.db import make_engine
from support.databases import fresh_postgres
from support.pgbouncer import PgBouncer
from support.servers import start_modelworks
from support.waiting import wait_until


@pytest.fixture
def bouncer_and_database():
    url, drop = fresh_postgres()
    bouncer = PgBouncer(pool_size=2)
    yield bouncer, url
    bouncer.stop()
    drop()


def _hammer(engine, clients: int = 8, rounds: int = 25) -> list[str]:
    """Each client runs the same query in transaction after transaction (psycopg prepares a query on its fifth
    run by default); returns the errors."""
    errors: list[str] = []
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        for _ in range(rounds):
            try:
                with engine.begin() as conn:
                    conn.execute(text("SELECT count(*) FROM pg_class WHERE relname = :name"), {"name": f"t{i}"})
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(str(exc).splitlines()[0])

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return errors


def test_prepared_statements_are_off_behind_a_transaction_pooler(bouncer_and_database):
    bouncer, url = bouncer_and_database
    through = bouncer.url(url)
    # psycopg's default: a statement prepared on one server connection is missing on the next one PgBouncer gives
    naive = make_engine(through, pool_size=8, max_overflow=0)
    try:
        errors = _hammer(naive)
    finally:
        naive.dispose()
    assert errors and all("prepared statement" in e for e in errors), errors[:3]

    pooled = make_engine(through, pool_size=8, max_overflow=0, transaction_pooler=True)
    try:
        assert _hammer(pooled) == []
    finally:
        pooled.dispose()


def test_a_gateway_works_through_pgbouncer(tmp_path, bouncer_and_database):
    """Migrations on an empty database, keys, metering, the audit trail and stored responses, with concurrent
    traffic, all through PgBouncer's two server connections."""
    bouncer, url = bouncer_and_database
    config = {"database": {"url": bouncer.url(url), "transaction_pooler": True},
              "metering": {"flush_seconds": 0.2},
              "backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}}}
    server = start_modelworks(tmp_path, config, API_KEY)
    try:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                            http_client=httpx.Client(timeout=60))
        admin = httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=60)

        def work(i: int) -> None:
            sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": f"hi {i}"}])
            made = sdk.responses.create(model="fake", input=f"hello {i}")
            assert sdk.responses.retrieve(made.id).id == made.id
            assert admin.post("/admin/v1/keys", json={"name": f"k{i}"}).status_code in (200, 201)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(40)))
        server.stop()  # the drain flushes usage and audit
        direct = make_engine(url)
        try:
            with direct.connect() as conn:
                usage = conn.execute(text("SELECT count(*) FROM usage_records WHERE status = 200")).scalar()
                keys = conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'key.create'")).scalar()
                stored = conn.execute(text("SELECT count(*) FROM responses")).scalar()
        finally:
            direct.dispose()
        assert (usage, keys, stored) == (80, 40, 40)
        log = server.log_path.read_text(errors="replace")
        assert "prepared statement" not in log and "Traceback" not in log, log[-3000:]
    finally:
        server.stop()


def test_the_store_out_of_reach_is_a_retryable_503_and_loses_no_usage(tmp_path, bouncer_and_database):
    """PgBouncer (so the store) gone: a key checked in the last seconds still works from the cache, its requests
    are metered and its responses stored through the local write-ahead logs; what needs the store is answered 503
    with retry-after, never 500; once the store is back, everything is served and what was written meanwhile
    reaches it."""
    bouncer, url = bouncer_and_database
    config = {"database": {"url": bouncer.url(url), "transaction_pooler": True}, "metering": {"flush_seconds": 0.2},
              "backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}}}
    server = start_modelworks(tmp_path, config, API_KEY)
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    admin = {"api-key": API_KEY}
    answered = 0
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        other = {"api-key": http.post("/admin/v1/keys", json={"name": "other"}, headers=admin).json()["key"]}
        assert http.post("/v1/chat/completions", json=chat, headers=admin).status_code == 200
        answered += 1
        bouncer.proc.kill()
        bouncer.proc.wait()
        assert http.post("/v1/chat/completions", json=chat, headers=admin).status_code == 200  # the key cache
        answered += 1
        made = http.post("/v1/responses", json={"model": "fake", "input": "hi"}, headers=admin)
        assert made.status_code == 200  # stored through the write-ahead log, which waits for the store
        answered += 1
        answers = [http.post("/v1/chat/completions", json=chat, headers=other),  # a key not seen yet
                   http.post("/admin/v1/keys", json={"name": "meanwhile"}, headers=admin)]
        for r in answers:
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json()["error"]["code"] == "service_unavailable"
        assert http.get("/readyz").status_code == 200  # the backends still serve (and cached keys with them)
        back = PgBouncer(pool_size=2, port=bouncer.port)
        try:
            deadline = time.monotonic() + 30
            while http.post("/v1/chat/completions", json=chat, headers=other).status_code != 200:
                assert time.monotonic() < deadline, "the store came back, the server did not"
                time.sleep(0.2)
            answered += 1
            wait_until(lambda: http.get(f"/v1/responses/{made.json()['id']}", headers=admin).status_code,
                       lambda status: status == 200, what="the response made meanwhile to reach the store")
            server.stop()  # flushes the write-ahead log
        finally:
            back.stop()
        direct = make_engine(url)
        try:
            with direct.connect() as conn:
                served = conn.execute(text("SELECT count(*) FROM usage_records WHERE status = 200")).scalar()
        finally:
            direct.dispose()
        assert served == answered
    finally:
        server.stop()


def test_a_gateway_started_before_its_database_waits_for_it(tmp_path):
    """Compose and Kubernetes start the gateways beside the database: a gateway whose database does not accept
    connections yet waits for it (database.connect_wait_s) instead of exiting."""
    from support.servers import free_port

    url, drop = fresh_postgres()
    port = free_port()
    bouncer = None
    parts = urlsplit(url)
    through = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}").geturl()
    config = {"database": {"url": through, "connect_wait_s": 60,
                           "transaction_pooler": True},
              "backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}}}
    starting = ThreadPoolExecutor(1).submit(start_modelworks, tmp_path, config, API_KEY)
    try:
        log = tmp_path / "modelworks.log"
        wait_until(lambda: log.exists() and log.read_text(errors="replace"),
                   lambda text: text and "waiting for the database" in text,
                   what="the gateway to wait for its database")
        bouncer = PgBouncer(pool_size=2, port=port)
        server = starting.result(timeout=120)
        try:
            r = httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": API_KEY},
                           json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
            assert r.status_code == 200
        finally:
            server.stop()
    finally:
        if bouncer is not None:
            bouncer.stop()
        drop()
