"""The gateway: resolves a deployment to its backend, checks what the backend can do, and runs the call.

It speaks in validated requests and backend results; HTTP lives in `modelworks.api`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from modelworks.backends.base import (
    Backend, Delta, Embeddings, EmbeddingTask, Generation, GenerationTask,
)
from modelworks.errors import InvalidRequest, ModelNotFound, Unsupported
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


@dataclass(slots=True)
class Route:
    deployment: str
    backend: Backend
    model: str
    owned_by: str
    info: dict[str, Any] = field(default_factory=dict)  # the deployment as stored: type, region, quota, prices


class Gateway:
    def __init__(self, routes: dict[str, Route], created: int) -> None:
        self.routes = routes
        self.created = created

    def resolve(self, deployment: str | None, *, param: str = "model") -> Route:
        if not deployment:
            raise InvalidRequest("You must provide a model parameter.", param=param, code="missing_required_parameter")
        route = self.routes.get(deployment)
        if route is None:
            if param == "deployment":
                raise ModelNotFound(
                    "The API deployment for this resource does not exist. If you created the deployment within the "
                    "last 5 minutes, please wait a moment and try again.", param=param)
            raise ModelNotFound(
                f"The model '{deployment}' does not exist or you do not have access to it.", param=param)
        return route

    def generation_task(self, route: Route, request: ChatCompletionRequest | CompletionRequest,
                        body: bytes = b"") -> GenerationTask:
        chat = isinstance(request, ChatCompletionRequest)
        task = GenerationTask(kind="chat" if chat else "text", request=request, model=route.model, body=body)
        _check_capabilities(route, task)
        return task

    async def generate(self, route: Route, task: GenerationTask) -> Generation:
        return await route.backend.generate(task)

    def stream(self, route: Route, task: GenerationTask) -> AsyncIterator[Delta]:
        return route.backend.stream(task)

    async def embed(self, route: Route, request: EmbeddingRequest) -> Embeddings:
        caps = route.backend.capabilities
        if not caps.embeddings:
            raise Unsupported(f"The model '{route.deployment}' does not serve embeddings.", param="model")
        inputs = [request.input] if isinstance(request.input, str) else request.input
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        return await route.backend.embed(EmbeddingTask(request=request, model=route.model, inputs=inputs))


def _check_capabilities(route: Route, task: GenerationTask) -> None:
    caps = route.backend.capabilities
    req = task.request
    name = route.deployment
    if task.is_chat and not caps.chat:
        raise Unsupported(f"The model '{name}' does not serve chat completions.", param="model")
    if not task.is_chat and not caps.completions:
        raise Unsupported(f"The model '{name}' does not serve text completions.", param="model")
    if req.stream and not caps.streaming:
        raise Unsupported(f"The model '{name}' cannot stream.", param="stream")
    if not task.is_chat:
        if req.logprobs is not None and not caps.logprobs:
            raise Unsupported(f"The model '{name}' does not return logprobs.", param="logprobs")
        return
    if req.tools and not caps.tools:
        raise Unsupported(f"The model '{name}' cannot call tools.", param="tools")
    if req.logprobs and not caps.logprobs:
        raise Unsupported(f"The model '{name}' does not return logprobs.", param="logprobs")
    fmt = req.response_format
    if fmt is not None and fmt.type != "text" and not caps.json_schema:
        raise Unsupported(f"The model '{name}' cannot constrain output to JSON.", param="response_format")
    if not caps.multimodal:
        for i, message in enumerate(req.messages):
            if message.has_non_text_parts():
                raise Unsupported(f"The model '{name}' reads text only.", param=f"messages[{i}].content")
