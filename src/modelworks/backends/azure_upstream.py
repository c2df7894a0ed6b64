"""Azure OpenAI upstream: `{endpoint}/openai/deployments/{deployment}/{operation}?api-version=...`, `api-key` header."""

from __future__ import annotations

from typing import Any

from modelworks.backends.base import GenerationTask
from modelworks.backends.openai_upstream import OpenAIUpstream
from modelworks.settings import AzureOpenAIUpstreamBackend, OpenAIUpstreamBackend


class AzureOpenAIUpstream(OpenAIUpstream):
    def __init__(self, name: str, spec: AzureOpenAIUpstreamBackend, api_key: str | None) -> None:
        base = OpenAIUpstreamBackend(type="openai", base_url=spec.endpoint.rstrip("/") + "/openai",
                                     timeout_s=spec.timeout_s, connect_timeout_s=spec.connect_timeout_s,
                                     max_connections=spec.max_connections)
        super().__init__(name, base, api_key=None)
        self.deployment = spec.deployment
        self.api_version = spec.api_version
        if api_key:
            self.headers.append((b"api-key", api_key.encode()))

    def path(self, operation: str) -> str:
        if operation == "models":
            return f"/models?api-version={self.api_version}"
        return f"/deployments/{self.deployment}/{operation}?api-version={self.api_version}"

    def body(self, task: GenerationTask, stream: bool) -> dict[str, Any]:
        body = super().body(task, stream)
        body.pop("model", None)
        return body
