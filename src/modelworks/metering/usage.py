"""Usage records in the store: idempotent batch inserts, aggregates by day, deployment and key, CSV."""

from __future__ import annotations

import csv
import functools
import io
from datetime import datetime, timezone

from sqlalchemy import func, select

from modelworks.store.db import Database
from modelworks.store.schema import UsageRecord

GROUPS = ("day", "deployment", "key", "project")
_COLUMNS = tuple(c.name for c in UsageRecord.__table__.columns)


def _at(epoch: float, sqlite: bool):
    """PostgreSQL takes an aware datetime; on SQLite, the text SQLAlchemy itself stores for a DateTime."""
    value = datetime.fromtimestamp(epoch, timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value


class UsageService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, records: list[dict]) -> None:
        """Straight to the database driver's executemany: a few microseconds a record, not SQLAlchemy's ~90."""
        sqlite = self.db.engine.dialect.name == "sqlite"
        rows = [tuple(_at(r["at"], sqlite) if c == "at" else r.get(c) for c in _COLUMNS) for r in records]
        with self.db.engine.begin() as conn:
            conn.exec_driver_sql(self._insert_sql, rows)

    @functools.cached_property
    def _insert_sql(self) -> str:
        mark = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"
        return (f"INSERT INTO usage_records ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))}) "
                "ON CONFLICT (id) DO NOTHING")

    def totals(self, project_id: str, since: datetime) -> tuple[int, float]:
        """Tokens and cost of a project since a time (budgets)."""
        with self.db.session() as s:
            tokens, cost = s.execute(
                select(func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0),
                       func.coalesce(func.sum(UsageRecord.cost), 0.0))
                .where(UsageRecord.project_id == project_id, UsageRecord.at >= since)).one()
            return int(tokens), float(cost)

    def aggregate(self, *, project_id: str | None, since: datetime | None, until: datetime | None,
                  group_by: tuple[str, ...]) -> list[dict]:
        columns = {"day": func.date(UsageRecord.at).label("day"), "deployment": UsageRecord.deployment,
                   "key": UsageRecord.key_id.label("key_id"), "project": UsageRecord.project_id.label("project_id")}
        keys = [columns[g] for g in group_by]
        sums = [func.count().label("requests"), func.sum(UsageRecord.prompt_tokens).label("prompt_tokens"),
                func.sum(UsageRecord.completion_tokens).label("completion_tokens"),
                func.sum(UsageRecord.cost).label("cost"),
                func.sum(func.cast(UsageRecord.status >= 400, UsageRecord.status.type)).label("errors"),
                func.avg(UsageRecord.latency_ms).label("avg_latency_ms")]
        query = select(*keys, *sums)
        if project_id is not None:
            query = query.where(UsageRecord.project_id == project_id)
        if since is not None:
            query = query.where(UsageRecord.at >= since)
        if until is not None:
            query = query.where(UsageRecord.at < until)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        with self.db.session() as s:
            out = []
            for row in s.execute(query):
                item = dict(row._mapping)
                if "day" in item and item["day"] is not None:
                    item["day"] = str(item["day"])[:10]
                item["prompt_tokens"] = int(item["prompt_tokens"] or 0)
                item["completion_tokens"] = int(item["completion_tokens"] or 0)
                item["cost"] = round(float(item["cost"] or 0.0), 6)
                item["errors"] = int(item["errors"] or 0)
                item["avg_latency_ms"] = round(float(item["avg_latency_ms"] or 0.0), 2)
                out.append(item)
            return out

    def records(self, project_id: str | None = None, limit: int = 1000) -> list[dict]:
        with self.db.session() as s:
            query = select(UsageRecord).order_by(UsageRecord.at.desc()).limit(limit)
            if project_id is not None:
                query = query.where(UsageRecord.project_id == project_id)
            return [{c.name: getattr(r, c.name) for c in UsageRecord.__table__.columns} for r in s.scalars(query)]


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
