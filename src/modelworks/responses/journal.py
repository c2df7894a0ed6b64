"""Finished responses on their way to the store: answered once written to this process's write-ahead log, stored
in batches every `interval` (see modelworks.store.wal), as usage records are.

A response is written to the log (one line) before its answer goes out, so a killed process loses none: its log
is replayed into the store at the next start. Until its batch is committed, this process answers for it from
memory (`get`, `items`); a replica that is asked for it in that window (a few tens of milliseconds) waits for it
a moment (see `ResponsesService`). Responses that join a conversation or run in the background are written
directly instead: the conversation's next turn, or a poll on another replica, must find them at once.

The line is put together from the JSON of the body and of each item, and those pieces (bytes) wait for the
batch with it: the batch's rows are made from them, with no parsing on the writer's thread (a thread beside the
event loop, holding the interpreter lock while it works in Python).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import orjson

from modelworks.responses.store import Finished
from modelworks.store.wal import WriteAheadLog


class ResponseJournal:
    def __init__(self, store, directory: Path, interval: float = 0.05) -> None:
        self.store = store
        self.wal = WriteAheadLog(directory, self._insert, interval, what="responses", stored=self._stored)
        # what is on its way: its log line and its rows to be (bytes: no objects for the garbage collector)
        self._unflushed: dict[str, tuple[str, bytes, Finished]] = {}
        self._order: deque[str] = deque()  # the ids of the log's pending lines, in their order
        self._replaying = False

    def open(self) -> None:
        """Replay what a previous process left (before serving)."""
        self._replaying = True
        try:
            self.wal.open()
        finally:
            self._replaying = False

    def start(self) -> None:
        self.wal.start()

    async def close(self) -> None:
        await self.wal.close()

    def append(self, project: str, body: dict, inputs: list[dict], outputs: list[dict]) -> bytes:
        """Log a finished response (written when this returns); returns its body's JSON."""
        body_json = orjson.dumps(body)
        ins = [orjson.dumps(i) for i in inputs]
        # [project, body, inputs, outputs, conversation]: the outputs are in the body (an older line has them)
        line = b"".join((b"[", orjson.dumps(project), b",", body_json, b",[", b",".join(ins), b"],[],null]"))
        rid = body["id"]
        self._unflushed[rid] = (project, line, Finished.of(project, body, body_json, ins))
        self._order.append(rid)  # in step with the log's pending lines
        self.wal.write(line)
        return body_json

    def get(self, project: str, response_id: str) -> dict | None:
        record = self._record(project, response_id)
        return record[1] if record is not None else None

    def input_items(self, project: str, response_id: str) -> list[dict] | None:
        record = self._record(project, response_id)
        return record[2] if record is not None else None

    def _record(self, project: str, response_id: str) -> list | None:
        entry = self._unflushed.get(response_id)
        return orjson.loads(entry[1]) if entry is not None and entry[0] == project else None

    async def forget(self, project: str, response_id: str) -> bool:
        """Before a delete: a response still on its way is dropped from the way, and a batch that holds it is
        committed first (so the delete that follows finds it). True when it was here."""
        entry = self._unflushed.get(response_id)
        if entry is None or entry[0] != project:
            return False
        self._unflushed.pop(response_id, None)  # its line stays in the log; its rows are not inserted
        await self.wal.flush()
        return True

    def _insert(self, lines: list[bytes]) -> None:  # a worker thread
        if self._replaying:  # a previous process's lines
            self.store.insert_lines(lines)
            return
        # a flush takes every pending line, in order: they are the first len(lines) ids on the way
        ids = [self._order[i] for i in range(len(lines))]
        self.store.insert_records([entry[2] for entry in map(self._unflushed.get, ids) if entry is not None])

    def _stored(self, lines: list[bytes]) -> None:
        """The log's first `len(lines)` pending lines are committed (a flush takes them all, in order)."""
        for _ in lines:
            self._unflushed.pop(self._order.popleft(), None)
