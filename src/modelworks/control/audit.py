"""The audit trail: append-only, hash-chained. Every admin action and every failed authentication.

Each entry's hash covers its sequence number, time, actor, project, action, target, outcome, detail and the
previous entry's hash, so `verify` finds an edited, deleted or reordered entry. Sequence numbers are given
explicitly: two replicas appending at once collide on the primary key and the loser retries (PostgreSQL also
takes an advisory lock, so it rarely has to). Details never hold a key or a secret: values that look like one
are redacted before hashing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelworks.store.db import Database
from modelworks.store.schema import AuditEntry

GENESIS = "0" * 64
_SECRETISH = re.compile(r"(mw-|sk-)[A-Za-z0-9_\-]{8,}")
_SECRET_FIELDS = {"key", "api_key", "secret", "password", "token", "authorization"}
_AUDIT_LOCK = 7314160


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[redacted]" if k.lower() in _SECRET_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _SECRETISH.sub("[redacted]", value)
    return value


def canonical(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(seq: int, at: str, actor: str | None, project_id: str | None, action: str, target: str | None,
               outcome: str, detail: str, prev_hash: str) -> str:
    material = json.dumps([seq, at, actor, project_id, action, target, outcome, detail, prev_hash],
                          separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def _at(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Event:
    action: str
    actor: str | None = None
    project_id: str | None = None
    target: str | None = None
    outcome: str = "ok"
    detail: dict | None = None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    problem: str | None = None
    seq: int | None = None


def view(row: AuditEntry) -> dict[str, Any]:
    return {"seq": row.seq, "at": _at(row.at), "actor": row.actor, "project_id": row.project_id,
            "action": row.action, "target": row.target, "outcome": row.outcome, "detail": json.loads(row.detail),
            "prev_hash": row.prev_hash, "hash": row.hash}


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, events: list[Event]) -> None:
        """Append events in order, as one transaction."""
        if not events:
            return
        for attempt in range(20):
            try:
                with self.db.session() as s:
                    if s.bind.dialect.name == "postgresql":
                        s.execute(select(_advisory_lock()))
                    last = s.scalar(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))
                    seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
                    for event in events:
                        seq += 1
                        at = datetime.now(timezone.utc)
                        detail = canonical(_redact(event.detail or {}))
                        target = _redact(event.target) if event.target else None
                        digest = entry_hash(seq, _at(at), event.actor, event.project_id, event.action, target,
                                            event.outcome, detail, prev)
                        s.add(AuditEntry(seq=seq, at=at, actor=event.actor, project_id=event.project_id,
                                         action=event.action, target=target, outcome=event.outcome, detail=detail,
                                         prev_hash=prev, hash=digest))
                        prev = digest
                return
            except IntegrityError:
                if attempt == 19:
                    raise

    def entries(self, *, project_id: str | None = None, after: int = 0, limit: int | None = None) -> list[dict]:
        with self.db.session() as s:
            query = select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq)
            if project_id is not None:
                query = query.where(AuditEntry.project_id == project_id)
            if limit is not None:
                query = query.limit(limit)
            return [view(row) for row in s.scalars(query)]

    def page(self, *, project_id: str | None = None, before: int | None = None, limit: int = 50,
             action: str | None = None, actor: str | None = None, outcome: str | None = None) -> list[dict]:
        """The newest entries first, `before` a sequence number (a page's last, for the next page), filtered by
        action (a prefix: "key." for every key action), actor and outcome."""
        with self.db.session() as s:
            query = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
            if before is not None:
                query = query.where(AuditEntry.seq < before)
            if project_id is not None:
                query = query.where(AuditEntry.project_id == project_id)
            if action:
                query = query.where(AuditEntry.action.startswith(action, autoescape=True))
            if actor:
                query = query.where(AuditEntry.actor == actor)
            if outcome:
                query = query.where(AuditEntry.outcome == outcome)
            return [view(row) for row in s.scalars(query)]

    def _rows(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while True:
            with self.db.session() as s:
                rows = list(s.scalars(select(AuditEntry).where(AuditEntry.seq > after)
                                      .order_by(AuditEntry.seq).limit(batch)))
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def export_jsonl(self) -> Iterator[str]:
        for row in self._rows():
            yield json.dumps(view(row), separators=(",", ":")) + "\n"

    def verify(self) -> Verdict:
        expected_seq, prev, count = 1, GENESIS, 0
        for row in self._rows():
            count += 1
            if row.seq != expected_seq:
                return Verdict(False, count, f"entry {expected_seq} is missing (entry {row.seq} comes next)",
                               expected_seq)
            if row.prev_hash != prev:
                return Verdict(False, count, "the chain is broken: an entry before it was changed, removed or moved",
                               row.seq)
            digest = entry_hash(row.seq, _at(row.at), row.actor, row.project_id, row.action, row.target,
                                row.outcome, row.detail, row.prev_hash)
            if digest != row.hash:
                return Verdict(False, count, "the entry's content does not match its hash (edited)", row.seq)
            prev = row.hash
            expected_seq += 1
        return Verdict(True, count)


def _advisory_lock():
    from sqlalchemy import func

    return func.pg_advisory_xact_lock(_AUDIT_LOCK)
