"""What a response continues: the items of the responses before it (`previous_response_id`) or of its
conversation.

A context that comes from this process's memory (`RecentResponses`) also carries the chat messages its items
make, validated already, with their JSON: a response continuing it converts and validates only the messages of
its own input and output, and its model call's body is the context's JSON with those spliced in (byte for byte
what converting the whole context would give). Converting and validating a 10-turn chain whole cost more than a
chat completion's own request parsing; it grew with every turn.

Items are kept as JSON until something reads them (truncation, MCP tools, a model call that cannot use the
messages): bytes, not dicts, so that a few thousand remembered contexts are not a million objects for the garbage
collector to walk. A finished response's next context (`then`) gets its messages when first asked, or by
`settle`, which the service calls once the answer has gone out, off the request's time.
"""

from __future__ import annotations

import orjson
from pydantic import TypeAdapter, ValidationError

from modelworks.protocol.requests import Message
from modelworks.responses.items import to_chat_messages

MESSAGES = TypeAdapter(list[Message])
_CALLS = ("function_call", "mcp_call")
_SPOKEN = ("message", "function_call", "mcp_call", "function_call_output")  # the items that make chat messages
LARGE = 32 * 1024  # a context whose messages are made on the event loop is smaller (as requests parsed on it)


class Context:
    __slots__ = ("_items", "_json", "_messages", "_messages_json", "_open_calls", "_pending")

    def __init__(self, items: list[dict] | None = None, *, items_json: bytes | None = None,
                 messages: tuple[Message, ...] | None = None, messages_json: bytes = b"[]",
                 open_calls: bool = False) -> None:
        self._items = items
        self._json = items_json
        # the chat messages of the items (validated) and their JSON; None where not known (a context read from
        # the store, or one whose messages could not be made here): a model call then converts the items whole
        self._messages = messages
        self._messages_json = messages_json
        self._open_calls = open_calls  # the last message is a call-only assistant turn (a call would join it)
        self._pending: tuple[Context, list[dict]] | None = None  # (before, items): messages still to make

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

    @property
    def messages(self) -> tuple[Message, ...] | None:
        self.settle()
        return self._messages

    @property
    def messages_json(self) -> bytes:
        self.settle()
        return self._messages_json

    def follows(self, items: list[dict]) -> bool:
        """Whether the chat messages of `items` follow this context's as they are: its messages are known, and
        the first of `items` that makes a message (listings, approvals and reasoning make none) is not a
        function call that would join the context's last (call-only) turn."""
        self.settle()
        if self._messages is None:
            return False
        if not self._open_calls:
            return True
        first = next((i.get("type") for i in items if i.get("type") in _SPOKEN), None)
        return first not in _CALLS

    def fresh(self) -> "Context":
        """A copy for one request (its items are parsed for it alone; the messages are shared, never changed)."""
        self.settle()
        return Context(items_json=self.items_json, messages=self._messages, messages_json=self._messages_json,
                       open_calls=self._open_calls)

    def then(self, items: list[dict]) -> "Context":
        """This context followed by `items` (a finished response's input and output): where a response that
        continues it starts. Its messages are made when first needed (or by `settle`)."""
        after = Context(items_json=_joined(self.items_json, orjson.dumps(items)))
        after._pending = (self, items)
        return after

    def settle(self) -> None:
        """Make the messages of a context made by `then`, once."""
        if self._pending is None:
            return
        before, items = self._pending
        self._pending = None
        if before.follows(items):
            base, base_json, new = before._messages, before._messages_json, to_chat_messages(items, None)
        elif len(self.items_json) < LARGE:  # not known, or a call joins the last turn: convert the whole context
            base, base_json, new = (), b"[]", to_chat_messages(before.items + items, None)
        else:  # too large to convert here, on the event loop: a model call converts it (off the loop)
            return
        new_json = orjson.dumps(new)
        try:
            self._messages = base + tuple(MESSAGES.validate_json(new_json))
        except ValidationError:  # a model call of this context will say what is wrong with it
            return
        last = self._messages[-1] if self._messages else None
        self._open_calls = bool(last is not None and last.role == "assistant" and last.tool_calls
                                and not last.content)
        self._messages_json = _joined(base_json, new_json)

    @property
    def size(self) -> int:
        """About the bytes it holds (its messages' JSON is about as long as its items')."""
        return 2 * len(self.items_json)


def _joined(first: bytes, second: bytes) -> bytes:
    """Two JSON arrays as one."""
    if first == b"[]":
        return second
    if second == b"[]":
        return first
    return first[:-1] + b"," + second[1:]
