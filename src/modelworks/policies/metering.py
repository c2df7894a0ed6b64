"""Metering: one usage record per request that reached a deployment, written to the usage write-ahead log
before the request's answer is finished (see metering.wal).

Time, project, key id, deployment, backend, region, operation, prompt and completion tokens, cost from the
deployment's prices, latency, time to first token (streams), status, the content-filter outcome, and the Responses API response a
model call was made for.
"""

from __future__ import annotations

import itertools
import time
import uuid

import orjson

from modelworks.backends.base import Usage
from modelworks.metering.wal import UsageWAL
from modelworks.policies.chain import Call, Recorder


class MeteringPolicy(Recorder):

    def __init__(self, wal: UsageWAL) -> None:
        self.wal = wal
        self._node = uuid.uuid4().hex[:16]  # ids: this process's random prefix and a counter (no system call)
        self._ids = itertools.count()

    def record(self, call: Call, usage: Usage | None, status: int) -> None:
        route = call.route
        line = call.facts.get("line")  # a batch line's call: one record per line (see batches.worker)
        if route is None or (line is not None and (line.stopped or status == 429)):
            return
        who = call.principal
        info = route.info
        served = call.dispatch.served if call.dispatch is not None else None
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        cost = (prompt * (info.get("price_input_per_1k") or 0.0) + completion * (info.get("price_output_per_1k") or 0.0)) / 1000
        now = time.monotonic()
        first = call.facts.get("first_at")
        # a row in usage.COLUMNS order
        record_id = line.record_id() if line is not None else f"{self._node}{next(self._ids):x}"
        self.wal.append([
            record_id, time.time(), who.project_id if who else "",
            who.key_id if who else None, route.deployment,
            served.name if served is not None else route.backend.name,
            served.region if served is not None else info.get("region"), call.operation,
            prompt, completion, round(cost, 8), round((now - call.started) * 1000, 3),
            round((first - call.started) * 1000, 3) if first else None, status, call.facts.get("filter_outcome"),
            _decisions(call.facts.get("safety")), call.facts.get("response_id"), call.facts.get("batch_id"),
        ])

    def durable(self):
        return self.wal.written()


def _decisions(decisions: list | None) -> str | None:
    """The content filter's decisions as JSON text (at most 50 kept: a long text can have many PII matches)."""
    if not decisions:
        return None
    return orjson.dumps(decisions[:50]).decode()
