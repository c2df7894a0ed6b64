"""Recently finished responses of this process, with the whole context a response continuing them starts from
(`Context`: its items as JSON, its chat messages validated): a `previous_response_id` chain that stays on one
replica is read from memory, not the store, and its messages are not converted again.

Bounded by entries and by the bytes held (an entry holds its whole context's JSON; its messages are shared with
the entry it continues). An entry lives `ttl` seconds: a response deleted through another replica is continued
here for at most that long (one deleted here is forgotten at once). A miss reads the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from modelworks.responses.context import Context


class RecentResponses:
    def __init__(self, entries: int = 4096, size: int = 128 * 1024 * 1024, ttl: float = 10.0) -> None:
        self.entries = entries
        self.size = size
        self.ttl = ttl
        self._held = 0
        self._data: OrderedDict[str, tuple[str, str, float, Context, int]] = OrderedDict()

    def put(self, project: str, response_id: str, model: str, context: Context) -> bool:
        """Remember a finished response: `context` is where a response continuing it starts. False when it is
        too large to keep."""
        size = context.size
        if size > self.size // 16:
            return False
        self.forget(response_id)
        self._data[response_id] = (project, model, time.monotonic() + self.ttl, context, size)
        self._held += size
        now = time.monotonic()
        while self._data and (len(self._data) > self.entries or self._held > self.size
                              or next(iter(self._data.values()))[2] < now):  # the oldest first, expired too
            _, old = self._data.popitem(last=False)
            self._held -= old[4]
        return True

    def get(self, project: str, response_id: str) -> tuple[str, Context] | None:
        """(model, context) of a response of this project, or None. The context is the caller's own."""
        entry = self._data.get(response_id)
        if entry is None:
            return None
        owner, model, expires, context, _ = entry
        if expires < time.monotonic():
            self.forget(response_id)
            return None
        if owner != project:
            return None
        return model, context.fresh()

    def forget(self, response_id: str) -> None:
        entry = self._data.pop(response_id, None)
        if entry is not None:
            self._held -= entry[4]
