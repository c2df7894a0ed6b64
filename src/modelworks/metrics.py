"""Prometheus metrics: a small in-process registry (counters, histograms, gauges read at scrape time) and the
text exposition format. Updating one is a dict lookup and an addition; nothing is locked (one event loop).

Every metric the service exports is declared in `ServiceMetrics`; README's "Metrics" section lists them.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

from modelworks.routing.pool import STATE_NAMES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000)


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple, float] = {}

    def inc(self, labels: tuple, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def samples(self) -> Iterable[tuple[str, tuple, tuple, float]]:
        for labels, value in self.values.items():
            yield self.name, self.labels, labels, value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.buckets = buckets
        self.values: dict[tuple, list] = {}  # labels -> [per-bucket counts..., +Inf count, sum]

    def observe(self, labels: tuple, value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def samples(self) -> Iterable[tuple[str, tuple, tuple, float]]:
        names = self.labels + ("le",)
        for labels, row in self.values.items():
            total = 0
            for bound, count in zip(self.buckets, row):
                total += count
                yield self.name + "_bucket", names, labels + (_number(bound),), total
            total += row[len(self.buckets)]
            yield self.name + "_bucket", names, labels + ("+Inf",), total
            yield self.name + "_sum", self.labels, labels, row[-1]
            yield self.name + "_count", self.labels, labels, total


class Gauge:
    """A value read when scraped, from a function returning (labels, value) pairs."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...],
                 read: Callable[[], Iterable[tuple[tuple, float]]], kind: str = "gauge") -> None:
        self.name, self.help, self.labels, self.read = name, help, labels, read
        self.kind = kind  # "counter" for a running total kept elsewhere (read when scraped)

    def samples(self) -> Iterable[tuple[str, tuple, tuple, float]]:
        for labels, value in self.read():
            yield self.name, self.labels, labels, value


class Registry:
    def __init__(self) -> None:
        self.metrics: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        out = []
        for metric in self.metrics:
            out.append(f"# HELP {metric.name} {metric.help}\n# TYPE {metric.name} {metric.kind}\n")
            for name, label_names, labels, value in metric.samples():
                if label_names:
                    pairs = ",".join(f'{k}="{_escape(str(v))}"' for k, v in zip(label_names, labels))
                    out.append(f"{name}{{{pairs}}} {_number(value)}\n")
                else:
                    out.append(f"{name} {_number(value)}\n")
        return "".join(out)


class ServiceMetrics:
    """The service's metrics. Gauges that read live state are attached by `create_app` (`watch_*`)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        dep_backend = ("deployment", "backend")
        self.requests = r.add(Counter("modelworks_requests_total",
                                      "API calls that reached a deployment, by serving backend and HTTP status",
                                      ("deployment", "backend", "status")))
        self.prompt_tokens = r.add(Counter("modelworks_prompt_tokens_total", "prompt tokens charged", dep_backend))
        self.completion_tokens = r.add(Counter("modelworks_completion_tokens_total",
                                               "completion tokens delivered", dep_backend))
        self.duration = r.add(Histogram("modelworks_request_duration_seconds", "whole calls, arrival to last byte",
                                        dep_backend, LATENCY_BUCKETS))
        self.time_to_first_token = r.add(Histogram("modelworks_time_to_first_token_seconds",
                                                   "streams: arrival to the first delta", dep_backend,
                                                   LATENCY_BUCKETS))
        self.time_between_tokens = r.add(Histogram("modelworks_time_between_tokens_seconds",
                                                   "streams: gap between successive deltas from the backend",
                                                   dep_backend, GAP_BUCKETS))
        self.tokens_per_second = r.add(Histogram("modelworks_output_tokens_per_second",
                                                 "completion tokens per second of generation, per call",
                                                 dep_backend, RATE_BUCKETS))
        self.limiter_rejections = r.add(Counter("modelworks_limiter_rejections_total",
                                                "calls refused by a quota, a budget or a full queue",
                                                ("deployment", "limit")))
        self.filter_blocks = r.add(Counter("modelworks_content_filter_blocks_total",
                                           "prompts and completions blocked by the content filter",
                                           ("deployment", "category", "direction")))
        self.backend_attempts = r.add(Counter("modelworks_backend_attempts_total",
                                              "tries of a backend and how each ended (ok, error, timeout, "
                                              "rate_limited, busy, refused, stalled, broken, cancelled)",
                                              ("backend", "outcome")))

    def watch_backends(self, members) -> None:
        """Gauges over the routing state: health, circuit, in flight, queue depth."""
        def place(m):
            return (m.name, m.model, m.place.provider, m.region, m.place.data_zone or "")

        tags = ("backend", "model", "provider", "region", "data_zone")
        self.registry.add(Gauge("modelworks_backend_healthy", "1 when the backend passes health checks and its "
                                "circuit (for this model) is not open", tags,
                                lambda: ((place(m), 1.0 if m.healthy and m.state != 2 else 0.0)
                                         for m in members.all())))
        self.registry.add(Gauge("modelworks_backend_circuit_state", "0 closed, 1 half-open, 2 open "
                                f"({', '.join(STATE_NAMES.values())})", ("backend", "model"),
                                lambda: (((m.name, m.model), float(m.state)) for m in members.all())))
        self.registry.add(Gauge("modelworks_backend_in_flight", "requests being served by the backend",
                                ("backend", "model"),
                                lambda: (((m.name, m.model), float(m.in_flight)) for m in members.all())))

        def waiting():
            seen = {}
            for m in members.all():
                seen[m.name] = _waiting(m.backend)
            return (((name,), float(n)) for name, n in seen.items())
        self.registry.add(Gauge("modelworks_queue_depth", "requests waiting for a slot of a local backend",
                                ("backend",), waiting))

        def engines() -> dict[str, dict]:
            seen = {}
            for m in members.all():
                if m.name not in seen:
                    stats = m.backend.engine_stats()
                    if stats is not None:
                        seen[m.name] = stats
            return seen
        self.registry.add(Gauge("modelworks_engine_sequences", "a local engine's sequences: generating or reading "
                                "their prompt (active), free (idle), and requests waiting for one (waiting)",
                                ("backend", "state"), lambda: (
                                    ((name, state), float(value)) for name, e in engines().items()
                                    for state, value in (("active", e["active"]), ("waiting", e["waiting"]),
                                                         ("idle", e["sequences"] - e["active"])))))
        self.registry.add(Gauge("modelworks_engine_tokens_per_second", "a local engine's completion tokens per "
                                "second over the last ten seconds, all sequences together", ("backend",),
                                lambda: (((name,), e["tokens_per_second"]) for name, e in engines().items())))
        self.registry.add(Gauge("modelworks_engine_prompt_tokens_total", "prompt tokens a local engine evaluated "
                                "(evaluated) and took from its prompt cache (cached)", ("backend", "source"),
                                lambda: (((name, source), float(e[key])) for name, e in engines().items()
                                         for source, key in (("evaluated", "prompt_tokens_evaluated"),
                                                             ("cached", "prompt_tokens_cached"))),
                                kind="counter"))


def _waiting(backend) -> int:
    admission = getattr(backend, "admission", None)
    return getattr(admission, "waiting", 0) if admission is not None else 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
