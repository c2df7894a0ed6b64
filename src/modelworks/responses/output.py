"""A response as it is built: chat-completion deltas in, output items and (when streaming) the ordered
Responses events out, each with its `sequence_number`.

One builder serves both ways of answering: a stream feeds it the backend's deltas as they come; a whole answer
feeds it the finished generation as one delta. So the items a client polls, the events it streams and what is
stored are made by the same code.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import orjson
from modelworks.backends.base import Usage
from modelworks.responses.items import item_id
from modelworks.responses.file_search import citations
from modelworks.responses.protocol import CreateResponse, FileSearchTool, FunctionTool, McpTool

TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed",
            "cancelled": "response.failed"}


class ResponseState:
    """The Response object of one request, and the events told about it."""

    def __init__(self, response_id: str, req: CreateResponse, model: str, tools: list, *, store: bool,
                 emit: Callable[[dict], None] | None = None, conversation_id: str | None = None) -> None:
        self.id = response_id
        self.req = req
        self.model = model
        self.tools = tools
        self.store = store
        self.emit_to = emit
        self.conversation_id = conversation_id
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.status = "queued" if req.background else "in_progress"
        self.output: list[dict] = []
        self.usage = Usage()
        self.error: dict | None = None
        self.incomplete: dict | None = None
        self.sequence = 0
        self.events: list[dict] = []  # kept for a background stream that a client resumes
        self.keep_events = bool(req.background)
        self.saved_events = 0
        self.sources: list[dict] = []  # file_search results that the answer may cite

    def unsaved_events(self) -> list[dict] | None:
        """The kept events not yet stored (`saved` moves past them once their write has committed)."""
        if not self.keep_events:
            return None
        return self.events[self.saved_events:]

    def saved(self, events: list[dict] | None) -> None:
        self.saved_events += len(events or ())

    # -- events -----------------------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether events go anywhere (a stream, or a background run that keeps them)."""
        return self.keep_events or self.emit_to is not None

    def emit(self, event: dict) -> None:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        if self.keep_events:
            self.events.append(event)
        if self.emit_to is not None:
            self.emit_to(event)

    def announce(self) -> None:
        """The opening events: created and, for a background response, queued (it is in progress later)."""
        self.emit({"type": "response.created", "response": self.body()})
        self.emit({"type": "response.queued" if self.status == "queued" else "response.in_progress",
                   "response": self.body()})

    def start(self) -> None:
        """A queued response begins."""
        self.status = "in_progress"
        self.emit({"type": "response.in_progress", "response": self.body()})

    def finish(self, status: str, *, error: dict | None = None, reason: str | None = None) -> None:
        """End the response with its one terminal event (a second ending, on a path that unwinds after the
        first, changes nothing)."""
        if self.status not in ("queued", "in_progress"):
            return
        self.status = status
        self.error = error
        if reason is not None:
            self.incomplete = {"reason": reason}
        self.completed_at = int(time.time()) if status == "completed" else None
        if self.listening:  # a whole answer has no events: its body is made once, by its caller
            self.emit({"type": TERMINAL[status], "response": self.body()})

    # -- the Response object ----------------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        req = self.req
        text = {"format": {"type": "text"}}
        if req.text is not None and req.text.format is not None:
            fmt = req.text.format
            text = {"format": {"type": fmt.type}}
            if fmt.type == "json_schema":
                text["format"].update({"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict,
                                       **({"description": fmt.description} if fmt.description else {})})
        if req.text is not None and req.text.verbosity:
            text["verbosity"] = req.text.verbosity
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "background": bool(req.background), "completed_at": self.completed_at, "error": self.error,
            "incomplete_details": self.incomplete, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "max_tool_calls": req.max_tool_calls,
            "model": self.model, "output": self._output(), "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id, "reasoning": None,
            "service_tier": "default", "store": self.store, "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": text, "tool_choice": _tool_choice(req), "tools": [_tool(t) for t in self.tools],
            "top_logprobs": req.top_logprobs or 0, "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": req.truncation or "disabled", "usage": self.usage_body(),
            "metadata": req.metadata or {}, "safety_identifier": req.safety_identifier,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "output_text": output_text(self.output),
        }
        if req.user is not None:
            body["user"] = req.user
        if self.status in ("queued", "in_progress"):
            del body["usage"]  # the spec's usage is an object: none until there is one
        return body

    def _output(self) -> list[dict]:
        """The output items for a body: copies while they can still change (a stream's events hold bodies made
        along the way); the items themselves once the response has ended and nothing listens."""
        if self.status in ("queued", "in_progress") or self.listening:
            return [_copy(item) for item in self.output]
        return list(self.output)

    def usage_body(self) -> dict:
        u = self.usage
        return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.total_tokens}


def output_text(output: list[dict]) -> str:
    return "".join(part.get("text", "") for item in output if item.get("type") == "message"
                   for part in item.get("content", []) if part.get("type") == "output_text")


def _tool(tool) -> dict:
    if isinstance(tool, FunctionTool):
        return {"type": "function", "name": tool.name, "description": tool.description,
                "parameters": tool.parameters, "strict": tool.strict if tool.strict is not None else True}
    if isinstance(tool, FileSearchTool):
        return tool.model_dump(exclude_none=True)
    assert isinstance(tool, McpTool)
    data = tool.model_dump(exclude_none=True)
    data.pop("authorization", None)  # secrets sent for the server's use are never echoed or stored
    data.pop("headers", None)
    return data


def _tool_choice(req: CreateResponse):
    choice = req.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return choice.model_dump(exclude_none=True)


def sse(events: list[dict]) -> bytes:
    """Events as SSE frames (`event:` and `data:` lines); empties the list."""
    out = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    events.clear()
    return out


class OutputBuilder:
    """Chat deltas of one model call into output items (appended to `state.output`) and events."""

    def __init__(self, state: ResponseState, server_tools: frozenset[str] = frozenset()) -> None:
        self.state = state
        self.server_tools = server_tools  # function names of tools the server runs (MCP): not client calls
        self.message: dict | None = None
        self.message_index = -1
        self.calls: dict[int, tuple[int, dict]] = {}  # tool-call index -> (output index, item)
        self.server_calls: dict[int, dict] = {}  # tool-call index -> {"call_id", "name", "arguments"}
        self.client_calls = 0  # function calls the client must run, in this model call
        self.finish_reason: str | None = None

    def feed(self, choice: dict) -> None:
        """One chat delta choice (a whole answer is fed as one)."""
        delta = choice.get("delta") or {}
        text = delta.get("content")
        logprobs = _logprobs(choice.get("logprobs"))
        if text or logprobs:
            self._text(text or "", logprobs)
        for call in delta.get("tool_calls") or []:
            self._call(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _text(self, text: str, logprobs: list[dict]) -> None:
        state = self.state
        if self.message is None:
            self.message = {"id": item_id("message"), "type": "message", "status": "in_progress",
                            "role": "assistant", "content": []}
            self.message_index = len(state.output)
            state.output.append(self.message)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            if state.listening:  # a whole answer has no events: none is made
                state.emit({"type": "response.output_item.added", "output_index": self.message_index,
                            "item": _copy(self.message)})
                state.emit({"type": "response.content_part.added", "item_id": self.message["id"],
                            "output_index": self.message_index, "content_index": 0,
                            "part": {**part, "logprobs": []}})
            self.message["content"].append(part)
        part = self.message["content"][0]
        part["text"] += text
        part["logprobs"].extend(logprobs)
        if state.listening:
            state.emit({"type": "response.output_text.delta", "item_id": self.message["id"],
                        "output_index": self.message_index, "content_index": 0, "delta": text,
                        "logprobs": logprobs})

    def _call(self, call: dict) -> None:
        state = self.state
        index = call.get("index", 0)
        fn = call.get("function") or {}
        server = self.server_calls.get(index)
        if server is None and index not in self.calls and fn.get("name") in self.server_tools:
            server = self.server_calls[index] = {"call_id": call.get("id") or item_id("call_"), "name": fn["name"],
                                                 "arguments": ""}
        if server is not None:  # run by the server once complete: no function_call item for the client
            server["arguments"] += fn.get("arguments") or ""
            return
        if index not in self.calls:
            self.client_calls += 1
            item = {"id": item_id("function_call"), "type": "function_call", "status": "in_progress",
                    "call_id": call.get("id") or item_id("call_"), "name": fn.get("name") or "", "arguments": ""}
            self.calls[index] = (len(state.output), item)
            state.output.append(item)
            state.emit({"type": "response.output_item.added", "output_index": self.calls[index][0],
                        "item": _copy(item)})
        position, item = self.calls[index]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        piece = fn.get("arguments") or ""
        if piece:
            item["arguments"] += piece
            state.emit({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": position, "delta": piece})

    def close(self, status: str = "completed") -> None:
        """End every open item: the text and argument `done` events, then each item's `output_item.done`."""
        state = self.state
        self._cite()
        if not state.listening:  # no events to tell: the items end
            for item in ([self.message] if self.message is not None else []) + [i for _, i in self.calls.values()]:
                item["status"] = status
            self.message = None
            self.calls = {}
            return
        ended = []
        if self.message is not None:
            m, i = self.message, self.message_index
            part = m["content"][0]
            state.emit({"type": "response.output_text.done", "item_id": m["id"], "output_index": i,
                        "content_index": 0, "text": part["text"], "logprobs": list(part["logprobs"])})
            state.emit({"type": "response.content_part.done", "item_id": m["id"], "output_index": i,
                        "content_index": 0, "part": {**part, "logprobs": list(part["logprobs"])}})
            ended.append((i, m))
        for position, item in self.calls.values():
            state.emit({"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": position, "name": item["name"], "arguments": item["arguments"]})
            ended.append((position, item))
        for position, item in sorted(ended, key=lambda e: e[0]):
            item["status"] = status
            state.emit({"type": "response.output_item.done", "output_index": position, "item": _copy(item)})
        self.message = None
        self.calls = {}

    def _cite(self) -> None:
        """The answer's file citations (from this response's file_search results), told as they are added."""
        state = self.state
        if self.message is None or not state.sources:
            return
        part = self.message["content"][0]
        if part["annotations"]:
            return
        for k, annotation in enumerate(citations(part["text"], state.sources)):
            part["annotations"].append(annotation)
            if state.listening:
                state.emit({"type": "response.output_text.annotation.added", "item_id": self.message["id"],
                            "output_index": self.message_index, "content_index": 0, "annotation_index": k,
                            "annotation": dict(annotation)})

    def take_server_calls(self) -> list[dict]:
        """The server-run tool calls of the model call that just ended (and forget them)."""
        calls = [self.server_calls[i] for i in sorted(self.server_calls)]
        self.server_calls = {}
        return calls

    def next_call(self) -> None:
        """Ready for the response's next model call."""
        self.client_calls = 0
        self.finish_reason = None


def _logprobs(raw) -> list[dict]:
    """A chat choice's `logprobs.content` in the Responses shape (token, logprob, bytes, top_logprobs)."""
    if not isinstance(raw, dict) or not raw.get("content"):
        return []
    return [{"token": e.get("token", ""), "logprob": e.get("logprob", 0.0), "bytes": e.get("bytes") or [],
             "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
                               "bytes": t.get("bytes") or []} for t in e.get("top_logprobs") or []]}
            for e in raw["content"]]


def _copy(item: dict) -> dict:
    out = dict(item)
    if "content" in out:
        out["content"] = [{**p, "logprobs": list(p["logprobs"])} if "logprobs" in p else dict(p)
                          for p in out["content"]]
    return out
