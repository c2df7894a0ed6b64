"""Usage summed by day (`usage_daily`, the portal's usage screens) agrees with the records, on SQLite and on the
real PostgreSQL: through the JSON path and the row-by-row path, a replayed batch counted once, and the migration
filling it from records stored before it existed."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from modelworks.control.bootstrap import bootstrap
from modelworks.metering.daily import DailyUsage
from modelworks.metering.usage import UsageService
from modelworks.store.db import Database


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    bootstrap(database, "mw-daily-test-key-0123456789")
    yield database
    database.dispose()


def _lines(count: int, spread_hours: float = 2.0) -> list[bytes]:
    now = time.time()
    return [orjson.dumps([uuid.uuid4().hex, now - i * spread_hours * 3600, "proj_default",
                          None if i % 4 == 0 else f"key_{i % 3}", f"dep-{i % 2}", "b", "r", "chat.completions",
                          10 + i, 5, 0.25, 100.0, None, 429 if i % 7 == 0 else 200, None, None, None])
            for i in range(count)]


def _both(db, groups) -> tuple[list, list]:
    usage, daily = UsageService(db), DailyUsage(db)
    raw = usage.aggregate(project_id=None, since=None, until=None, group_by=groups)
    today = datetime.now(timezone.utc).date()
    summed = daily.aggregate(since=today - timedelta(days=30), until=today, group_by=groups)
    fields = ("requests", "prompt_tokens", "completion_tokens", "cost", "errors")
    key = [g if g != "key" else "key_id" for g in groups]
    def rows(found: list[dict]) -> list[tuple]:  # in one order (PostgreSQL sorts a missing key last, SQLite first)
        return sorted((tuple(r[k] for k in key + list(fields)) for r in found),
                      key=lambda t: tuple("" if v is None else str(v) for v in t))

    return rows(raw), rows(summed)


@pytest.mark.parametrize("path", ["json", "rows"])
def test_the_daily_sums_agree_with_the_records_and_count_a_replay_once(db, path):
    usage = UsageService(db)
    if path == "rows":
        usage._json_sql = None  # as where the database lacks the JSON functions
    lines = _lines(120)
    usage.insert_json(lines[:80] + lines[:3])  # a record twice in one batch is one record
    usage.insert_json(lines[40:])  # half of it a replay
    usage.insert_json(lines[:10])
    for groups in (("day", "deployment"), ("day", "key"), ("deployment",), ()):
        raw, summed = _both(db, groups)
        assert raw == summed, groups
    assert sum(r[-5] for r in _both(db, ())[1]) == 120


def test_the_migration_fills_the_daily_sums_from_stored_records(db):
    UsageService(db).insert_json(_lines(50))
    from alembic import command
    from alembic.config import Config

    from modelworks.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:  # back to a store before migration 0012: records, no sums
        config.attributes["connection"] = conn
        command.downgrade(config, "0011")
        assert "usage_daily" not in {r[0] for r in conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables" if conn.dialect.name == "postgresql"
            else "SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.upgrade()
    raw, summed = _both(db, ("day", "deployment", "key"))
    assert raw == summed and len(raw) > 3
