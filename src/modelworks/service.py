"""The gateway: resolves a deployment to its pool of backends, checks that one of them can do what the request asks,
and hands the call to a `Dispatch` that picks the backend, retries and fails over (`modelworks.routing`).

It speaks in validated requests and backend results; HTTP lives in `modelworks.api`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelworks.backends.base import Backend, Embeddings, EmbeddingTask, Generation, GenerationTask
from modelworks.errors import InvalidRequest, ModelNotFound, ModelworksError, Unsupported
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from modelworks.routing.dispatch import Dispatch
from modelworks.routing.pool import Member, Pool
from modelworks.settings import RoutingSettings


@dataclass(slots=True)
class Route:
    deployment: str
    backend: Backend  # the pool's first backend: its tokenizer counts prompts for quotas
    model: str
    owned_by: str
    pool: Pool  # the backends it may use, all inside its residency scope
    info: dict[str, Any] = field(default_factory=dict)  # the deployment as stored: type, region, quota, prices


class Gateway:
    def __init__(self, routes: dict[str, Route], created: int, routing: RoutingSettings | None = None,
                 metrics=None, tracing=None) -> None:
        self.routes = routes
        self.created = created
        self.routing = routing or RoutingSettings()
        self.metrics = metrics
        self.tracing = tracing

    def routes_get(self, deployment: str) -> Route | None:
        return self.routes.get(deployment)

    def dispatch(self, route: Route, task: GenerationTask | None = None, span=None) -> Dispatch:
        """The routing of one call (under the call's trace `span`, when tracing); with a task, only backends able
        to do what it asks are picked."""
        capable = None
        if task is not None and len(route.pool.members) > 1:  # a pool of one was checked by generation_task
            def capable(member: Member) -> bool:
                return _problem(route.deployment, member.backend, task) is None
        dispatch = Dispatch(route.pool, self.routing, self.metrics, capable, self.tracing)
        dispatch.parent_span = span
        return dispatch

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
        # an empty pool (every backend outside the scope) is left to the dispatch, which answers 503
        problems = [_problem(route.deployment, m.backend, task) for m in route.pool.members]
        if problems and all(problems):
            raise problems[0]
        return task

    async def generate(self, route: Route, task: GenerationTask) -> Generation:
        return await self.dispatch(route, task).generate(task)

    async def embed(self, route: Route, request: EmbeddingRequest, dispatch: Dispatch) -> Embeddings:
        members = route.pool.members
        if members and not any(m.backend.capabilities.embeddings for m in members):
            raise Unsupported(f"The model '{route.deployment}' does not serve embeddings.", param="model")
        inputs = [request.input] if isinstance(request.input, str) else request.input
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        dispatch.capable = lambda m: m.backend.capabilities.embeddings
        return await dispatch.embed(EmbeddingTask(request=request, model=route.model, inputs=inputs))


def _problem(name: str, backend: Backend, task: GenerationTask) -> ModelworksError | None:
    try:
        _check_capabilities(name, backend, task)
    except Unsupported as exc:
        return exc
    return None


def _check_capabilities(name: str, backend: Backend, task: GenerationTask) -> None:
    caps = backend.capabilities
    req = task.request
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
