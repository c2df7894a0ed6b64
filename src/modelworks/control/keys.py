"""API keys: generated with a recognisable prefix and 256 bits of entropy, shown once, stored as SHA-256.

A fast hash is the right one here: the keys are random, not passwords, so there is nothing to guess from a hash.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update

from modelworks.control.principal import ROLES, Principal
from modelworks.errors import Conflict, InvalidRequest, NotFound
from modelworks.store.db import Database
from modelworks.store.schema import ApiKey, Project

KEY_PREFIX = "mw-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(timezone.utc)



def utc(value: datetime) -> datetime:
    """An aware time in UTC, as the store keeps times (SQLite drops an offset, so it must be UTC already);
    a time without an offset is taken as UTC. ValueError when the conversion leaves datetime's range."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


def to_utc(value: datetime, param: str) -> datetime:
    """`utc`, with the request's 400 naming `param`."""
    try:
        return utc(value)
    except ValueError:
        raise InvalidRequest(f"'{param}' is out of range once converted to UTC.", param=param) from None


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once
    record: dict


def key_view(row: ApiKey) -> dict:
    """What the API shows of a key: never its hash."""
    return {"id": row.id, "project_id": row.project_id, "name": row.name, "role": row.role,
            "display": row.display + "...", "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
            "revoked_at": _iso(row.revoked_at), "last_used_at": _iso(row.last_used_at),
            "rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit}


def _iso(value: datetime | None) -> str | None:
    """A stored time in UTC (SQLite gives it back without an offset; PostgreSQL in the session's time zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc).isoformat()
    return value.astimezone(timezone.utc).isoformat()


class KeyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, project_id: str, role: str, name: str | None = None, *, expires_at: datetime | None = None,
               key: str | None = None, rpm_limit: int | None = None, tpm_limit: int | None = None) -> CreatedKey:
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        key = key or new_key()
        if expires_at is not None:
            expires_at = to_utc(expires_at, "expires_at")
        with self.db.session() as s:
            project = s.get(Project, project_id)
            if project is None:
                raise NotFound(f"No project '{project_id}'.", param="project_id")
            if project.status == "archived":
                raise Conflict(f"The project '{project_id}' is archived: it takes no new keys.",
                               param="project_id", code="project_archived")
            key_id = "key_" + uuid.uuid4().hex[:20]
            row = ApiKey(id=key_id, project_id=project_id, name=name or key_id, role=role,  # unnamed: its id
                         display=key[:10], hash=key_hash(key), created_at=now(), expires_at=expires_at,
                         rpm_limit=rpm_limit, tpm_limit=tpm_limit)
            s.add(row)
            s.flush()
            return CreatedKey(key=key, record=key_view(row))

    def lookup(self, digest: str) -> Principal | None:
        """The principal for a key hash, or None when unknown, revoked or expired."""
        with self.db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.hash == digest))
            if row is None or row.revoked_at is not None:
                return None
            expires = row.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=timezone.utc)
            if expires is not None and expires <= now():
                return None
            project = s.get(Project, row.project_id)
            if project is not None and project.status == "archived":
                return None  # its keys were revoked when it was archived; this catches one made meanwhile
            return Principal(key_id=row.id, project_id=row.project_id, role=row.role, name=row.name,
                             expires_at=expires, rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit,
                             project_rpm_limit=project.rpm_limit if project else None,
                             project_tpm_limit=project.tpm_limit if project else None,
                             monthly_token_cap=project.monthly_token_cap if project else None,
                             monthly_cost_cap=project.monthly_cost_cap if project else None)

    def digest_of(self, key_id: str) -> str | None:
        """The stored hash of a key (to look its principal up as a presented key is), or None."""
        with self.db.session() as s:
            return s.scalar(select(ApiKey.hash).where(ApiKey.id == key_id))

    def exists(self, digest: str) -> bool:
        with self.db.session() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.hash == digest)) is not None

    def any_admin(self) -> bool:
        with self.db.session() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))) is not None

    def get(self, key_id: str) -> dict:
        with self.db.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"No key '{key_id}'.", param="key_id")
            return key_view(row)

    def list(self, project_id: str | None = None) -> list[dict]:
        with self.db.session() as s:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if project_id is not None:
                query = query.where(ApiKey.project_id == project_id)
            return [key_view(row) for row in s.scalars(query)]

    def revoke(self, key_id: str) -> dict:
        with self.db.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"No key '{key_id}'.", param="key_id")
            if row.revoked_at is None:
                row.revoked_at = now()
            return key_view(row)

    def touch(self, used: dict[str, datetime]) -> None:
        """Record last-used times, batched (key id -> time)."""
        if not used:
            return
        with self.db.session() as s:
            for key_id, at in used.items():
                s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))
