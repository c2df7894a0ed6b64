"""Compose policies into one chain. Each policy sees the call; none knows the others.

Two stages: `authenticate` runs before the request body is read (who is calling), `admit` after it was parsed
and its deployment resolved (may they, now); `review` sees a finished generation before it is returned. `complete` runs when the answer is finished, however it ended,
with the usage that was delivered: quotas correct their charge there, metering records it. `complete` returns
only once what the policies recorded is durable (a policy's `durable()` says what to wait for), so a handler that
completes a call before it sends the answer's last byte never answers a request whose record a kill could lose.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelworks.backends.base import Usage


@dataclass(slots=True)
class Call:
    """What the policies see of one API call."""

    operation: str
    headers: dict[str, str]  # lower-case names
    deployment: str | None = None
    principal: Any = None
    route: Any = None
    task: Any = None
    dispatch: Any = None  # the routing of the call (modelworks.routing.dispatch): which backend served it
    facts: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class Policy(Protocol):
    stage: str  # "authenticate", "admit", or "complete" (only sees calls end)

    async def admit(self, call: Call) -> None:
        """Raise a ModelworksError to refuse the call."""


class Recorder:
    """A policy that only records a finished call and never waits: the chain calls its `record` directly."""

    stage = "complete"

    def record(self, call: Call, usage: Usage | None, status: int) -> None:
        raise NotImplementedError

    def durable(self):
        """An awaitable that completes when the records made so far are durable, or None if they are."""
        return None

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        self.record(call, usage, status)


class PolicyChain:
    def __init__(self, policies: list) -> None:
        self.authenticators = [p for p in policies if getattr(p, "stage", "admit") == "authenticate"]
        self.admitters = [p for p in policies if getattr(p, "stage", "admit") == "admit"]
        # a policy with a plain `record(call, usage, status)` is called without a coroutine (it never waits)
        self.completers = [(p, getattr(p, "record", None)) for p in reversed(policies) if hasattr(p, "complete")]
        self.reviewers = [p for p in policies if hasattr(p, "review")]
        self.stream_reviewers = [p for p in policies if hasattr(p, "review_stream")]
        self.recorders = [p for p in policies if isinstance(p, Recorder)]

    async def authenticate(self, call: Call) -> None:
        for policy in self.authenticators:
            await policy.admit(call)

    async def admit(self, call: Call) -> None:
        for policy in self.admitters:
            await policy.admit(call)

    async def review(self, call: Call, result) -> None:
        """Let policies inspect (and amend) a finished generation before it is returned."""
        for policy in self.reviewers:
            await policy.review(call, result)

    def review_stream(self, call: Call, deltas):
        """Let policies wrap a generation's stream of deltas (to screen it as it goes)."""
        for policy in self.stream_reviewers:
            deltas = policy.review_stream(call, deltas)
        return deltas

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        for policy, record in self.completers:
            if record is not None:
                record(call, usage, status)
            else:
                await policy.complete(call, usage, status)
        for recorder in self.recorders:  # one wait for all the calls that completed in this turn of the loop
            pending = recorder.durable()
            if pending is not None:  # shared by the turn's calls: one that is cancelled must not cancel it
                await asyncio.shield(pending)
