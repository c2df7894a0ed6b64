"""Stored responses, their items and conversations, in the control-plane store (SQLite or PostgreSQL).

Everything is scoped to a project: an id from another project reads as absent. Methods are synchronous (the
service runs them on a worker thread). A response's context — the items of every response it chains back to
through `previous_response_id` — is read in one recursive query, so a long chain costs one round trip.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import NamedTuple

import orjson
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from modelworks.store.db import Database
from modelworks.store.schema import (
    RUNNING, ConversationItemRow, ConversationRow, ResponseEventRow, ResponseRow,
)

_CHAIN = text("""
WITH RECURSIVE chain(id, prev, depth) AS (
    SELECT id, previous_response_id, 0 FROM responses WHERE id = :id AND project_id = :project AND expires_at > :now
    UNION ALL
    SELECT r.id, r.previous_response_id, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.prev
    WHERE r.project_id = :project AND c.depth < :limit
)
SELECT r.input_items, r.body FROM chain c JOIN responses r ON r.id = c.id
ORDER BY c.depth DESC
""")
MAX_CHAIN = 10_000
CHUNK = 256  # rows a statement of `insert_records` (13 columns: 3,328 parameters, within either database's bound)
_COLUMNS = ("id", "project_id", "created_at", "updated_at", "expires_at", "status", "previous_response_id",
            "conversation_id", "background", "owner", "cancel_requested", "body", "input_items")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _live(row, project_id: str) -> bool:
    """A row of this project that has not expired (an expired one reads as absent until it is purged)."""
    return row is not None and row.project_id == project_id and _aware(row.expires_at) > _now()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class Finished(NamedTuple):
    """A finished response as it is inserted: what its row needs, its body's and input items' JSON."""

    id: str
    project: str
    created_at: int
    status: str
    previous: str | None
    conversation: str | None
    body: bytes  # its output items are in it
    inputs: list[bytes]

    @classmethod
    def of(cls, project: str, body: dict, body_json: bytes, inputs: list[bytes],
           conversation: str | None = None) -> "Finished":
        return cls(body["id"], project, body["created_at"], body["status"], body.get("previous_response_id"),
                   conversation, body_json, inputs)


class ResponseStore:
    def __init__(self, db: Database, retention: timedelta) -> None:
        self.db = db
        self.retention = retention

    # -- responses --------------------------------------------------------------------------------------------

    def insert_finished(self, batch: list[tuple[str, dict, list[dict], list[dict], str | None]]) -> None:
        """Insert finished responses that were never stored before — (project, body, input items, output items,
        conversation id) each — in one transaction (see `insert_records`)."""
        records, turns = [], []
        for project, body, inputs, outputs, conversation in batch:
            records.append(Finished.of(project, body, orjson.dumps(body), [orjson.dumps(i) for i in inputs],
                                       conversation))
            if conversation is not None:
                turns.append((project, conversation, inputs + outputs))
        self.insert_records(records, turns)

    def insert_lines(self, lines: list[bytes]) -> None:
        """`insert_finished` for records as the journal's JSON lines (a replay)."""
        self.insert_finished([tuple(record) for record in map(orjson.loads, lines)])

    def insert_records(self, records: list["Finished"], turns: list[tuple[str, str, list[dict]]] = ()) -> None:
        """Insert finished responses in one transaction, idempotently (a replayed one is skipped); `turns`
        (project, conversation id, items) are appended to their conversations in the same transaction.

        This runs on a thread beside the event loop, so it does little in Python: the rows are made from JSON
        made already, and go in as multi-row INSERTs of up to `CHUNK` rows. An `executemany` gives the
        interpreter lock up for every row and waits to get it back (up to the switch interval, 5 ms, while the
        loop is busy): a batch of a few thousand crawled, and its records, alive all that time, made the
        garbage collector's full passes slow. (Unpacking one JSON document in the database, as usage records
        do, cost three times the CPU here: responses are large.) On SQLite, foreign keys are not checked for
        these inserts: each item's response is inserted just before it, in the same statement batch (or is
        there already), and the check was a quarter of the insert's cost (a conversation's turn is checked: its
        conversation may have been deleted meanwhile)."""
        if not records:
            return
        now = _now()
        sqlite = self.db.engine.dialect.name == "sqlite"
        stamp, expires = _db_time(now, sqlite), _db_time(now + self.retention, sqlite)
        rows, times = [], {}
        for r in records:
            created = times.get(r.created_at)
            if created is None:  # a batch's responses were mostly made in the same few seconds
                created = times[r.created_at] = _db_time(datetime.fromtimestamp(r.created_at, timezone.utc), sqlite)
            rows.append((r.id, r.project, created, stamp, expires, r.status, r.previous, r.conversation, False, None,
                         False, r.body.decode(), (b"[" + b",".join(r.inputs) + b"]").decode()))
        mark = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"
        unchecked = sqlite and not turns  # a conversation's turn is checked (its conversation may be gone)
        with self.db.engine.connect() as conn:
            if unchecked:  # outside a transaction (the driver begins one at the first INSERT)
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            try:
                row = "(" + ", ".join([mark] * len(_COLUMNS)) + ")"
                for start in range(0, len(rows), CHUNK):
                    chunk = rows[start:start + CHUNK]
                    conn.exec_driver_sql(f"INSERT INTO responses ({', '.join(_COLUMNS)}) VALUES "
                                         + ", ".join([row] * len(chunk)) + " ON CONFLICT (id) DO NOTHING",
                                         tuple(chain.from_iterable(chunk)))
                if turns:  # in the same transaction: a turn is in its conversation or not stored at all
                    with Session(bind=conn) as s:
                        for project, conversation, appended in turns:
                            self._append_conversation(s, project, conversation, appended, now)
                        s.flush()
                conn.commit()
            finally:
                if unchecked:
                    try:
                        conn.rollback()  # nothing, after a commit; the pragma is ignored inside a transaction
                        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                        conn.commit()
                    except Exception:
                        conn.invalidate()  # never back to the pool with foreign keys off
                        raise

    def save(self, project_id: str, body: dict, *, input_items: list[dict] | None, output_items: list[dict],
             conversation_id: str | None, conversation_items: list[dict] | None = None,
             owner: str | None = None, events: list[dict] | None = None) -> bool:
        """Insert or replace a response with its items (input items only when given: they are written once)."""
        now = _now()
        with self.db.session() as s:
            row = s.get(ResponseRow, body["id"])
            if row is None:
                row = ResponseRow(id=body["id"], project_id=project_id,
                                  created_at=datetime.fromtimestamp(body["created_at"], timezone.utc),
                                  expires_at=now + self.retention, background=bool(body.get("background")),
                                  previous_response_id=body.get("previous_response_id"),
                                  conversation_id=conversation_id)
                s.add(row)
            elif row.status not in ("queued", "in_progress"):
                return False  # ended already: a late write of a running state must not bring it back
            row.updated_at = now
            row.status = body["status"]
            row.owner = owner
            row.body = orjson.dumps(body).decode()  # its output items are in it
            if input_items is not None:
                row.input_items = orjson.dumps(input_items).decode()
            s.flush()
            if conversation_items:
                self._append_conversation(s, project_id, conversation_id, conversation_items, now)
            if events:
                stored = s.scalar(select(func.max(ResponseEventRow.seq)).where(
                    ResponseEventRow.response_id == row.id))
                for event in events:
                    if stored is None or event["sequence_number"] > stored:
                        s.add(ResponseEventRow(response_id=row.id, seq=event["sequence_number"],
                                               body=orjson.dumps(event).decode()))
            return bool(row.cancel_requested)

    def get(self, project_id: str, response_id: str) -> dict | None:
        with self.db.session() as s:
            row = s.get(ResponseRow, response_id)
            if not _live(row, project_id):
                return None
            return orjson.loads(row.body)

    def delete(self, project_id: str, response_id: str) -> bool:
        with self.db.session() as s:
            row = s.get(ResponseRow, response_id)
            if row is None or row.project_id != project_id:
                return False
            s.execute(delete(ResponseEventRow).where(ResponseEventRow.response_id == response_id))
            s.delete(row)
            return True

    def events(self, project_id: str, response_id: str, after: int) -> tuple[list[dict], str] | None:
        """A background response's stored events after a sequence number, and its status."""
        with self.db.session() as s:
            row = s.get(ResponseRow, response_id)
            if not _live(row, project_id):
                return None
            bodies = s.scalars(select(ResponseEventRow.body).where(ResponseEventRow.response_id == response_id,
                                                                   ResponseEventRow.seq > after)
                               .order_by(ResponseEventRow.seq)).all()
            return [orjson.loads(b) for b in bodies], row.status

    def request_cancel(self, project_id: str, response_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(ResponseRow).where(ResponseRow.id == response_id, ResponseRow.project_id == project_id)
                      .values(cancel_requested=True))

    def fail_stale(self, older_than: timedelta) -> list[str]:
        """Responses still queued or in progress whose runner has not written for a while (its process
        stopped): they end failed, with a reason, and their stream gets its terminal event."""
        limit = _now() - older_than
        ended = []
        with self.db.session() as s:
            rows = s.scalars(select(ResponseRow).where(text(RUNNING),  # as written: the partial index's own
                                                       ResponseRow.updated_at < limit).limit(500)).all()
            for row in rows:
                body = orjson.loads(row.body)
                body.update(status="failed", error={
                    "code": "server_error", "message": "The server running this response stopped before it "
                                                       "finished; send the request again."})
                body.pop("usage", None)
                last = s.scalar(select(func.max(ResponseEventRow.seq)).where(ResponseEventRow.response_id == row.id))
                if last is not None:
                    s.add(ResponseEventRow(response_id=row.id, seq=last + 1, body=orjson.dumps(
                        {"type": "response.failed", "response": body, "sequence_number": last + 1}).decode()))
                row.status, row.owner, row.updated_at = "failed", None, _now()
                row.body = orjson.dumps(body).decode()
                ended.append(row.id)
        return ended

    def context(self, project_id: str, response_id: str) -> list[dict] | None:
        """Every item that a response continuing `response_id` sees, oldest first; None if it is not stored."""
        now = _db_time(_now(), self.db.engine.dialect.name == "sqlite")
        with self.db.engine.connect() as conn:
            rows = conn.execute(_CHAIN, {"id": response_id, "project": project_id, "limit": MAX_CHAIN,
                                         "now": now}).all()
        if not rows:
            return None
        items: list[dict] = []
        for inputs, body in rows:
            items.extend(orjson.loads(inputs))
            items.extend(orjson.loads(body).get("output") or [])
        return items

    def input_items(self, project_id: str, response_id: str) -> list[dict] | None:
        with self.db.session() as s:
            row = s.get(ResponseRow, response_id)
            if not _live(row, project_id):
                return None
            return orjson.loads(row.input_items)

    def find_item(self, project_id: str, item_id: str) -> dict | None:
        """A stored item by its id (an `item_reference`): from a response's items or a conversation's."""
        with self.db.session() as s:
            body = s.scalar(select(ConversationItemRow.body).where(ConversationItemRow.id == item_id,
                                                                   ConversationItemRow.project_id == project_id))
            if body is not None:
                return orjson.loads(body)
            like = s.execute(select(ResponseRow.input_items, ResponseRow.body).where(
                ResponseRow.project_id == project_id,
                ResponseRow.input_items.contains(item_id) | ResponseRow.body.contains(item_id)).limit(50)).all()
        for inputs, response in like:
            for item in orjson.loads(inputs) + (orjson.loads(response).get("output") or []):
                if isinstance(item, dict) and item.get("id") == item_id:
                    return item
        return None

    def purge(self) -> int:
        """Delete what outlived the retention period; returns how many responses and conversations went."""
        now = _now()
        with self.db.session() as s:
            old = s.scalars(select(ResponseRow.id).where(ResponseRow.expires_at <= now).limit(1000)).all()
            if old:
                s.execute(delete(ResponseEventRow).where(ResponseEventRow.response_id.in_(old)))
                s.execute(delete(ResponseRow).where(ResponseRow.id.in_(old)))
            gone = s.scalars(select(ConversationRow.id).where(ConversationRow.expires_at <= now).limit(1000)).all()
            if gone:
                s.execute(delete(ConversationItemRow).where(ConversationItemRow.conversation_id.in_(gone)))
                s.execute(delete(ConversationRow).where(ConversationRow.id.in_(gone)))
        return len(old) + len(gone)

    # -- conversations ----------------------------------------------------------------------------------------

    def create_conversation(self, project_id: str, conversation_id: str, metadata: dict,
                            items: list[dict]) -> dict:
        now = _now()
        with self.db.session() as s:
            row = ConversationRow(id=conversation_id, project_id=project_id, created_at=now, updated_at=now,
                                  expires_at=now + self.retention, metadata_json=orjson.dumps(metadata).decode())
            s.add(row)
            s.flush()
            self._append_conversation(s, project_id, conversation_id, items, now)
            return _conversation(row)

    def conversation(self, project_id: str, conversation_id: str) -> dict | None:
        with self.db.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if not _live(row, project_id):
                return None
            return _conversation(row)

    def update_conversation(self, project_id: str, conversation_id: str, metadata: dict) -> dict | None:
        with self.db.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if not _live(row, project_id):
                return None
            row.metadata_json = orjson.dumps(metadata).decode()
            row.updated_at = _now()
            row.expires_at = row.updated_at + self.retention
            return _conversation(row)

    def delete_conversation(self, project_id: str, conversation_id: str) -> bool:
        with self.db.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if row is None or row.project_id != project_id:
                return False
            s.execute(delete(ConversationItemRow).where(ConversationItemRow.conversation_id == conversation_id))
            s.delete(row)
            return True

    def add_conversation_items(self, project_id: str, conversation_id: str, items: list[dict]) -> bool:
        with self.db.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if not _live(row, project_id):
                return False
            self._append_conversation(s, project_id, conversation_id, items, _now())
            return True

    def _append_conversation(self, s, project_id: str, conversation_id: str, items: list[dict],
                             now: datetime) -> None:
        taken = set(s.scalars(select(ConversationItemRow.id).where(ConversationItemRow.id.in_(
            [item["id"] for item in items]))).all()) if items else set()
        for item in items:
            if item["id"] in taken:  # an item already stored (a reference to it, or a repeated id): a copy
                item = {**item, "id": f"{item['id'].split('_', 1)[0][:16]}_{uuid.uuid4().hex}"}
            taken.add(item["id"])
            s.add(ConversationItemRow(id=item["id"], conversation_id=conversation_id, project_id=project_id,
                                      created_at=now, body=orjson.dumps(item).decode()))
        s.execute(update(ConversationRow).where(ConversationRow.id == conversation_id)
                  .values(updated_at=now, expires_at=now + self.retention))

    def conversation_items(self, project_id: str, conversation_id: str, *, after: str | None = None,
                           limit: int | None = None, descending: bool = False) -> list[dict] | None:
        """A conversation's items in order (None if there is no such conversation); `after` an item id."""
        with self.db.session() as s:
            row = s.get(ConversationRow, conversation_id)
            if not _live(row, project_id):
                return None
            query = select(ConversationItemRow.body).where(ConversationItemRow.conversation_id == conversation_id)
            if after is not None:
                seq = s.scalar(select(ConversationItemRow.seq).where(ConversationItemRow.id == after,
                                                                     ConversationItemRow.conversation_id == conversation_id))
                if seq is not None:
                    query = query.where(ConversationItemRow.seq < seq if descending else ConversationItemRow.seq > seq)
            query = query.order_by(ConversationItemRow.seq.desc() if descending else ConversationItemRow.seq)
            if limit is not None:
                query = query.limit(limit)
            return [orjson.loads(b) for b in s.scalars(query).all()]

    def conversation_item(self, project_id: str, conversation_id: str, item_id: str) -> dict | None:
        with self.db.session() as s:
            if not _live(s.get(ConversationRow, conversation_id), project_id):
                return None
            body = s.scalar(select(ConversationItemRow.body).where(
                ConversationItemRow.id == item_id, ConversationItemRow.conversation_id == conversation_id,
                ConversationItemRow.project_id == project_id))
        return orjson.loads(body) if body is not None else None

    def delete_conversation_item(self, project_id: str, conversation_id: str, item_id: str) -> bool:
        with self.db.session() as s:
            if not _live(s.get(ConversationRow, conversation_id), project_id):
                return False
            result = s.execute(delete(ConversationItemRow).where(
                ConversationItemRow.id == item_id, ConversationItemRow.conversation_id == conversation_id,
                ConversationItemRow.project_id == project_id))
            return result.rowcount > 0


def _db_time(value: datetime, sqlite: bool):
    """A time as the driver takes it: an aware datetime for PostgreSQL; on SQLite, the text SQLAlchemy itself
    writes for a DateTime column (so the ORM reads it back)."""
    if not sqlite:
        return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _conversation(row: ConversationRow) -> dict:
    return {"id": row.id, "object": "conversation", "metadata": orjson.loads(row.metadata_json),
            "created_at": int(_aware(row.created_at).timestamp())}
