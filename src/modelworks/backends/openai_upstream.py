"""Any OpenAI-compatible upstream (vLLM, Ollama, llama-server, OpenAI, another Modelworks).

Requests go out over one pooled keep-alive connection pool per backend; streams are relayed event by event,
never buffered. Closing a stream early closes its upstream connection, so the upstream stops generating.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import aiohttp
import orjson

from modelworks.backends.base import (
    Backend, Capabilities, Delta, Embeddings, EmbeddingTask, Generation, GenerationTask, Health, Usage,
)
from modelworks.errors import Overloaded, Unavailable, UpstreamError
from modelworks.settings import OpenAIUpstreamBackend

# Fields forwarded upstream. Anything else in the client's body was ignored at validation.
_CHAT_FIELDS = ("messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
                "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                "response_format", "tools", "tool_choice", "parallel_tool_calls", "user")
_TEXT_FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
                "frequency_penalty", "logit_bias", "logprobs", "echo", "suffix", "best_of", "user")


class OpenAIUpstream(Backend):
    def __init__(self, name: str, spec: OpenAIUpstreamBackend, api_key: str | None) -> None:
        super().__init__(name)
        self.capabilities = Capabilities(embeddings=spec.supports_embeddings, tools=spec.supports_tools,
                                         json_schema=True, logprobs=True, multimodal=True)
        self.base_url = spec.base_url.rstrip("/")
        self.spec = spec
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.session: aiohttp.ClientSession | None = None

    # -- where and how to call ---------------------------------------------------------------------------------

    def url(self, operation: str, model: str) -> str:
        return f"{self.base_url}/{operation}"

    def body(self, task: GenerationTask, stream: bool) -> dict[str, Any]:
        req = task.request
        fields = _CHAT_FIELDS if task.is_chat else _TEXT_FIELDS
        body: dict[str, Any] = {"model": task.model}
        values = req.__dict__
        for name in fields:
            value = values.get(name)
            if value is not None:
                body[name] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.spec.max_connections, keepalive_timeout=60, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s, sock_connect=self.spec.connect_timeout_s)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                             json_serialize=lambda o: orjson.dumps(o).decode(),
                                             skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def health(self) -> Health:
        try:
            async with self.session.get(self.url("models", ""), headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return Health(ok=resp.status < 500, detail=f"upstream answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=f"upstream unreachable: {exc.__class__.__name__}")

    # -- calls -----------------------------------------------------------------------------------------------------

    async def generate(self, task: GenerationTask) -> Generation:
        op = "chat/completions" if task.is_chat else "completions"
        payload = orjson.dumps(_jsonable(self.body(task, stream=False)))
        data = await self._post_json(self.url(op, task.model), payload)
        usage = data.get("usage")
        return Generation(choices=data.get("choices") or [],
                          usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)) if usage else None,
                          system_fingerprint=data.get("system_fingerprint"))

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        op = "chat/completions" if task.is_chat else "completions"
        payload = orjson.dumps(_jsonable(self.body(task, stream=True)))
        try:
            resp = await self.session.post(self.url(op, task.model), data=payload, headers=self.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"The upstream for '{self.name}' is unreachable: {exc.__class__.__name__}.") from None
        try:
            if resp.status != 200:
                await self._raise_for(resp)
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = orjson.loads(data)
                if "error" in event:
                    raise UpstreamError("The upstream failed during the stream.", body={"error": event["error"]})
                usage = event.get("usage")
                yield Delta(choices=event.get("choices") or [],
                            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                            if usage else None)
        finally:
            resp.close()

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        body = {"model": task.model, "input": task.request.input, "encoding_format": "float"}
        if task.request.dimensions is not None:
            body["dimensions"] = task.request.dimensions
        data = await self._post_json(self.url("embeddings", task.model), orjson.dumps(body))
        items = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        usage = data.get("usage") or {}
        return Embeddings(vectors=[d["embedding"] for d in items], prompt_tokens=usage.get("prompt_tokens", 0))

    async def _post_json(self, url: str, payload: bytes) -> dict[str, Any]:
        try:
            async with self.session.post(url, data=payload, headers=self.headers) as resp:
                if resp.status != 200:
                    await self._raise_for(resp)
                return orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"The upstream for '{self.name}' is unreachable: {exc.__class__.__name__}.") from None

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        raw = await resp.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        status = resp.status
        if status == 429:
            retry = float(resp.headers.get("retry-after") or 1)
            raise Overloaded(f"The upstream for '{self.name}' is rate limited; retry later.", retry_after_s=retry)
        if status in (401, 403):
            raise UpstreamError(f"The upstream for '{self.name}' refused our credentials ({status}).", status=502)
        if 400 <= status < 500:
            raise UpstreamError(f"The upstream for '{self.name}' refused the request ({status}).", status=status,
                                body=body)
        raise UpstreamError(f"The upstream for '{self.name}' failed ({status}).", status=502)


def _jsonable(value: Any) -> Any:
    """Validated request parts are pydantic models; turn them into plain JSON data (aliases kept)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True, by_alias=True)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
