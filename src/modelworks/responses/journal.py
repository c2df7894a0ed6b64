"""Finished responses on their way to the store: answered once written to this process's write-ahead log, stored
in batches every `interval` (see modelworks.store.wal), as usage records are.

A response is written to the log (one line, with the lines of the other requests that finished in the same turn
of the event loop) before its answer goes out, so a killed process loses none: its log is replayed into the store
at the next start. Until its batch is committed, this process answers for it from memory (`get`, `items`); a
replica that is asked for it in that window (a few tens of milliseconds) waits for it a moment (see
`ResponsesService`). Responses that join a conversation or run in the background are written directly instead:
the conversation's next turn, or a poll on another replica, must find them at once.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import orjson

from modelworks.store.wal import WriteAheadLog


class ResponseJournal:
    def __init__(self, store, directory: Path, interval: float = 0.05) -> None:
        self.store = store
        self.wal = WriteAheadLog(directory, self._insert, interval, what="responses", stored=self._stored)
        self._unflushed: dict[str, tuple[str, dict, list[dict], list[dict]]] = {}
        self._order: deque[str] = deque()  # the ids of the log's pending lines, in their order
        self._deleted: set[str] = set()

    def open(self) -> None:
        """Replay what a previous process left (before serving)."""
        self.wal.open()

    def start(self) -> None:
        self.wal.start()

    async def close(self) -> None:
        await self.wal.close()

    def append(self, project: str, body: dict, inputs: list[dict], outputs: list[dict]):
        """Log a finished response; returns what to wait for before answering (None: nothing to wait for) and
        the size of its line in bytes."""
        self._unflushed[body["id"]] = (project, body, inputs, outputs)
        self._order.append(body["id"])
        self.wal.append([project, body, inputs, outputs, None])
        return self.wal.written(), len(self.wal.pending[-1])

    def get(self, project: str, response_id: str) -> dict | None:
        entry = self._unflushed.get(response_id)
        return entry[1] if entry is not None and entry[0] == project else None

    def input_items(self, project: str, response_id: str) -> list[dict] | None:
        entry = self._unflushed.get(response_id)
        return entry[2] if entry is not None and entry[0] == project else None

    async def forget(self, project: str, response_id: str) -> bool:
        """Before a delete: a response still on its way is dropped from the way, and a batch that holds it is
        committed first (so the delete that follows finds it). True when it was here."""
        entry = self._unflushed.get(response_id)
        if entry is None or entry[0] != project:
            return False
        self._deleted.add(response_id)
        self._unflushed.pop(response_id, None)
        await self.wal.flush()
        return True

    def _insert(self, lines: list[bytes]) -> None:  # a worker thread
        records = [tuple(record) for record in map(orjson.loads, lines)]
        self.store.insert_finished([r for r in records if r[1]["id"] not in self._deleted])

    def _stored(self, lines: list[bytes]) -> None:
        """The log's first `len(lines)` pending lines are committed (a flush takes them all, in order)."""
        for _ in lines:
            response_id = self._order.popleft()
            self._unflushed.pop(response_id, None)
            self._deleted.discard(response_id)
