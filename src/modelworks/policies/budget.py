"""Budgets: monthly token and cost caps per project, priced from the deployments.

A project's month-to-date totals come from the store (read at most every `refresh_s` per project, one query at
a time) plus what this replica completed since. Other replicas' usage therefore counts within `refresh_s` plus
the metering flush interval: a spent budget may let a few more seconds of traffic through, never more.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from modelworks.backends.base import Usage
from modelworks.errors import InsufficientQuota
from modelworks.metering.usage import UsageService
from modelworks.policies.chain import Call


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class BudgetPolicy:
    stage = "admit"

    def __init__(self, usage: UsageService, refresh_s: float = 5.0) -> None:
        self.usage = usage
        self.refresh_s = refresh_s
        self._spent: dict[str, list] = {}  # project -> [tokens, cost, read at (monotonic), month]
        self._reading: dict[str, asyncio.Future] = {}

    async def admit(self, call: Call) -> None:
        who = call.principal
        if who is None or (who.monthly_token_cap is None and who.monthly_cost_cap is None):
            return
        tokens, cost = await self.spent(who.project_id)
        if who.monthly_token_cap is not None and tokens >= who.monthly_token_cap:
            call.facts["limit"] = "budget"
            raise InsufficientQuota(f"The project's monthly token budget ({who.monthly_token_cap}) is spent. "
                                    "Ask an admin to raise it; it renews on the first of the month (UTC).")
        if who.monthly_cost_cap is not None and cost >= who.monthly_cost_cap:
            call.facts["limit"] = "budget"
            raise InsufficientQuota(f"The project's monthly cost budget ({who.monthly_cost_cap:g}) is spent. "
                                    "Ask an admin to raise it; it renews on the first of the month (UTC).")

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        who = call.principal
        entry = self._spent.get(who.project_id) if who is not None else None
        if entry is None or usage is None or call.route is None:
            return
        info = call.route.info
        entry[0] += usage.total_tokens
        entry[1] += (usage.prompt_tokens * (info.get("price_input_per_1k") or 0.0)
                     + usage.completion_tokens * (info.get("price_output_per_1k") or 0.0)) / 1000

    async def spent(self, project_id: str) -> tuple[int, float]:
        entry = self._spent.get(project_id)
        month = month_start()
        if entry is not None and entry[3] == month and time.monotonic() - entry[2] < self.refresh_s:
            return entry[0], entry[1]
        pending = self._reading.get(project_id)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.usage.totals, project_id, month))
            self._reading[project_id] = pending
            pending.add_done_callback(lambda _: self._reading.pop(project_id, None))
        tokens, cost = await asyncio.shield(pending)
        self._spent[project_id] = [tokens, cost, time.monotonic(), month]
        return tokens, cost
