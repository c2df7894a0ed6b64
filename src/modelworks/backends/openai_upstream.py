"""Any OpenAI-compatible upstream (vLLM, Ollama, llama-server, OpenAI, another Modelworks).

Requests go out over a pooled keep-alive connection pool (`upstream_http`); streams are relayed event by
event, never buffered. Closing a stream early closes its upstream connection, so the upstream stops generating.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import orjson

from modelworks.backends.base import (
    Backend, Capabilities, Delta, Embeddings, EmbeddingTask, Generation, GenerationTask, Health, Usage,
)
from modelworks.backends.upstream_http import Response, UpstreamConnectionError, UpstreamPool
from modelworks.errors import Unavailable, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from modelworks.offload import run_sized
from modelworks.settings import OpenAIUpstreamBackend

INLINE_BELOW = 64 * 1024  # JSON up to this size is made or parsed on the event loop (well under a millisecond)

# Fields forwarded upstream. Anything else in the client's body was ignored at validation and stays behind.
_CHAT_FIELDS = ("messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
                "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                "response_format", "tools", "tool_choice", "parallel_tool_calls", "user", "reasoning_effort",
                "verbosity")
_TEXT_FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
                "frequency_penalty", "logit_bias", "logprobs", "echo", "suffix", "best_of", "user")


class OpenAIUpstream(Backend):
    honours_deadline = True
    remote = True

    def __init__(self, name: str, spec: OpenAIUpstreamBackend, api_key: str | None) -> None:
        super().__init__(name)
        self.capabilities = Capabilities(embeddings=spec.supports_embeddings, tools=spec.supports_tools,
                                         json_schema=True, logprobs=True, multimodal=True)
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if api_key:
            self.headers.append((b"authorization", f"Bearer {api_key}".encode()))
        self.pool: UpstreamPool | None = None

    # -- where and how to call (Azure overrides these) ------------------------------------------------------------

    def path(self, operation: str) -> str:
        return f"/{operation}"

    def body(self, task: GenerationTask, stream: bool) -> dict[str, Any]:
        raw = orjson.loads(task.body) if task.body else task.request.model_dump(exclude_none=True, by_alias=True)
        fields = _CHAT_FIELDS if task.is_chat else _TEXT_FIELDS
        body: dict[str, Any] = {"model": self.spec.model or task.model}
        for name in fields:
            value = raw.get(name)
            if value is not None:
                body[name] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def _payload(self, task: GenerationTask, stream: bool) -> bytes:
        """The upstream's request body, made off the event loop when the client's body is large."""
        return await run_sized(len(task.body), INLINE_BELOW, lambda: orjson.dumps(self.body(task, stream)))

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.pool = UpstreamPool(self.base_url, max_connections=self.spec.max_connections,
                                 connect_timeout=self.spec.connect_timeout_s)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(3):
                resp = await self.pool.request("GET", self.path("models"), self.headers)
                await resp.read()
            return Health(ok=resp.status < 500, detail=f"upstream answered {resp.status}")
        except (UpstreamConnectionError, TimeoutError) as exc:
            return Health(ok=False, detail=f"upstream unreachable: {exc}")

    # -- calls ------------------------------------------------------------------------------------------------------

    async def generate(self, task: GenerationTask) -> Generation:
        op = "chat/completions" if task.is_chat else "completions"
        data = await self._call(op, await self._payload(task, stream=False), task.trace_headers, task.deadline)
        usage = data.get("usage")
        return Generation(choices=data.get("choices") or [],
                          usage=_usage(usage) if isinstance(usage, dict) and usage else None,
                          system_fingerprint=data.get("system_fingerprint"))

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        op = "chat/completions" if task.is_chat else "completions"
        resp = await self._send(op, await self._payload(task, stream=True), task.trace_headers)
        try:
            if resp.status != 200:
                await self._raise_for(resp)
            buffer = b""
            chunks = resp.chunks()
            while True:
                try:
                    async with asyncio.timeout(self.spec.timeout_s):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise Unavailable(f"The upstream for '{self.name}' stopped sending for "
                                      f"{self.spec.timeout_s:g}s.") from None
                except UpstreamConnectionError as exc:
                    raise UpstreamError(f"The upstream for '{self.name}' broke off the stream: {exc}") from None
                if chunk is None:
                    return
                buffer += chunk
                *events, buffer = buffer.split(b"\n")
                for line in events:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        event = None
                    if not isinstance(event, dict):
                        raise UpstreamError(f"The upstream for '{self.name}' sent a malformed stream event.")
                    if "error" in event:
                        raise UpstreamError("The upstream failed during the stream.", body={"error": event["error"]})
                    usage = event.get("usage")
                    yield Delta(choices=event.get("choices") or [],
                                usage=_usage(usage) if isinstance(usage, dict) and usage else None)
        finally:
            resp.close()

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        body = {"model": self.spec.model or task.model, "input": task.request.input, "encoding_format": "float"}
        if task.request.dimensions is not None:
            body["dimensions"] = task.request.dimensions
        data = await self._call("embeddings", orjson.dumps(body), task.trace_headers, task.deadline)
        items = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        usage = data.get("usage") or {}
        return Embeddings(vectors=[d["embedding"] for d in items], prompt_tokens=usage.get("prompt_tokens", 0))

    # -- transport ----------------------------------------------------------------------------------------------------

    async def _send(self, operation: str, payload: bytes, extra: list | None = None) -> Response:
        headers = self.headers + extra if extra else self.headers
        try:
            return await self.pool.request("POST", self.path(operation), headers, payload)
        except UpstreamConnectionError as exc:
            raise Unavailable(f"The upstream for '{self.name}' is unreachable: {exc}") from None

    async def _call(self, operation: str, payload: bytes, extra: list | None = None,
                    deadline: float | None = None) -> dict[str, Any]:
        timeout = self.spec.timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                resp = await self._send(operation, payload, extra)
                try:
                    if resp.status != 200:
                        await self._raise_for(resp)
                    raw = await resp.read()
                finally:
                    resp.close()
        except TimeoutError:
            raise UpstreamTimeout(f"The upstream for '{self.name}' did not answer within {timeout:.3g}s.") from None
        except UpstreamConnectionError as exc:
            raise Unavailable(f"The upstream for '{self.name}' broke off: {exc}") from None
        try:  # thousands of embeddings make megabytes of JSON: parsed off the event loop
            return await run_sized(len(raw), INLINE_BELOW, orjson.loads, raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"The upstream for '{self.name}' answered with something other than JSON.") from None

    async def _raise_for(self, resp: Response) -> None:
        raw = await resp.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        status = resp.status
        if status == 429:
            raise UpstreamRateLimited(f"The upstream for '{self.name}' is rate limited; retry later.",
                                      retry_after_s=_retry_after(resp))
        if status in (401, 403):
            raise UpstreamError(f"The upstream for '{self.name}' refused our credentials ({status}).", status=502)
        if 400 <= status < 500:
            raise UpstreamError(f"The upstream for '{self.name}' refused the request ({status}).", status=status,
                                body=body if isinstance(body, dict) else None)
        raise UpstreamError(f"The upstream for '{self.name}' failed ({status}).", status=502)


def _retry_after(resp: Response) -> float:
    """The upstream's wait: `retry-after-ms` (Azure) before `retry-after` (seconds); 1 s when it says neither."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = resp.header(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return 1.0


def _usage(usage: dict) -> Usage:
    """An upstream's usage, its cached prompt tokens included (OpenAI's and Azure's prompt_tokens_details)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(usage.get("prompt_tokens", 0) or 0, usage.get("completion_tokens", 0) or 0,
                 cached if isinstance(cached, int) else 0)
