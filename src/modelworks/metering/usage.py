"""Usage records in the store: idempotent batch inserts, aggregates by day, deployment and key, CSV."""

from __future__ import annotations

import collections
import csv
import functools
import io
import logging
from datetime import datetime, timezone

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, NotSupportedError, OperationalError, ProgrammingError

from modelworks.errors import InvalidRequest
from modelworks.metering import daily
from modelworks.store.db import Database
from modelworks.store.schema import UsageRecord

log = logging.getLogger("modelworks.metering")

GROUPS = ("day", "deployment", "key", "project")
DEFAULT_GROUPS = ("day", "deployment")
# A usage record as metering writes it: a row of these, in this order ("at" in seconds since the epoch)
COLUMNS = ("id", "at", "project_id", "key_id", "deployment", "backend", "region", "operation", "prompt_tokens",
           "completion_tokens", "cost", "latency_ms", "ttft_ms", "status", "filter_outcome", "filter_decisions",
           "response_id", "batch_id")
assert set(COLUMNS) == {c.name for c in UsageRecord.__table__.columns}, "usage record columns out of step"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _at(epoch: float, sqlite: bool):
    """PostgreSQL takes an aware datetime; on SQLite, the text SQLAlchemy itself stores for a DateTime."""
    if not sqlite:
        return datetime.fromtimestamp(epoch, timezone.utc)
    second = int(epoch)
    return f"{_second_text(second)}.{min(999999, round((epoch - second) * 1e6)):06d}"


def _row(record, sqlite: bool) -> tuple:
    """A record as written by metering (a list in COLUMNS order), or as a dict (older write-ahead files)."""
    if isinstance(record, dict):
        record = [record.get(c) for c in COLUMNS]
    row = (record[0], _at(record[1], sqlite), *record[2:])
    return row + (None,) * (len(COLUMNS) - len(row))  # lines written before a column was added


def parse_group_by(values: list[str]) -> tuple[str, ...]:
    """The `group_by` query parameter, comma-separated or repeated: names from GROUPS, each at most once (so
    at most four). Absent or empty: by day and deployment; only commas: one row of totals."""
    if not any(values):
        return DEFAULT_GROUPS
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise InvalidRequest(f"group_by takes {', '.join(GROUPS)}; not {shown}.", param="group_by")
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise InvalidRequest(f"group_by names {', '.join(repeated)} more than once.", param="group_by")
    return tuple(names)


class UsageService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, records: list) -> None:
        """Records as lists in COLUMNS order (or dicts): see `insert_json`."""
        self.insert_json([orjson.dumps([r.get(c) for c in COLUMNS] if isinstance(r, dict) else r) for r in records])

    def insert_json(self, lines: list[bytes]) -> None:
        """Insert records given as JSON arrays in COLUMNS order, as the write-ahead log holds them, idempotently.

        The batch goes to the database as one JSON document that the database itself unpacks: one statement, no
        per-row work in Python. That matters because this runs on a thread beside the event loop: a per-row
        executemany took the interpreter lock back for every row, and the event loop lost a fifth of its
        throughput to the switching. Where the database lacks the JSON functions, rows go one by one.
        """
        if not lines:
            return
        document = b"[" + b",".join(lines) + b"]"
        sqlite = self.db.engine.dialect.name == "sqlite"
        with self.db.engine.begin() as conn:
            if self._json_sql is not None:
                try:
                    with conn.begin_nested():
                        text = document.decode()
                        conn.exec_driver_sql(self._daily_sql, (text,))  # before: it counts what is not stored yet
                        conn.exec_driver_sql(self._json_sql, (text,))
                    return
                except DBAPIError as exc:
                    if not _lacks_json(exc):  # a dropped connection, a deadlock: the flush is retried as a whole
                        raise
                    log.warning("inserting usage as one JSON document failed (%s); inserting row by row", exc.orig)
                    self._json_sql = None
            rows = [_row(r, sqlite) for r in orjson.loads(document)]
            daily.add_rows(conn, rows, COLUMNS, self.db.engine.dialect.paramstyle)
            conn.exec_driver_sql(self._rows_sql, rows)

    @functools.cached_property
    def _daily_sql(self) -> str | None:
        return daily.json_rollup_sql(self.db.engine.dialect.name, COLUMNS)

    @functools.cached_property
    def _json_sql(self) -> str | None:
        columns = ", ".join(COLUMNS)
        if self.db.engine.dialect.name == "sqlite":
            def field(i: int) -> str:
                return f"json_extract(value, '$[{i}]')"

            at = (f"strftime('%Y-%m-%d %H:%M:%S', CAST({field(1)} AS INTEGER), 'unixepoch') || "
                  f"printf('.%06d', ({field(1)} - CAST({field(1)} AS INTEGER)) * 1000000)")
            values = ", ".join(at if c == "at" else field(i) for i, c in enumerate(COLUMNS))
            return (f"INSERT INTO usage_records ({columns}) SELECT {values} FROM json_each(?) WHERE true "
                    "ON CONFLICT (id) DO NOTHING")
        if self.db.engine.dialect.name == "postgresql":
            types = {c.name: c.type for c in UsageRecord.__table__.columns}

            def cast(i: int, name: str) -> str:
                if name == "at":
                    return f"to_timestamp((r->>{i})::float8)"
                kind = types[name].python_type
                return f"(r->>{i})::" + {int: "integer", float: "float8"}.get(kind, "text")

            values = ", ".join(cast(i, c) for i, c in enumerate(COLUMNS))
            return (f"INSERT INTO usage_records ({columns}) SELECT {values} FROM json_array_elements(%s::json) AS r "
                    "ON CONFLICT (id) DO NOTHING")
        return None

    @functools.cached_property
    def _rows_sql(self) -> str:
        mark = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"
        return (f"INSERT INTO usage_records ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))}) "
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
                  group_by: tuple[str, ...], key_id: str | None = None, limit: int | None = None,
                  offset: int = 0) -> list[dict]:
        """Requests, tokens, cost, errors and mean latency, grouped (in group order); `limit`/`offset`: one page
        of the groups, counted in the database."""
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
        if key_id is not None:
            query = query.where(UsageRecord.key_id == key_id)
        if since is not None:
            query = query.where(UsageRecord.at >= since)
        if until is not None:
            query = query.where(UsageRecord.at < until)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        if limit is not None:
            query = query.limit(limit).offset(offset)
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


def _lacks_json(exc: DBAPIError) -> bool:
    """The database cannot run the one-document insert (no JSON functions), as opposed to a transient fault."""
    if isinstance(exc, (ProgrammingError, NotSupportedError)):
        return True
    return isinstance(exc, OperationalError) and "function" in str(exc.orig).lower()
