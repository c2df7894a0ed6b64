"""Usage by UTC day, project, key and deployment (`usage_daily`), kept in step with the records.

Each batch of records adds its new records' sums to their days' rows in the same transaction as it inserts them, so
the two never disagree: a record already stored (a replayed batch) is not counted again, and a batch that fails
adds nothing. The portal's usage screen reads these rows: a month of a million records is a few thousand rows.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timezone

from sqlalchemy import func, select

from modelworks.store.db import Database
from modelworks.store.schema import UsageDaily

# the record's fields, by their place in a write-ahead line (metering's COLUMNS order)
_FIELDS = ("id", "at", "project_id", "key_id", "deployment", "prompt_tokens", "completion_tokens", "cost",
           "latency_ms", "status")
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost", "errors", "latency_ms")
_UPSERT = ("ON CONFLICT (day, project_id, key_id, deployment) DO UPDATE SET "
           + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _SUMS))
_INSERT = ("INSERT INTO usage_daily (day, project_id, key_id, deployment, requests, prompt_tokens, completion_tokens, "
           "cost, errors, latency_ms) ")


def json_rollup_sql(dialect: str, columns: tuple[str, ...]) -> str | None:
    """The statement that adds a JSON batch's records (arrays in `columns` order) that are not stored yet; run it
    just before the batch's INSERT, in the same transaction."""
    at = {name: columns.index(name) for name in _FIELDS}
    if dialect == "sqlite":
        def f(name: str) -> str:
            return f"json_extract(value, '$[{at[name]}]')"

        source = (f"SELECT {f('id')} AS rid, date(CAST({f('at')} AS INTEGER), 'unixepoch') AS d, {f('project_id')} AS p, "
                  f"coalesce({f('key_id')}, '') AS k, {f('deployment')} AS dep, coalesce({f('prompt_tokens')}, 0) AS pt, "
                  f"coalesce({f('completion_tokens')}, 0) AS ct, coalesce({f('cost')}, 0) AS c, "
                  f"CASE WHEN {f('status')} >= 400 THEN 1 ELSE 0 END AS e, coalesce({f('latency_ms')}, 0) AS l "
                  f"FROM json_each(?) GROUP BY rid")  # (json_each has an `id` column of its own)
    elif dialect == "postgresql":
        def f(name: str, cast: str = "") -> str:
            return f"(r->>{at[name]}){cast}"

        source = (f"SELECT DISTINCT ON (rid) {f('id')} AS rid, "
                  f"to_char(to_timestamp({f('at', '::float8')}) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS d, "
                  f"{f('project_id')} AS p, coalesce({f('key_id')}, '') AS k, {f('deployment')} AS dep, "
                  f"coalesce({f('prompt_tokens', '::bigint')}, 0) AS pt, coalesce({f('completion_tokens', '::bigint')}, 0) "
                  f"AS ct, coalesce({f('cost', '::float8')}, 0) AS c, "
                  f"CASE WHEN {f('status', '::int')} >= 400 THEN 1 ELSE 0 END AS e, "
                  f"coalesce({f('latency_ms', '::float8')}, 0) AS l FROM json_array_elements(%s::json) AS r")
    else:
        return None
    return (_INSERT + "SELECT d, p, k, dep, count(*), sum(pt), sum(ct), sum(c), sum(e), sum(l) FROM (" + source
            + ") AS j WHERE NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.id = j.rid) "
              "GROUP BY d, p, k, dep " + _UPSERT)


def add_rows(conn, rows: list[tuple], columns: tuple[str, ...], paramstyle: str) -> None:
    """The same for records given as rows (`columns` order, `at` as the store keeps it): those not stored yet."""
    at = {name: columns.index(name) for name in _FIELDS}
    mark = "?" if paramstyle == "qmark" else "%s"
    ids = list({r[at["id"]] for r in rows})
    stored = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found = conn.exec_driver_sql(f"SELECT id FROM usage_records WHERE id IN ({', '.join([mark] * len(chunk))})",
                                     tuple(chunk))
        stored.update(row[0] for row in found)
    sums: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0.0, 0, 0.0])
    seen = set()
    for r in rows:
        record_id = r[at["id"]]
        if record_id in stored or record_id in seen:
            continue
        seen.add(record_id)
        s = sums[(_day(r[at["at"]]), r[at["project_id"]], r[at["key_id"]] or "", r[at["deployment"]])]
        s[0] += 1
        s[1] += r[at["prompt_tokens"]] or 0
        s[2] += r[at["completion_tokens"]] or 0
        s[3] += r[at["cost"]] or 0.0
        s[4] += 1 if (r[at["status"]] or 0) >= 400 else 0
        s[5] += r[at["latency_ms"]] or 0.0
    if sums:
        conn.exec_driver_sql(_INSERT + f"VALUES ({', '.join([mark] * 10)}) " + _UPSERT,
                             [(*group, *values) for group, values in sums.items()])


def _day(at) -> str:
    if isinstance(at, datetime):
        return (at if at.tzinfo is None else at.astimezone(timezone.utc)).strftime("%Y-%m-%d")
    return str(at)[:10]  # SQLite's text, in UTC


class DailyUsage:
    """Reads `usage_daily`: sums over whole UTC days, grouped like `UsageService.aggregate`."""

    COLUMNS = {"day": UsageDaily.day, "deployment": UsageDaily.deployment,
               "key": UsageDaily.key_id.label("key_id"), "project": UsageDaily.project_id.label("project_id")}

    def __init__(self, db: Database) -> None:
        self.db = db

    def top(self, *, since: date, until: date, group: str, n: int, project_id: str | None = None,
            key_id: str | None = None) -> list[str]:
        """The `n` groups with the most tokens over the days (a chart's series)."""
        column = self.COLUMNS[group]
        tokens = func.sum(UsageDaily.prompt_tokens + UsageDaily.completion_tokens)
        query = self._scoped(select(column, tokens), since, until, project_id, key_id)
        with self.db.session() as s:
            return [row[0] for row in s.execute(query.group_by(column).order_by(tokens.desc()).limit(n))]

    @staticmethod
    def _scoped(query, since: date, until: date, project_id: str | None, key_id: str | None):
        query = query.where(UsageDaily.day >= since.isoformat(), UsageDaily.day <= until.isoformat())
        if project_id is not None:
            query = query.where(UsageDaily.project_id == project_id)
        if key_id is not None:
            query = query.where(UsageDaily.key_id == key_id)
        return query

    def aggregate(self, *, since: date, until: date, group_by: tuple[str, ...], project_id: str | None = None,
                  key_id: str | None = None, limit: int | None = None, offset: int = 0,
                  only: tuple[str, list[str]] | None = None) -> list[dict]:
        """Days from `since` to `until`, both included; `only`: (a group, its values) to keep."""
        keys = [self.COLUMNS[g] for g in group_by]
        query = select(*keys, func.sum(UsageDaily.requests).label("requests"),
                       func.sum(UsageDaily.prompt_tokens).label("prompt_tokens"),
                       func.sum(UsageDaily.completion_tokens).label("completion_tokens"),
                       func.sum(UsageDaily.cost).label("cost"), func.sum(UsageDaily.errors).label("errors"),
                       func.sum(UsageDaily.latency_ms).label("latency"))
        query = self._scoped(query, since, until, project_id, key_id)
        if only is not None:
            column = self.COLUMNS[only[0]]
            query = query.where((column.element if hasattr(column, "element") else column).in_(only[1]))
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        if limit is not None:
            query = query.limit(limit).offset(offset)
        with self.db.session() as s:
            out = []
            for row in s.execute(query):
                item = dict(row._mapping)
                requests = int(item["requests"] or 0)
                item.update(requests=requests, prompt_tokens=int(item["prompt_tokens"] or 0),
                            completion_tokens=int(item["completion_tokens"] or 0),
                            cost=round(float(item["cost"] or 0.0), 6), errors=int(item["errors"] or 0),
                            avg_latency_ms=round(float(item.pop("latency") or 0.0) / requests, 2) if requests else 0.0)
                if "key_id" in item and item["key_id"] == "":
                    item["key_id"] = None
                out.append(item)
            return out
