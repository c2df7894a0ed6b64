"""The API's handlers: OpenAI paths (/v1, /openai/v1) and Azure dated paths (/openai/deployments/{d}/...)."""

from __future__ import annotations

import math
from typing import AsyncIterator

import orjson

from modelworks.api.http import EventStream, JSONResult
from modelworks.api.request import Request
from modelworks.calls import CallStream, Frames, ModelCalls
from modelworks.errors import InvalidRequest, MissingApiVersion
from modelworks.offload import run_sized
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol import render
from modelworks.protocol.api_version import api_version_supported
from modelworks.protocol.parse import parse_request
from modelworks.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from modelworks.service import Gateway


class Handlers:
    def __init__(self, gateway: Gateway, chain: PolicyChain, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.chain = chain
        self.calls = ModelCalls(gateway, chain)
        self.max_body = max_body_bytes

    # -- generation -------------------------------------------------------------------------------------------

    async def chat(self, request: Request) -> JSONResult | EventStream:
        return await self._generate(request, ChatCompletionRequest, "chat.completions")

    async def completions(self, request: Request) -> JSONResult | EventStream:
        return await self._generate(request, CompletionRequest, "completions")

    async def _generate(self, request: Request, model_cls, operation: str) -> JSONResult | EventStream:
        return await self.serve(await self._authenticate(request, operation), request, model_cls)

    async def serve(self, call: Call, request: Request, model_cls) -> JSONResult | EventStream:
        """A chat or text completion for an authenticated call (an API key's, or a portal session's: the
        playground), through the same policies either way."""
        body = await request.body(self.max_body)
        req = await parse_request(model_cls, body)
        await self.calls.admit(call, self._route(call.deployment, req.model), req, body)
        request.watch_disconnect()
        route = call.route  # a provisioned deployment over capacity may have spilled over
        chat = call.task.is_chat
        if not req.stream:
            return await self._whole(call)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        framer = render.StreamFramer(chat=chat, model=route.deployment, include_usage=include_usage)
        stream = await self.calls.stream(call)
        if stream.empty:
            return EventStream(framer.closing(), _nothing(), headers=call.response_headers)
        head = framer.frame(stream.first)
        annotations = call.facts.get("prompt_filter_results")
        if annotations is not None and call.facts.get("annotation_frame", True):
            head = framer.annotation_frame(annotations) + head
        return EventStream(head, Frames(_frames(stream, framer), stream), headers=call.response_headers)

    async def _whole(self, call: Call) -> JSONResult:
        result = await self.calls.generate(call)
        return JSONResult(render.completion_body(result, chat=call.task.is_chat, model=call.route.deployment,
                                                 extra=_annotations(call)), headers=call.response_headers)

    async def answer(self, call: Call, body: bytes, model_cls) -> JSONResult:
        """A whole chat or text completion (a batch line's) for a call whose principal is known."""
        req = await parse_request(model_cls, body)
        await self.calls.admit(call, self._route(None, req.model), req, body)
        return await self._whole(call)

    async def answer_embeddings(self, call: Call, body: bytes) -> JSONResult:
        """Embeddings (a batch line's) for a call whose principal is known."""
        req = await parse_request(EmbeddingRequest, body)
        result = await self.calls.embed(call, self._route(None, req.model), req)
        numbers = len(result.vectors) * len(result.vectors[0]) if result.vectors else 0
        return JSONResult(await run_sized(numbers, 20_000, _embeddings_json, result, req, call.route.deployment))

    # -- embeddings -------------------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> JSONResult:
        call = await self._authenticate(request, "embeddings")
        body = await request.body(self.max_body)
        req = await parse_request(EmbeddingRequest, body)
        route = self._route(call.deployment, req.model)
        request.watch_disconnect()
        result = await self.calls.embed(call, route, req)
        route = call.route
        # 2,048 vectors of 384 numbers take tens of milliseconds to cut and encode: off the event loop
        numbers = len(result.vectors) * len(result.vectors[0]) if result.vectors else 0
        body = await run_sized(numbers, 20_000, _embeddings_json, result, req, route.deployment)
        return JSONResult(body, headers=call.response_headers)

    # -- models -----------------------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> JSONResult:
        await self._authenticate(request, "models.list")
        data = [render.model_card(r.deployment, r.owned_by, self.gateway.created) for r in self.gateway.routes.values()]
        return JSONResult({"object": "list", "data": data})

    async def get_model(self, request: Request) -> JSONResult:
        await self._authenticate(request, "models.retrieve")
        route = self.gateway.resolve(request.path_params["model"])
        return JSONResult(render.model_card(route.deployment, route.owned_by, self.gateway.created))

    # -- shared -----------------------------------------------------------------------------------------------

    def _route(self, deployment: str | None, model: str | None):
        if deployment is not None:
            return self.gateway.resolve(deployment, param="deployment")
        return self.gateway.resolve(model)

    async def _authenticate(self, request: Request, operation: str) -> Call:
        """Check api-version where the path needs it and who is calling; the call names the path's deployment."""
        deployment = request.path_params.get("deployment")
        dated = deployment is not None or request.path.startswith("/openai/models")
        version = request.query("api-version")
        if dated and version is None:
            raise MissingApiVersion(
                "Missing the required query parameter 'api-version' (for example api-version=2024-10-21).",
                param="api-version")
        if version is not None and not api_version_supported(version):
            raise InvalidRequest(f"Unsupported api-version '{version[:40]}'. Use a dated version such as 2024-10-21.",
                                 param="api-version", code="invalid_api_version")
        call = Call(operation=operation, headers=request.headers, deployment=deployment)
        await self.chain.authenticate(call)
        return call


async def _frames(stream: CallStream, framer: render.StreamFramer):
    try:
        async for delta in stream.rest():
            yield framer.frame(delta)
    except BaseException:  # an error, or the client left (GeneratorExit, cancellation)
        await stream.finish(500)
        raise
    closing = framer.closing()
    await stream.finish(200)  # the record is durable before the last frame ([DONE]) goes out
    yield closing


def _annotations(call: Call) -> dict | None:
    results = call.facts.get("prompt_filter_results")
    return {"prompt_filter_results": results} if results is not None else None


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _embeddings_json(result, req: EmbeddingRequest, model: str) -> bytes:
    if req.dimensions is not None:
        result = _truncate(result, req.dimensions)
    return orjson.dumps(render.embeddings_body(result, model=model, encoding_format=req.encoding_format))


def _truncate(result, dimensions: int):
    """OpenAI's `dimensions`: keep the first N components and renormalise (the model must have at least N)."""
    vectors = []
    for vector in result.vectors:
        if dimensions > len(vector):
            raise InvalidRequest(f"This model has {len(vector)} dimensions; 'dimensions' must not exceed it.",
                                 param="dimensions")
        cut = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in cut)) or 1.0
        vectors.append([x / norm for x in cut])
    result.vectors = vectors
    return result
