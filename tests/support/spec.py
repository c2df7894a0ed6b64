"""Validate every response against the official OpenAPI specs in ../shared/specs.

`SpecChecker` picks the schema from the request path and status; `checking_transport` wraps an httpx transport
so that every JSON body and every SSE `data:` event the openai SDK receives is validated on the way through.
Violations are collected (an exception inside a transport would be retried by the SDK and hidden).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"
OPENAI_SPEC = SPECS / "openai-openapi.json"
AZURE_SPEC = SPECS / "azure-openai-inference-2024-10-21.json"


def _nullable_to_anyof(node: Any) -> Any:
    """OpenAPI's `nullable: true` means nothing to a JSON Schema validator: make it `anyOf [..., null]`."""
    if isinstance(node, dict):
        node = {k: _nullable_to_anyof(v) for k, v in node.items()}
        flag = node.get("nullable")
        if isinstance(flag, bool):
            node.pop("nullable")
            if flag:
                return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_anyof(v) for v in node]
    return node


class SpecChecker:
    def __init__(self) -> None:
        openai = _nullable_to_anyof(json.loads(OPENAI_SPEC.read_text()))
        azure = _nullable_to_anyof(json.loads(AZURE_SPEC.read_text()))
        # The spec has no schema for legacy-completion stream events; OpenAI sends `finish_reason: null`
        # in all but the last one, so the stream variant allows null there.
        chunk = copy.deepcopy(openai["components"]["schemas"]["CreateCompletionResponse"])
        fr = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
        chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [fr, {"type": "null"}]}
        openai["components"]["schemas"]["ModelworksCompletionStreamEvent"] = chunk
        azure_chunk = copy.deepcopy(azure["components"]["schemas"]["createCompletionResponse"])
        azure["components"]["schemas"]["ModelworksCompletionStreamEvent"] = azure_chunk
        # CreateFileRequest takes purpose `evals`, and OpenAI lists such files with it, but the File object's enum
        # lacks it: the File object here allows what the upload request allows.
        file_purpose = openai["components"]["schemas"]["OpenAIFile"]["properties"]["purpose"]
        file_purpose["enum"] = sorted(set(file_purpose["enum"]) | {"evals"})
        self.registry = Registry().with_resources([
            ("urn:openai", Resource(contents=openai, specification=DRAFT202012)),
            ("urn:azure", Resource(contents=azure, specification=DRAFT202012)),
        ])
        self._validators: dict[str, Draft202012Validator] = {}
        self.checked = 0
        self.openai_paths = openai["paths"]
        schemas = openai["components"]["schemas"]
        self._event_schemas = {}
        for member in schemas["ResponseStreamEvent"]["anyOf"]:
            name = member["$ref"].split("/")[-1]
            for kind in schemas[name].get("properties", {}).get("type", {}).get("enum", []):
                self._event_schemas[kind] = f"urn:openai#/components/schemas/{name}"
        self._agent_templates = [
            (t, re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(t)) + "$"))
            for t in openai["paths"] if t.startswith(_AGENT_PREFIXES) and "?" not in t]
        # exact templates (input_tokens) before the ones with a parameter in their place
        self._agent_templates.sort(key=lambda e: "{" in e[0].split("/")[-1])

    def validator(self, ref: str) -> Draft202012Validator:
        if ref not in self._validators:
            self._validators[ref] = Draft202012Validator({"$ref": ref}, registry=self.registry)
        return self._validators[ref]

    def schema_for(self, path: str, status: int, stream: bool, method: str = "POST") -> str | None:
        azure_dated = path.startswith("/openai/deployments/")
        doc = "urn:azure" if azure_dated else "urn:openai"
        if status >= 400:
            return f"{doc}#/components/schemas/{'errorResponse' if azure_dated else 'ErrorResponse'}"
        if azure_dated:
            if path.endswith("/chat/completions"):
                name = "createChatCompletionStreamResponse" if stream else "createChatCompletionResponse"
                return f"urn:azure#/components/schemas/{name}"
            if path.endswith("/completions"):
                name = "ModelworksCompletionStreamEvent" if stream else "createCompletionResponse"
                return f"urn:azure#/components/schemas/{name}"
            if path.endswith("/embeddings"):
                return ("urn:azure#/paths/~1deployments~1{deployment-id}~1embeddings/post/responses/200/content/"
                        "application~1json/schema")
            if path.endswith("/models"):
                return "urn:openai#/components/schemas/ListModelsResponse"
            return None
        agents = _AGENT_PATH.match(path)
        if agents is not None:
            return self._agent_schema(method, agents.group(1) or agents.group(2), stream)
        if path.endswith("/chat/completions"):
            return "urn:openai#/components/schemas/" + (
                "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse")
        if path.endswith("/completions"):
            return "urn:openai#/components/schemas/" + (
                "ModelworksCompletionStreamEvent" if stream else "CreateCompletionResponse")
        if path.endswith("/embeddings"):
            return "urn:openai#/components/schemas/CreateEmbeddingResponse"
        if path.endswith("/models"):
            return "urn:openai#/components/schemas/ListModelsResponse"
        if re.search(r"/models/.+", path):
            return "urn:openai#/components/schemas/Model"
        return None

    def _agent_schema(self, method: str, tail: str, stream: bool) -> str | None:
        """The Responses and Conversations paths: the schema the spec gives for this path template and method
        (None where it gives none, as for DELETE /responses/{id})."""
        for template, regex in self._agent_templates:
            if regex.match(tail):
                content = (self.openai_paths[template].get(method.lower(), {}).get("responses", {})
                           .get("200", {}).get("content", {}))
                entry = content.get("text/event-stream" if stream else "application/json")
                ref = (entry or {}).get("schema", {}).get("$ref")
                return f"urn:openai{ref}" if ref else None
        return None

    def errors(self, path: str, status: int, body: Any, stream: bool = False, method: str = "POST") -> list[str]:
        ref = self.schema_for(path, status, stream, method)
        if ref is None:
            return []
        if ref.endswith("/ResponseStreamEvent") and isinstance(body, dict):  # the member its `type` names
            ref = self._event_schemas.get(body.get("type"), ref)
        if path.endswith("/embeddings") and status == 200:
            body = _decode_base64_embeddings(body)
        self.checked += 1
        return [f"{path} [{status}] {ref.split('/')[-1]}: {e.message} at {list(e.absolute_path)}"
                for e in self.validator(ref).iter_errors(body)]

    def check(self, path: str, status: int, body: Any, stream: bool = False, method: str = "POST") -> None:
        problems = self.errors(path, status, body, stream, method)
        assert not problems, "\n".join(problems)

    def check_sse(self, path: str, raw: bytes) -> list[dict]:
        """Validate every event of a whole SSE body; return the decoded events."""
        events = []
        for payload in sse_payloads(raw):
            if payload == "[DONE]":
                continue
            event = json.loads(payload)
            status = 500 if "error" in event else 200
            self.check(path, status, event, stream=True)
            events.append(event)
        return events


_AGENT_PREFIXES = ("/responses", "/conversations", "/files", "/vector_stores", "/batches")
# the Responses and data APIs, checked by their path templates in the OpenAI spec (Azure's v1 paths are the same;
# its dated /openai/files and /openai/batches answer in the same shapes, which its 2024-10-21 spec does not hold)
_AGENT_PATH = re.compile(r"^(?:/v1|/openai/v1)(/(?:responses|conversations|files|vector_stores|batches)(?:/.*)?)$"
                         r"|^/openai(/(?:files|batches)(?:/.*)?)$")
_RAW_CONTENT = re.compile(r"^(?:/v1|/openai/v1|/openai)/files/[^/]+/content$")


def _decode_base64_embeddings(body: Any) -> Any:
    """The spec types only float embeddings; `encoding_format: base64` (the SDK's default) sends a string of
    little-endian float32s. Decode it so the rest of the body is still checked."""
    import base64
    import struct

    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return body
    data = []
    for item in body["data"]:
        if isinstance(item, dict) and isinstance(item.get("embedding"), str):
            raw = base64.b64decode(item["embedding"])
            item = {**item, "embedding": list(struct.unpack(f"<{len(raw) // 4}f", raw))}
        data.append(item)
    return {**body, "data": data}


def sse_payloads(raw: bytes) -> list[str]:
    out = []
    for block in raw.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].strip())
    return out


class _Recorder:
    def __init__(self, checker: SpecChecker) -> None:
        self.checker = checker
        self.problems: list[str] = []
        self.responses = 0

    def record(self, path: str, status: int, content_type: str, body: bytes, method: str = "POST") -> None:
        self.responses += 1
        agents = _AGENT_PATH.match(path) is not None
        if "text/event-stream" in content_type:
            for payload in sse_payloads(body):
                if payload == "[DONE]":
                    continue
                event = json.loads(payload)
                # a Responses stream's `error` event is one of its events; a chat stream's error is an envelope
                failed = "error" in event and not agents
                self.problems += self.checker.errors(path, 500 if failed else 200, event, stream=True,
                                                     method=method)
        elif status == 200 and method == "GET" and _RAW_CONTENT.match(path):
            return  # a file's own bytes, as they were uploaded (the spec types them only as a string)
        elif "application/json" in content_type:
            self.problems += self.checker.errors(path, status, json.loads(body), method=method)
        else:
            self.problems.append(f"{path} [{status}]: unexpected content type {content_type!r}")


class _CheckedSyncStream(httpx.SyncByteStream):
    def __init__(self, inner, on_close) -> None:
        self.inner, self.on_close, self.data = inner, on_close, bytearray()

    def __iter__(self):
        for chunk in self.inner:
            self.data += chunk
            yield chunk

    def close(self) -> None:
        self.inner.close()
        self.on_close(bytes(self.data))


class _CheckedAsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner, on_close) -> None:
        self.inner, self.on_close, self.data = inner, on_close, bytearray()

    async def __aiter__(self):
        async for chunk in self.inner:
            self.data += chunk
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()
        self.on_close(bytes(self.data))


class CheckingTransport(httpx.BaseTransport):
    def __init__(self, recorder: _Recorder) -> None:
        self.inner = httpx.HTTPTransport()
        self.recorder = recorder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        path, status, ctype = request.url.path, response.status_code, response.headers.get("content-type", "")
        method = request.method
        response.stream = _CheckedSyncStream(response.stream,
                                             lambda body: self.recorder.record(path, status, ctype, body, method))
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncCheckingTransport(httpx.AsyncBaseTransport):
    def __init__(self, recorder: _Recorder) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        path, status, ctype = request.url.path, response.status_code, response.headers.get("content-type", "")
        method = request.method
        response.stream = _CheckedAsyncStream(response.stream,
                                              lambda body: self.recorder.record(path, status, ctype, body, method))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def specs_available() -> bool:
    return OPENAI_SPEC.exists() and AZURE_SPEC.exists()


def require_shared() -> bool:
    return os.environ.get("MODELWORKS_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"
