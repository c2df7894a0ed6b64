"""Interactive calls first: this policy counts, per deployment, the model calls that are not a batch's, so that
the batch workers run a line only when a deployment has been quiet for a moment, and stop a running line (it is
taken again later, unmetered) when an interactive call arrives at a deployment served on this machine's CPU."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from modelworks.backends.base import Usage
from modelworks.policies.chain import Call

QUIET_S = 0.1  # no interactive call began or ended this long: a batch line may start


class Interactive:
    stage = "admit"

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.last: dict[str, float] = {}
        self.arrivals: dict[str, asyncio.Event] = {}

    async def admit(self, call: Call) -> None:
        if (call.facts.get("line") is not None or call.route is None or "interactive" in call.facts
                or call.operation == "vector_stores.ingest"):  # background work is not interactive
            return
        deployment = call.route.deployment
        call.facts["interactive"] = deployment
        self.active[deployment] += 1
        self.last[deployment] = time.monotonic()
        event = self.arrivals.get(deployment)
        if event is not None:
            event.set()

    def record(self, call: Call, usage: Usage | None, status: int) -> None:
        deployment = call.facts.pop("interactive", None)
        if deployment is not None:
            self.active[deployment] -= 1
            self.last[deployment] = time.monotonic()

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        self.record(call, usage, status)

    def quiet(self, deployment: str) -> float:
        """0 when a batch line may start on the deployment now, else how long to wait before asking again."""
        if self.active[deployment] > 0:
            return QUIET_S
        left = QUIET_S - (time.monotonic() - self.last.get(deployment, 0.0))
        return max(0.0, left)

    def arrival(self, deployment: str) -> asyncio.Event:
        """Set when an interactive call is admitted on the deployment (the caller clears it)."""
        event = self.arrivals.get(deployment)
        if event is None:
            event = self.arrivals[deployment] = asyncio.Event()
        return event
