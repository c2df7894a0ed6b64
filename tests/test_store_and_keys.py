"""The control-plane store and API keys, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, text

from modelworks.control.bootstrap import bootstrap
from modelworks.control.keys import KeyService, key_hash
from modelworks.control.principal import ADMIN, USER
from modelworks.control.projects import DEFAULT_PROJECT, ProjectService
from modelworks.errors import InvalidRequest, NotFound, Unauthorized
from modelworks.policies.auth import ApiKeyAuth
from modelworks.policies.chain import Call
from modelworks.store.db import Database


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.dispose()


def test_migrations_create_every_table_and_are_idempotent(db):
    db.upgrade()
    db.upgrade()
    tables = set(inspect(db.engine).get_table_names())
    assert {"projects", "api_keys", "deployments", "usage_records", "audit_log", "blocklists", "blocklist_items",
            "alembic_version"} <= tables
    with db.engine.connect() as conn:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        from modelworks.store.db import MIGRATIONS

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(config).get_current_head()
        assert head == sorted(p.name for p in (MIGRATIONS / "versions").glob("0*.py"))[-1][:4]
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        # the migrations build exactly what the models describe
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from modelworks.store.schema import Base

        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_bootstrap_generates_one_admin_key_once(db):
    key = bootstrap(db, None)
    assert key.startswith("mw-") and len(key) >= 3 + 43  # 256 random bits, url-safe base64
    assert bootstrap(db, None) is None
    principal = KeyService(db).lookup(key_hash(key))
    assert principal.role == ADMIN and principal.project_id == DEFAULT_PROJECT


def test_bootstrap_registers_the_configured_key(db):
    assert bootstrap(db, "mw-configured-key-1234567890") is None
    assert bootstrap(db, "mw-configured-key-1234567890") is None
    assert KeyService(db).lookup(key_hash("mw-configured-key-1234567890")).role == ADMIN


def test_keys_are_stored_only_as_hashes(db):
    bootstrap(db, None)
    project = ProjectService(db).create("team-a")
    created = KeyService(db).create(project["id"], USER, "ci")
    with db.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
    assert created.key not in dump and key_hash(created.key) in dump
    assert created.record["display"].startswith(created.key[:10]) and "hash" not in created.record


def test_revoked_and_expired_keys_are_refused(db):
    bootstrap(db, None)
    keys = KeyService(db)
    live = keys.create(DEFAULT_PROJECT, USER, "live")
    past = keys.create(DEFAULT_PROJECT, USER, "old", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert keys.lookup(key_hash(live.key)) is not None
    assert keys.lookup(key_hash(past.key)) is None
    keys.revoke(live.record["id"])
    assert keys.lookup(key_hash(live.key)) is None
    assert keys.get(live.record["id"])["revoked_at"] is not None
    with pytest.raises(NotFound):
        keys.revoke("key_missing")
    with pytest.raises(InvalidRequest):
        keys.create(DEFAULT_PROJECT, "emperor", "x")


def test_projects(db):
    bootstrap(db, None)
    projects = ProjectService(db)
    made = projects.create("team-b", monthly_token_cap=1000)
    assert projects.get(made["id"])["monthly_token_cap"] == 1000
    with pytest.raises(InvalidRequest):
        projects.create("team-b")
    with pytest.raises(InvalidRequest):
        projects.create("bad name!")
    assert {p["name"] for p in projects.list()} == {"default", "team-b"}


@pytest.mark.anyio
async def test_auth_cache_spares_the_store_and_honours_revocation(db):
    bootstrap(db, None)
    keys = KeyService(db)
    created = keys.create(DEFAULT_PROJECT, USER, "cached")
    lookups = 0

    async def lookup(digest):
        nonlocal lookups
        lookups += 1
        return await asyncio.to_thread(keys.lookup, digest)

    # a cache that cannot expire during the test, however slow the machine: every lookup counted is a cache miss
    auth = ApiKeyAuth(lookup, ttl=60, negative_ttl=0.1)
    call = lambda: Call(operation="chat", headers={"authorization": f"Bearer {created.key}"})  # noqa: E731
    await asyncio.gather(*(auth.admit(call()) for _ in range(20)))
    assert lookups == 1  # concurrent checks of one key share one query, later ones hit the cache
    for _ in range(50):
        await auth.admit(call())
    assert lookups == 1
    assert list(auth.take_used()) == [created.record["id"]]
    # revocation is honoured once the cached check expires: a short-lived cache, waited out (a lower bound)
    short = ApiKeyAuth(lookup, ttl=0.3, negative_ttl=0.1)
    await short.admit(call())
    assert lookups == 2
    keys.revoke(created.record["id"])
    await asyncio.sleep(0.35)
    with pytest.raises(Unauthorized):
        await short.admit(call())
    assert lookups == 3  # asked the store again, which refused the key
    assert list(short.take_used()) == [created.record["id"]]


# -- audit trail --------------------------------------------------------------------------------------------------

from modelworks.control.audit import AuditLog, Event  # noqa: E402


def _audit_with_entries(db) -> AuditLog:
    db.upgrade()
    log = AuditLog(db)
    log.append([Event("project.create", actor="key_a", project_id="p1", target="p1", detail={"name": "one"})])
    log.append([Event("key.create", actor="key_a", project_id="p1", target="key_x",
                      detail={"role": "user", "key": "mw-supersecretvalue123456", "note": "made mw-abcdefghijklmnop"}),
                Event("auth.failed", outcome="denied", detail={"reason": "unknown key", "path": "/v1/models"})])
    return log


def test_audit_chain_verifies_and_holds_no_secrets(db):
    log = _audit_with_entries(db)
    verdict = log.verify()
    assert verdict.ok and verdict.entries == 3
    exported = "".join(log.export_jsonl())
    assert "supersecret" not in exported and "mw-abcdefghijklmnop" not in exported and "[redacted]" in exported
    assert [e["seq"] for e in log.entries()] == [1, 2, 3]
    assert [e["action"] for e in log.entries(project_id="p1")] == ["project.create", "key.create"]


@pytest.mark.parametrize("tamper,problem", [
    ("UPDATE audit_log SET detail = '{\"name\":\"two\"}' WHERE seq = 1", "edited"),
    ("UPDATE audit_log SET outcome = 'denied' WHERE seq = 2", "edited"),
    ("DELETE FROM audit_log WHERE seq = 2", "missing"),
    ("DELETE FROM audit_log WHERE seq = 3", None),  # dropping the newest entry: see below
    ("UPDATE audit_log SET seq = seq + 100 WHERE seq = 1", "missing"),
])
def test_audit_verify_detects_tampering(db, tamper, problem):
    log = _audit_with_entries(db)
    with db.engine.begin() as conn:
        conn.execute(text(tamper))
    verdict = log.verify()
    if problem is None:
        # Truncating the tail leaves a valid shorter chain; the count shows it (an anchor kept elsewhere,
        # such as the last hash exported with each JSON Lines file, is how a truncation is caught).
        assert verdict.ok and verdict.entries == 2
    else:
        assert not verdict.ok and problem in verdict.problem


def test_audit_detects_reordering(db):
    log = _audit_with_entries(db)
    with db.engine.begin() as conn:  # swap the contents of entries 1 and 2, keeping their numbers
        rows = {r.seq: r for r in conn.execute(text("SELECT * FROM audit_log WHERE seq IN (1, 2)"))}
        for seq, other in ((1, 2), (2, 1)):
            r = rows[other]
            conn.execute(text("UPDATE audit_log SET hash = :h || 'x' WHERE seq = :s"), {"h": r.hash[:63], "s": seq})
        for seq, other in ((1, 2), (2, 1)):
            r = rows[other]
            conn.execute(text("UPDATE audit_log SET at=:at, actor=:actor, project_id=:p, action=:action, "
                              "target=:target, outcome=:outcome, detail=:detail, prev_hash=:prev, hash=:hash "
                              "WHERE seq=:seq"),
                         {"at": r.at, "actor": r.actor, "p": r.project_id, "action": r.action, "target": r.target,
                          "outcome": r.outcome, "detail": r.detail, "prev": r.prev_hash, "hash": r.hash, "seq": seq})
    verdict = log.verify()
    assert not verdict.ok and verdict.seq == 1
