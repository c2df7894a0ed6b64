"""Response bodies and SSE frames in the OpenAI shape. The only module that knows how they are encoded."""

from __future__ import annotations

import base64
import random
import struct
import time
from typing import Any

import orjson

from modelworks.backends.base import Delta, Embeddings, Generation, Usage

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    """Unique enough for response ids (not secrets): no system call on the hot path."""
    return f"{prefix}{random.getrandbits(96):024x}"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def completion_body(result: Generation, *, chat: bool, model: str, response_id: str | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id or new_id("chatcmpl-" if chat else "cmpl-"),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": result.choices,
        "usage": (result.usage or Usage()).as_dict(),
    }
    if result.system_fingerprint:
        body["system_fingerprint"] = result.system_fingerprint
    if extra:
        body.update(extra)
    return body


class StreamFramer:
    """Turns backend deltas into SSE frames for one response."""

    __slots__ = ("chat", "model", "id", "created", "object", "include_usage", "usage")

    def __init__(self, *, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.model = model
        self.id = new_id("chatcmpl-" if chat else "cmpl-")
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.include_usage = include_usage
        self.usage: Usage | None = None

    def frame(self, delta: Delta) -> bytes:
        if delta.usage is not None:
            self.usage = delta.usage
        if not delta.choices:
            return b""
        chunk = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                 "choices": delta.choices}
        if self.include_usage and self.chat:
            chunk["usage"] = None
        return sse(chunk)

    def annotation_frame(self, prompt_filter_results: list) -> bytes:
        """Azure's first stream event: the prompt's filter results, with no choices. Azure leaves its id, object,
        created and model empty; the specs require them, so this frame carries the stream's own."""
        return sse({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                    "choices": [], "prompt_filter_results": prompt_filter_results})

    def closing(self) -> bytes:
        if not self.include_usage:
            return DONE
        chunk = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                 "choices": [], "usage": (self.usage or Usage()).as_dict()}
        return sse(chunk) + DONE


def embeddings_body(result: Embeddings, *, model: str, encoding_format: str) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(result.vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}


def model_card(name: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
