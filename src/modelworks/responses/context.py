"""What a response continues: the items of the responses before it (`previous_response_id`) or of its
conversation.

A context that comes from this process's memory (`RecentResponses`) also carries the chat messages its items
make, validated already, with their JSON: a response continuing it converts and validates only the messages of
its own input and output, and its model call's body is the context's JSON with those spliced in (byte for byte
what converting the whole context would give). Converting and validating a 10-turn chain whole cost more than a
chat completion's own request parsing; it grew with every turn.

Items are kept as JSON until something reads them (truncation, MCP tools, a model call that cannot use the
messages): bytes, not dicts, so that a few thousand remembered contexts are not a million objects for the garbage
collector to walk.
"""

from __future__ import annotations

import orjson
from pydantic import TypeAdapter, ValidationError

from modelworks.protocol.requests import Message
from modelworks.responses.items import to_chat_messages

_MESSAGES = TypeAdapter(list[Message])
_CALLS = ("function_call", "mcp_call")


class Context:
    __slots__ = ("_items", "_json", "messages", "messages_json", "open_calls")

    def __init__(self, items: list[dict] | None = None, *, items_json: bytes | None = None,
                 messages: tuple[Message, ...] | None = None, messages_json: bytes = b"[]",
                 open_calls: bool = False) -> None:
        self._items = items
        self._json = items_json
        # the chat messages of the items (validated) and their JSON; None where not known (a context read from
        # the store, or one whose messages could not be made here): a model call then converts the items whole
        self.messages = messages
        self.messages_json = messages_json
        self.open_calls = open_calls  # the last message is a call-only assistant turn (a call would merge into it)

    @classmethod
    def none(cls) -> "Context":
        return cls([], messages=())

    @property
    def items(self) -> list[dict]:
        if self._items is None:
            self._items = orjson.loads(self._json) if self._json else []
        return self._items

    @property
    def items_json(self) -> bytes:
        if self._json is None:
            self._json = orjson.dumps(self._items or [])
        return self._json

    @property
    def empty(self) -> bool:
        return not self._items if self._json is None else self._json == b"[]"

    def follows(self, items: list[dict]) -> bool:
        """Whether the chat messages of `items` follow this context's as they are: its messages are known, and
        `items` do not start with a function call that would join its last (call-only) turn."""
        return self.messages is not None and not (self.open_calls and items and items[0].get("type") in _CALLS)

    def fresh(self) -> "Context":
        """A copy for one request (its items are parsed for it alone; the messages are shared, never changed)."""
        return Context(items_json=self.items_json, messages=self.messages, messages_json=self.messages_json,
                       open_calls=self.open_calls)

    def then(self, items: list[dict]) -> "Context":
        """This context followed by `items` (a finished response's input and output): where a response that
        continues it starts. Its messages are made here, once, for every turn after."""
        items_json = _joined(self.items_json, orjson.dumps(items))
        if self.follows(items):
            base, base_json, new = self.messages, self.messages_json, to_chat_messages(items, None)
        else:  # messages not known, or a call that joins the last turn: convert the whole context
            base, base_json, new = (), b"[]", to_chat_messages(self.items + items, None)
        new_json = orjson.dumps(new)
        try:
            messages = base + tuple(_MESSAGES.validate_json(new_json))
        except ValidationError:  # a model call of this context will say what is wrong with it
            return Context(items_json=items_json)
        last = messages[-1] if messages else None
        open_calls = bool(last is not None and last.role == "assistant" and last.tool_calls and not last.content)
        return Context(items_json=items_json, messages=messages, messages_json=_joined(base_json, new_json),
                       open_calls=open_calls)

    @property
    def size(self) -> int:
        return len(self.items_json) + len(self.messages_json)


def _joined(first: bytes, second: bytes) -> bytes:
    """Two JSON arrays as one."""
    if first == b"[]":
        return second
    if second == b"[]":
        return first
    return first[:-1] + b"," + second[1:]
