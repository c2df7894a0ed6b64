"""Portal sessions: a key is exchanged once for a session; the browser then holds only a random session id.

The id (256 random bits) travels in an HttpOnly, SameSite=Strict cookie; the store keeps its SHA-256 and the id
of the key that opened it, never the key. Each request looks the session up with its key, so a session ends when
it expires (`hours` after sign-in), when it sits idle for `idle_minutes`, when it is revoked (sign-out), or when
its key is revoked or expires, or its project is archived. A session's CSRF token goes in every form and
state-changing call of its pages (see `security`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update

from modelworks.control.keys import KeyService, key_hash, now
from modelworks.control.principal import Principal
from modelworks.store.db import Database
from modelworks.store.schema import PortalSession

SEEN_EVERY = timedelta(seconds=60)
USED_FORMS_KEPT = 32  # the last-seen time is written at most this often per session


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    csrf: str
    principal: Principal
    created_at: datetime
    expires_at: datetime


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class SessionService:
    def __init__(self, db: Database, keys: KeyService, hours: float = 8.0, idle_minutes: float = 30.0) -> None:
        self.db = db
        self.keys = keys
        self.lifetime = timedelta(hours=hours)
        self.idle = timedelta(minutes=idle_minutes)

    def open(self, key: str, user_agent: str = "") -> tuple[str, Session] | None:
        """Exchange a key for a new session: (the session id for the cookie, the session), or None when the key
        is unknown, revoked or expired."""
        principal = self.keys.lookup(key_hash(key))
        if principal is None:
            return None
        session_id = secrets.token_urlsafe(32)
        at = now()
        expires = at + self.lifetime
        if principal.expires_at is not None:
            expires = min(expires, _aware(principal.expires_at))
        row = PortalSession(id_hash=session_hash(session_id), key_id=principal.key_id, csrf=secrets.token_urlsafe(32),
                            created_at=at, seen_at=at, expires_at=expires, user_agent=user_agent[:200],
                            used_forms="[]")
        with self.db.session() as s:
            s.add(row)
        return session_id, Session(row.id_hash, row.csrf, principal, at, expires)

    def get(self, session_id: str) -> Session | None:
        """The live session of this id with its key's principal, or None (unknown, ended, or its key no longer
        valid). Marks it seen."""
        digest = session_hash(session_id)
        at = now()
        with self.db.session() as s:
            row = s.get(PortalSession, digest)
            if row is None or row.revoked_at is not None:
                return None
            seen = _aware(row.seen_at)
            if _aware(row.expires_at) <= at or seen + self.idle <= at:
                return None
            if at - seen >= SEEN_EVERY:
                row.seen_at = at
            key_digest = self.keys.digest_of(row.key_id)
            created, expires, csrf = _aware(row.created_at), _aware(row.expires_at), row.csrf
        principal = self.keys.lookup(key_digest) if key_digest is not None else None
        if principal is None:
            return None
        return Session(digest, csrf, principal, created, expires)

    def use_form(self, id_hash: str, token: str) -> bool:
        """Mark a one-time form token used: False when this session used it already (the form was sent again)."""
        with self.db.session() as s:
            row = s.get(PortalSession, id_hash, with_for_update=True)
            if row is None:
                return False
            used = json.loads(row.used_forms or "[]")
            if token in used:
                return False
            row.used_forms = json.dumps((used + [token])[-USED_FORMS_KEPT:])
            return True

    def revoke(self, session_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(PortalSession).where(PortalSession.id_hash == session_hash(session_id),
                                                  PortalSession.revoked_at.is_(None)).values(revoked_at=now()))

    def revoke_key(self, key_id: str) -> int:
        """End every session opened with a key (its key was revoked, say); how many were live."""
        with self.db.session() as s:
            return s.execute(update(PortalSession).where(PortalSession.key_id == key_id,
                                                         PortalSession.revoked_at.is_(None))
                             .values(revoked_at=now())).rowcount

    def live(self, key_id: str) -> list[dict]:
        """The live sessions opened with a key, newest first (no ids: only their times and browsers)."""
        at = now()
        with self.db.session() as s:
            rows = s.scalars(select(PortalSession).where(PortalSession.key_id == key_id,
                                                         PortalSession.revoked_at.is_(None),
                                                         PortalSession.expires_at > at)
                             .order_by(PortalSession.created_at.desc())).all()
            return [{"created_at": _aware(r.created_at), "seen_at": _aware(r.seen_at),
                     "expires_at": _aware(r.expires_at), "user_agent": r.user_agent} for r in rows
                    if _aware(r.seen_at) + self.idle > at]

    def purge(self) -> int:
        """Delete ended sessions (expired, idle past their timeout, or revoked a day ago)."""
        at = now()
        with self.db.session() as s:
            return s.execute(delete(PortalSession).where(
                (PortalSession.expires_at <= at) | (PortalSession.seen_at <= at - self.idle)
                | (PortalSession.revoked_at <= at - timedelta(days=1)))).rowcount
