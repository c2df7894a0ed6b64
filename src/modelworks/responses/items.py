"""Items: the Responses API's unit of conversation state.

Input items arrive in several shapes (a bare string, an easy message, a typed item, a reference to a stored item);
each is normalized once into the stored form (the item as `GET /responses/{id}/input_items` and conversation
item lists show it, with an id and a status), and stored items become chat messages for the model.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any, Awaitable, Callable

import orjson

from modelworks.errors import InvalidRequest
from modelworks.responses.protocol import (
    MAX_INPUT_ITEMS, FunctionCallItem, FunctionCallOutputItem, InputItem, InputMedia, ItemReference,
    McpApprovalResponseItem, McpCallItem, MessageItem, parse_items,
)

_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "mcp_list_tools": "mcpl_",
           "mcp_call": "mcp_", "mcp_approval_request": "mcpr_", "mcp_approval_response": "mcpa_", "reasoning": "rs_",
           "file_search_call": "fs_"}


def new_id(prefix: str) -> str:
    return f"{prefix}{random.getrandbits(128):032x}"


def response_id() -> str:
    """`resp_`, the time it was made (seconds, 8 hex digits), 96 random bits: a replica that does not find a
    response yet can tell whether it may still be on its way (`made_lately`)."""
    return f"resp_{int(time.time()) & 0xFFFFFFFF:08x}{random.getrandbits(96):024x}"


def made_lately(response_id: str, within: float = 10.0) -> bool:
    try:
        made = int(response_id[5:13], 16)
    except ValueError:
        return False
    return response_id.startswith("resp_") and -5.0 <= time.time() - made <= within


def item_id(kind: str) -> str:
    return new_id(_PREFIX.get(kind, "item_"))


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
Lookup = Callable[[str], Awaitable[dict | None]]


async def normalize_input(raw: Any, lookup: Lookup, where: str = "input",
                          limit: int = MAX_INPUT_ITEMS) -> list[dict]:
    """The request's `input` (a string or a list of items) as stored items; `item_reference`s are resolved
    (in the caller's project) through `lookup`."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [message("user", raw)]
    out = []
    for i, item in enumerate(parse_items(raw, where, limit)):
        if isinstance(item, ItemReference):
            found = await lookup(item.id)
            if found is None:
                raise InvalidRequest(f"Item with id '{item.id[:80]}' not found.", param=f"{where}[{i}].id",
                                     code="invalid_value")
            out.append(found)
        else:
            out.append(stored(item))
    return out


def message(role: str, text: str, id_: str | None = None) -> dict:
    part = ({"type": "output_text", "text": text, "annotations": [], "logprobs": []} if role == "assistant"
            else {"type": "input_text", "text": text})
    return {"id": id_ or item_id("message"), "type": "message", "role": role, "status": "completed",
            "content": [part]}


def stored(item: InputItem) -> dict:
    """An input item in its stored form."""
    if isinstance(item, MessageItem):
        return _stored_message(item)
    data = item.model_dump(exclude_none=True)
    data["id"] = item.id or item_id(item.type)
    if isinstance(item, (FunctionCallItem, FunctionCallOutputItem, McpCallItem)):
        data["status"] = item.status or "completed"
    if isinstance(item, FunctionCallOutputItem) and not isinstance(item.output, str):
        data["output"] = item.text()
    if isinstance(item, McpApprovalResponseItem):
        data["request_id"] = item.approval_request_id  # the spec's resource form carries both names
    return data


def _stored_message(item: MessageItem) -> dict:
    assistant = item.role == "assistant"
    parts = [{"type": "input_text", "text": item.content}] if isinstance(item.content, str) else []
    if not isinstance(item.content, str):
        for part in item.content:
            if isinstance(part, InputMedia):
                parts.append(part.model_dump(exclude_none=True))
            elif part.type == "refusal":
                parts.append({"type": "refusal", "refusal": part.refusal})
            else:
                parts.append({"type": "input_text", "text": part.text})
    if assistant:
        parts = [{"type": "output_text", "text": p["text"], "annotations": [], "logprobs": []}
                 if p["type"] == "input_text" else p for p in parts]
    return {"id": item.id or item_id("message"), "type": "message", "role": item.role,
            "status": item.status if item.status in ("in_progress", "completed", "incomplete") else "completed",
            "content": parts}


def to_chat_messages(items: list[dict], instructions: str | None,
                     searched: dict[str, str] | None = None) -> list[dict]:
    """Stored items as chat-completion messages: instructions first (as a system message), consecutive
    function calls merged into one assistant turn, their outputs as tool messages. MCP calls and file searches
    become the same call-and-result pair (a search's result: its text in `searched`, made for this response, or
    the results it kept); listings, approvals and reasoning are not shown to the model."""
    messages: list[dict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type")
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind in ("function_call", "mcp_call", "file_search_call"):
            call_id = item.get("call_id") or item["id"]
            if kind == "file_search_call":
                name, arguments = "file_search", orjson.dumps({"queries": item.get("queries") or []}).decode()
            else:
                name = item["name"] if kind == "function_call" else function_name(item["server_label"], item["name"])
                arguments = item["arguments"]
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last.get("content"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            if kind == "mcp_call":
                result = item.get("output") if item.get("error") is None else f"Error: {_error_text(item['error'])}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result or ""})
            elif kind == "file_search_call":
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": (searched or {}).get(item["id"]) or _search_results(item)})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def function_name(label: str, name: str) -> str:
    """The function name the model sees for an MCP server's tool (the chat tools' alphabet, 64 characters)."""
    return _UNSAFE.sub("_", f"{label}__{name}")[:64]


def _error_text(error) -> str:
    if isinstance(error, dict):
        parts = error.get("content")
        if isinstance(parts, list):
            return "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        return str(error.get("message") or error)
    return str(error)


def _chat_message(item: dict) -> dict:
    parts = []
    for part in item.get("content", []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "refusal":
            parts.append({"type": "refusal", "refusal": part.get("refusal", "")})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url") or "",
                                                             "detail": part.get("detail") or "auto"}})
        elif kind in ("input_file", "input_audio"):
            parts.append({"type": "file", "file": {k: v for k, v in part.items() if k != "type"}})
    if all(p["type"] == "text" for p in parts):
        return {"role": item["role"], "content": "".join(p["text"] for p in parts)}
    return {"role": item["role"], "content": parts}


def _search_results(item: dict) -> str:
    results = item.get("results")
    if not results:
        return "The results of this earlier file search were not kept."
    return "\n\n".join(f"[{n}] {r.get('filename', '')}: {r.get('text', '')}" for n, r in enumerate(results, 1))
