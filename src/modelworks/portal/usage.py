"""The Usage screen: a date range; tokens and requests by day, stacked by deployment, key or project (charts drawn
on the server as SVG: no script, no library); the same data as a table, paginated in the database, and as CSV.

What a caller sees is what `/admin/v1/usage` shows them: admins every project, project admins their project, users
their own key. It reads the daily sums (`usage_daily`, kept with the records), not the records themselves.
"""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime, timedelta, timezone

from modelworks.control.plane import ControlPlane
from modelworks.control.principal import ADMIN, PROJECT_ADMIN
from modelworks.errors import InvalidRequest
from modelworks.metering.usage import to_csv
from modelworks.portal.web import Page, Raw, Visit

PAGE_SIZE = 50
MAX_DAYS = 366
SERIES = 8  # the groups drawn separately; the rest are drawn together as "other"
GROUPS = {"deployment": "deployment", "key": "key_id", "project": "project_id"}
CHART_WIDTH, CHART_HEIGHT, PAD_LEFT, PAD_BOTTOM = 720, 220, 64, 28


class UsageScreen:
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    async def page(self, visit: Visit) -> Page:
        query = _query(visit)
        scope = _scope(visit)
        offset = (query["page"] - 1) * PAGE_SIZE
        groups = ("day", query["group"])
        daily = self.control.daily
        span = {"since": query["since"], "until": query["until"], **scope}
        field = GROUPS[query["group"]]
        page_rows = asyncio.to_thread(daily.aggregate, group_by=groups, limit=PAGE_SIZE + 1, offset=offset, **span)
        if query["group"] == "key":  # keys may be thousands: the largest in the database, the rest as one total
            top, totals, rows = await asyncio.gather(
                asyncio.to_thread(daily.top, group=query["group"], n=SERIES, **span),
                asyncio.to_thread(daily.aggregate, group_by=("day",), **span), page_rows)
            by_top = await asyncio.to_thread(daily.aggregate, group_by=groups, only=(query["group"], top), **span)
        else:  # deployments and projects are tens: every day-and-group row is few, and one scan
            every, rows = await asyncio.gather(asyncio.to_thread(daily.aggregate, group_by=groups, **span), page_rows)
            top, by_top, totals = _split(every, field)
        days = [query["since"] + timedelta(days=i) for i in range((query["until"] - query["since"]).days + 1)]
        charts = [chart(by_top, totals, top, days, field, measure, title)
                  for measure, title in (("tokens", "Tokens by day"), ("requests", "Requests by day"))]
        return Page("usage.html", {
            "q": query, "charts": charts, "rows": rows[:PAGE_SIZE], "field": field,
            "has_next": len(rows) > PAGE_SIZE, "page": query["page"], "groupings": _groupings(visit),
            "csv": _link("/portal/usage.csv", query), "link": lambda **k: _link("/portal/usage", {**query, **k}),
            "scope": "all projects" if visit.who.is_admin else ("your project" if visit.who.role == PROJECT_ADMIN
                                                                 else "your key")})

    async def csv(self, visit: Visit) -> Raw:
        query = _query(visit)
        rows = await asyncio.to_thread(self.control.daily.aggregate, group_by=("day", query["group"]),
                                       since=query["since"], until=query["until"], **_scope(visit))
        name = f"usage-{query['since']}-{query['until']}-by-{query['group']}.csv"
        return Raw(to_csv(rows).encode(), "text/csv; charset=utf-8",
                   headers={"content-disposition": f'attachment; filename="{name}"'})


def _scope(visit: Visit) -> dict:
    who = visit.who
    if who.role == ADMIN:
        return {"project_id": None}
    if who.role == PROJECT_ADMIN:
        return {"project_id": who.project_id}
    return {"project_id": who.project_id, "key_id": who.key_id}


def _groupings(visit: Visit) -> list[str]:
    role = visit.who.role
    return ["deployment", "key", "project"] if role == ADMIN else (["deployment", "key"] if role == PROJECT_ADMIN
                                                                    else ["deployment"])


def _query(visit: Visit) -> dict:
    """The range (the last 14 days by default, at most MAX_DAYS), the grouping and the table's page; a bad value
    is a 400 naming it."""
    request = visit.request
    today = datetime.now(timezone.utc).date()
    until = _date(request.query("until"), "until") or today
    try:
        since = _date(request.query("since"), "since") or until - timedelta(days=13)
        until + timedelta(days=1)  # noqa: B018 -- the day after must exist too
    except OverflowError:
        raise InvalidRequest("The range is outside the calendar.", param="until") from None
    if since > until:
        raise InvalidRequest("'since' must not be after 'until'.", param="since")
    if (until - since).days >= MAX_DAYS:
        raise InvalidRequest(f"The range is at most {MAX_DAYS} days.", param="since")
    group = request.query("group") or "deployment"
    if group not in _groupings(visit):
        raise InvalidRequest(f"'group' takes {', '.join(_groupings(visit))}.", param="group")
    raw_page = request.query("page") or "1"
    if not re.fullmatch(r"[0-9]{1,6}", raw_page) or not 1 <= int(raw_page) <= 100_000:
        raise InvalidRequest("'page' is a page number.", param="page")
    return {"since": since, "until": until, "group": group, "page": int(raw_page)}


def _date(raw: str | None, name: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date (YYYY-MM-DD).", param=name) from None


def _link(path: str, query: dict) -> str:
    from urllib.parse import urlencode

    params = {"since": query["since"].isoformat(), "until": query["until"].isoformat(), "group": query["group"]}
    if query.get("page", 1) != 1 and path.endswith("/usage"):
        params["page"] = query["page"]
    return f"{path}?{urlencode(params)}"


def _split(rows: list[dict], field: str) -> tuple[list, list[dict], list[dict]]:
    """From every (day, group) row: the SERIES largest groups by tokens, their rows, and each day's total."""
    tokens: dict = {}
    days: dict[str, dict] = {}
    for r in rows:
        tokens[r[field]] = tokens.get(r[field], 0) + r["prompt_tokens"] + r["completion_tokens"]
        day = days.setdefault(r["day"], {"day": r["day"], "requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            day[name] += r[name]
    top = [g for g, _ in sorted(tokens.items(), key=lambda kv: -kv[1])[:SERIES]]
    chosen = set(top)
    return top, [r for r in rows if r[field] in chosen], list(days.values())


def chart(rows: list[dict], totals: list[dict], top: list, days: list[date], field: str, measure: str,
          title: str) -> dict:
    """A stacked bar chart as SVG shapes: a bar a day, a segment a group (`top`, the largest; `rows` are their
    sums by day) and "other" for the rest of each day's total (`totals`), with its legend."""
    value = (lambda r: r["prompt_tokens"] + r["completion_tokens"]) if measure == "tokens" else (lambda r: r["requests"])
    named = [g if g not in (None, "") else "(none)" for g in top]  # a record without a key: '' summed, None shown
    by_day: dict[str, dict[str, int]] = {}
    for r in rows:
        day = by_day.setdefault(r["day"], {})
        group = r[field] if r[field] is not None else "(none)"
        day[group] = day.get(group, 0) + value(r)
    for t in totals:
        day = by_day.setdefault(t["day"], {})
        rest = value(t) - sum(day.values())
        if rest > 0:
            day["other"] = rest
    series = named + (["other"] if any("other" in d for d in by_day.values()) else [])
    peak = max((sum(d.values()) for d in by_day.values()), default=0)
    axis = _nice(peak)
    plot_w, plot_h = CHART_WIDTH - PAD_LEFT - 8, CHART_HEIGHT - PAD_BOTTOM - 8
    step = plot_w / max(1, len(days))
    bars, labels = [], []
    for i, day in enumerate(days):
        x = PAD_LEFT + i * step + step * 0.15
        y = 8 + plot_h
        for k, group in enumerate(series):
            amount = by_day.get(day.isoformat(), {}).get(group, 0)
            if not amount:
                continue
            h = plot_h * amount / axis
            y -= h
            bars.append({"x": round(x, 1), "y": round(y, 1), "w": round(step * 0.7, 1), "h": round(h, 1),
                         "cls": f"s{k}", "title": f"{day.isoformat()}, {group}: {amount:,}"})
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            labels.append({"x": round(PAD_LEFT + i * step + step / 2, 1), "text": day.strftime("%b %d")})
    ticks = [{"y": round(8 + plot_h - plot_h * f, 1), "text": f"{int(axis * f):,}"} for f in (0, 0.5, 1)]
    return {"title": title, "measure": measure, "bars": bars, "labels": labels, "ticks": ticks,
            "legend": [{"cls": f"s{k}", "name": g} for k, g in enumerate(series)], "width": CHART_WIDTH,
            "height": CHART_HEIGHT, "left": PAD_LEFT, "bottom": 8 + plot_h, "empty": peak == 0}


def _nice(peak: int) -> int:
    """A round top for the axis, at or above the peak."""
    if peak <= 0:
        return 1
    magnitude = 10 ** (len(str(peak)) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= peak:
            return int(m * magnitude)
    return 10 * magnitude
