"""Tracing: a server span from the call's admission to its end, with what the other policies and the routing
found out on the way (see `modelworks.tracing`)."""

from __future__ import annotations

from modelworks.backends.base import Usage
from modelworks.policies.chain import Call
from modelworks.tracing import Tracing

_GENAI_OPERATION = {"chat.completions": "chat", "completions": "text_completion", "embeddings": "embeddings",
                    "responses": "chat"}


class TracingPolicy:
    stage = "admit"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def admit(self, call: Call) -> None:
        route = call.route
        call.facts["span"] = self.tracing.server_span(
            f"{call.operation} {route.deployment}", call.headers,
            {"gen_ai.operation.name": _GENAI_OPERATION.get(call.operation, call.operation),
             "gen_ai.request.model": route.deployment, "modelworks.deployment": route.deployment,
             "modelworks.deployment_type": route.info.get("deployment_type") or ""})

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        span = call.facts.pop("span", None)
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        dispatch = call.dispatch
        if dispatch is not None:
            span.set_attribute("modelworks.attempts", dispatch.attempts)
            if dispatch.served is not None:
                span.set_attribute("modelworks.backend", dispatch.served.name)
                span.set_attribute("cloud.region", dispatch.served.region)
        if call.route is not None:
            span.set_attribute("modelworks.served_deployment", call.route.deployment)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        outcome = call.facts.get("filter_outcome")
        if outcome:
            span.set_attribute("modelworks.content_filter", outcome)
        if status >= 500:
            self.tracing.failed(span)
        span.end()
