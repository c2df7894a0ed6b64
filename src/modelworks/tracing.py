"""OpenTelemetry tracing through OTLP over HTTP, off by default (`tracing: {enabled: true, ...}`).

One server span per API call that reached a deployment (`chat.completions gpt-4o`, say), continuing the client's
W3C `traceparent` when it sends one, with the GenAI semantic-convention attributes (operation, model, token
usage) and Modelworks' own (deployment, backend, region, attempts, content-filter outcome); one client span per
backend try under it, whose context travels upstream in `traceparent`, so a vLLM or another Modelworks that
traces joins the same trace. The OpenTelemetry packages are imported only when tracing is on (the `tracing`
extra: `pip install 'modelworks[tracing]'`); the tracer provider is this app's own, not the process-global one.
"""

from __future__ import annotations

from typing import Any


class Tracing:
    def __init__(self, endpoint: str, service_name: str = "modelworks", sample_ratio: float = 1.0,
                 headers: dict[str, str] | None = None, export_delay_ms: int = 1000) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", headers=headers or {})
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=export_delay_ms))
        self.tracer = self.provider.get_tracer("modelworks")
        self.propagator = TraceContextTextMapPropagator()
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._in = set_span_in_context

    def server_span(self, name: str, headers: dict[str, str], attributes: dict[str, Any]):
        parent = self.propagator.extract(headers)
        return self.tracer.start_span(name, context=parent, kind=self._server, attributes=attributes)

    def client_span(self, parent, name: str, attributes: dict[str, Any]):
        return self.tracer.start_span(name, context=self._in(parent) if parent is not None else None,
                                      kind=self._client, attributes=attributes)

    def headers_for(self, span) -> list[tuple[bytes, bytes]]:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self._in(span))
        return [(k.encode(), v.encode()) for k, v in carrier.items()]

    def failed(self, span) -> None:
        span.set_status(self._error)

    def close(self) -> None:
        self.provider.shutdown()  # exports what is still queued
