"""Metrics: when a call ends, count it (by deployment, serving backend and status), its tokens, durations and
rates, what refused it (a quota, a budget, a full queue) and what the content filter blocked."""

from __future__ import annotations

import time

from modelworks.backends.base import Usage
from modelworks.metrics import ServiceMetrics
from modelworks.policies.chain import Call, Recorder


class MetricsPolicy(Recorder):

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def record(self, call: Call, usage: Usage | None, status: int) -> None:
        route = call.route
        if route is None:
            return
        m = self.m
        deployment = route.deployment
        served = call.dispatch.served if call.dispatch is not None else None
        backend = served.name if served is not None else "none"
        m.requests.inc((deployment, backend, str(status)))
        labels = (deployment, backend)
        now = time.monotonic()
        m.duration.observe(labels, now - call.started)
        if usage is not None:
            if usage.prompt_tokens:
                m.prompt_tokens.inc(labels, usage.prompt_tokens)
            if usage.completion_tokens:
                m.completion_tokens.inc(labels, usage.completion_tokens)
        facts = call.facts
        first = facts.get("first_at")
        if first is not None:
            m.time_to_first_token.observe(labels, first - call.started)
        if usage is not None and usage.completion_tokens > 1:
            since = first if first is not None else call.started
            if now - since > 0:
                m.tokens_per_second.observe(labels, usage.completion_tokens / (now - since))
        if status == 429:
            m.limiter_rejections.inc((deployment, facts.get("limit") or "backend_queue"))
        decisions = facts.get("safety")
        if decisions:
            for d in decisions:
                if d.get("action") == "block":
                    m.filter_blocks.inc((deployment, d.get("category", ""), d.get("direction", "")))
