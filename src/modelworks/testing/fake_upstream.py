"""A fake OpenAI-compatible upstream server: real HTTP on loopback, for tests, demos and benchmarks.

Serves `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models` and the Azure dated paths
`/openai/deployments/{d}/...`. Behaviour is picked by the requested model (or Azure deployment) name:

- `slow-*`: streams one word every 50 ms (for disconnect tests);
- `error-<status>`: answers that HTTP status with an OpenAI error envelope;
- `tools-in-turn*`: given tools, calls them one after another, tool k when k tool results follow the last user
  message, each with arguments that fit its schema (required strings "x", integers 1, ...); after the last
  tool's result it answers text (for agent loops with several tools);
- anything else: answers at once with a fixed reply; given tools, it calls the first one with `{}`, and after a
  tool's result it answers text.

A chat request with `response_format` of type `json_schema` is answered with a small JSON value that fits the
schema instead of the fixed reply (for structured outputs).

One process plays many upstreams: a path that starts with a name other than `v1` or `openai`
(`/eu-1/v1/chat/completions`) is served as the upstream instance `eu-1`, and faults can be injected per instance
with `POST /_fake/faults/{instance}` and a JSON body (`DELETE` clears it):

- `{"mode": "status", "status": 500}` (`"retry_after": 2` adds retry-after to a 429; `"health": true` fails the
  health check `GET .../models` too);
- `{"mode": "slow_first_byte", "seconds": 3}`: waits before answering;
- `{"mode": "stall", "after": 3}`: a stream sends 3 events, then nothing until its client leaves;
- `{"mode": "die", "after": 3}`: a stream sends 3 events, then the connection drops without an end;
- `{"mode": "malformed", "after": 3}`: a stream sends 3 events, then one that is not JSON;
- `{"mode": "flood", "events": 100000}`: a stream sends that many 100-character events as fast as it can.

It records what it received (`GET /_fake/requests`, `DELETE /_fake/requests`), including the instance and
whether each stream was cut by its client. Run it with `python -m modelworks.testing.fake_upstream --port 9000`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import deque

import orjson

REPLY = "Hello from the fake upstream."
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


class FakeUpstream:
    def __init__(self, record: int = 200) -> None:
        self.requests: deque[dict] = deque(maxlen=record)
        self.cut_streams = 0
        self.finished_streams = 0
        self.faults: dict[str, dict] = {}
        self._chat_body = orjson.dumps(_chat_completion("fake-model"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        method = scope["method"]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if path == "/_fake/requests":
            if method == "DELETE":
                self.requests.clear()
                self.cut_streams = self.finished_streams = 0
            payload = {"requests": list(self.requests), "cut_streams": self.cut_streams,
                       "finished_streams": self.finished_streams}
            return await _respond(send, 200, orjson.dumps(payload))
        if path.startswith("/_fake/faults/"):
            instance = path.rsplit("/", 1)[1]
            if method == "DELETE":
                self.faults.pop(instance, None)
            else:
                self.faults[instance] = orjson.loads(body)
            return await _respond(send, 200, orjson.dumps(self.faults))
        instance = ""
        first = path.split("/", 2)[1] if path.count("/") >= 2 else ""
        if first not in ("v1", "openai", "_fake"):
            instance, path = first, path[len(first) + 1:]
        fault = self.faults.get(instance) or {}
        mode = fault.get("mode")
        if path.endswith("/models") and method == "GET":
            if mode == "status" and fault.get("health"):
                return await _respond(send, fault["status"], _error(fault["status"], "fake health failure"))
            data = [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]
            return await _respond(send, 200, orjson.dumps({"object": "list", "data": data}))
        try:
            request = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return await _respond(send, 400, _error(400, "bad json"))
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        azure_deployment = _azure_deployment(path)
        model = azure_deployment or request.get("model", "")
        self.requests.append({"instance": instance, "path": path, "query": scope["query_string"].decode(),
                              "headers": headers, "body": request})
        if mode == "slow_first_byte":
            await asyncio.sleep(float(fault.get("seconds", 1)))
        if mode == "status":
            status = int(fault["status"])
            extra = [(b"retry-after", str(fault["retry_after"]).encode())] if "retry_after" in fault else []
            return await _respond(send, status, _error(status, f"injected fault {status}"), extra)
        if model.startswith("error-"):
            status = int(model.split("-", 1)[1])
            extra = [(b"retry-after", b"1")] if status == 429 else []
            return await _respond(send, status, _error(status, f"fake upstream error {status}"), extra)
        if path.endswith("/embeddings"):
            inputs = request.get("input")
            items = [inputs] if isinstance(inputs, str) else inputs or []
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]} for i in range(len(items))]
            usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
            return await _respond(send, 200, orjson.dumps({"object": "list", "data": data, "model": model,
                                                           "usage": usage}))
        chat = path.endswith("/chat/completions")
        if not path.endswith("/completions"):
            return await _respond(send, 404, _error(404, f"no route {path}"))
        if request.get("stream"):
            return await self._stream(send, receive, chat, model, request, fault)
        if chat and model == "fake-model" and not request.get("tools") and not request.get("response_format"):
            return await _respond(send, 200, self._chat_body)
        body = _chat_completion(model, request) if chat else _text_completion(model)
        return await _respond(send, 200, orjson.dumps(body))

    async def _stream(self, send, receive, chat: bool, model: str, request: dict, fault: dict) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        delay = 0.05 if model.startswith("slow-") else 0.0
        words = (_reply(request) if chat else REPLY).split(" ") * (20 if delay else 1)
        if fault.get("mode") == "flood":
            words = ["x" * 100] * int(fault.get("events", 100_000))
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        task = asyncio.current_task()

        async def watch() -> None:  # uvicorn drops writes after a disconnect silently: listen for it
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            if chat:
                await _send_event(send, {"id": "chatcmpl-fake", "object": obj, "created": created, "model": model,
                                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                      "finish_reason": None}]})
            mode, after = fault.get("mode"), int(fault.get("after", 0))
            call = _tool_call(model, request) if chat else None
            if call is not None:  # the call's name first, then its arguments in two pieces
                arguments, half = call["function"]["arguments"], len(call["function"]["arguments"]) // 2
                for tool_delta in ({"index": 0, "id": call["id"], "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""}},
                                   {"index": 0, "function": {"arguments": arguments[:half]}},
                                   {"index": 0, "function": {"arguments": arguments[half:]}}):
                    await _send_event(send, {"id": "chatcmpl-fake", "object": obj, "created": created, "model": model,
                                             "choices": [{"index": 0, "delta": {"tool_calls": [tool_delta]},
                                                          "finish_reason": None}]})
                words = []
            for i, word in enumerate(words):
                if mode in ("stall", "die", "malformed") and i == after:
                    if mode == "stall":
                        await asyncio.Event().wait()  # until the client leaves (this task is cancelled)
                    if mode == "die":
                        raise _Die()
                    await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
                if delay:
                    await asyncio.sleep(delay)
                piece = word if i == 0 else " " + word
                choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                          else {"index": 0, "text": piece, "finish_reason": None, "logprobs": None})
                await _send_event(send, {"id": "chatcmpl-fake", "object": obj, "created": created, "model": model,
                                         "choices": [choice]})
            finish = "tool_calls" if call is not None else "stop"
            last = ({"index": 0, "delta": {}, "finish_reason": finish} if chat
                    else {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None})
            await _send_event(send, {"id": "chatcmpl-fake", "object": obj, "created": created, "model": model,
                                     "choices": [last]})
            if (request.get("stream_options") or {}).get("include_usage"):
                await _send_event(send, {"id": "chatcmpl-fake", "object": obj, "created": created, "model": model,
                                         "choices": [], "usage": _usage(len(words))})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            self.finished_streams += 1
        except (OSError, asyncio.CancelledError):
            self.cut_streams += 1
        except _Die:
            raise RuntimeError("injected fault: the stream dies") from None  # uvicorn drops the connection
        finally:
            watcher.cancel()


class _Die(Exception):
    pass


def _azure_deployment(path: str) -> str | None:
    if path.startswith("/openai/deployments/"):
        return path.split("/")[3]
    return None


async def _send_event(send, obj) -> None:
    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(obj) + b"\n\n", "more_body": True})


async def _respond(send, status: int, body: bytes, extra=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _usage(completion: int) -> dict:
    return {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}


def _error(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                   "server_error", "param": None, "code": str(status)}})


def _tool_call(model: str, request: dict) -> dict | None:
    """The tool call the fake answers with, or None for a text answer. Given tools it calls the first one with
    `{}`, and after a tool's result it answers text; a `tools-in-turn*` model calls tool k (with arguments that
    fit its schema) when k tool results follow the last user message, and answers text after the last."""
    tools = request.get("tools") or []
    messages = request.get("messages") or [{}]
    if not model.startswith("tools-in-turn"):
        if not tools or messages[-1].get("role") == "tool":
            return None
        name = tools[0]["function"]["name"]
        return {"id": "call_fake", "type": "function", "function": {"name": name, "arguments": "{}"}}
    done = 0
    for m in reversed(messages):
        if m.get("role") == "user":
            break
        done += m.get("role") == "tool"
    if done >= len(tools):
        return None
    function = tools[done]["function"]
    arguments = orjson.dumps(_fitting(function.get("parameters") or {})).decode()
    return {"id": f"call_fake_{done}_{uuid.uuid4().hex[:12]}", "type": "function",
            "function": {"name": function["name"], "arguments": arguments}}


def _fitting(schema: dict, root: dict | None = None):
    """A small value that validates against a JSON schema of the usual tool shapes: an object's required
    properties filled in, the first of an enum, "x", 1, true, []; local `$ref`s (`#/$defs/...`) are followed."""
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part) or {}
        return _fitting(target, root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _fitting(schema[key][0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _fitting(properties.get(name) or {}, root) for name in schema.get("required") or []}
    return {"string": "x", "integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(kind, "x")


def _reply(request: dict) -> str:
    """The text answer: the fixed reply, or for a `json_schema` response format a JSON value that fits it; the
    `echo-tool` model answers with the first 300 characters of the last tool result, when the last message is
    one (what a model that reads its search results would say)."""
    messages = request.get("messages") or [{}]
    if request.get("model") == "echo-tool" and messages[-1].get("role") == "tool":
        return str(messages[-1].get("content") or "")[:300]
    fmt = request.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return REPLY
    return orjson.dumps(_fitting((fmt.get("json_schema") or {}).get("schema") or {})).decode()


def _chat_completion(model: str, request: dict | None = None) -> dict:
    message: dict = {"role": "assistant", "content": _reply(request or {}), "refusal": None}
    finish = "stop"
    call = _tool_call(model, request) if request else None
    if call is not None:
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        finish = "tool_calls"
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(6)}


def _text_completion(model: str) -> dict:
    return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": REPLY, "finish_reason": "stop", "logprobs": None}], "usage": _usage(6)}


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    uvicorn.run(FakeUpstream(), host=args.host, port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
