"""Projects (tenants): every key belongs to one; budgets, optional limits and the remote MCP servers its requests
may reach (`mcp_servers`, see `modelworks.responses.mcp_policy`) are set per project.

A project ends in one of two ways. Archiving revokes its keys and refuses new ones, and keeps everything it
leaves behind (usage, audit, content log), so its history stays readable. Deleting removes it, and is allowed
only while it is empty: no usage records, no content-log entries, no key that could still authenticate (revoked
and expired keys, and its blocklists, go with it). The default project, which holds the bootstrap admin key, can
be neither archived nor deleted.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from modelworks.control.keys import _iso, now, to_utc
from modelworks.errors import Conflict, InvalidRequest, NotFound
from modelworks.store.db import Database
from modelworks.store.schema import ApiKey, BlocklistItemRow, BlocklistRow, ContentLogEntry, Project, UsageRecord

DEFAULT_PROJECT = "proj_default"
ACTIVE, ARCHIVED = "active", "archived"
STATUSES = (ACTIVE, ARCHIVED)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
EDITABLE = ("monthly_token_cap", "monthly_cost_cap", "soft_threshold", "rpm_limit", "tpm_limit", "mcp_servers")
MAX_MCP_SERVERS = 64
MAX_MCP_SERVER_URL = 2048


def project_view(row: Project) -> dict:
    return {"id": row.id, "name": row.name, "created_at": _iso(row.created_at),
            **{field: getattr(row, field) for field in EDITABLE},
            "status": row.status or ACTIVE, "archived_at": _iso(row.archived_at)}


def mcp_server_prefix(value: str) -> str:
    """Check one entry of a project's `mcp_servers`: an absolute http(s) URL with a host, without credentials, query
    or fragment. The remote MCP servers a project's requests may reach are those whose URL starts with an entry (same
    scheme, host and port; the path continues the entry's at a '/'); null allows any public address. Raises
    ValueError saying what is wrong."""
    if len(value) > MAX_MCP_SERVER_URL or any(ord(c) < 0x21 or c == "\x7f" for c in value):
        raise ValueError(f"must be at most {MAX_MCP_SERVER_URL} characters, with no spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- a port that is not a number raises here
    except ValueError:
        raise ValueError("must be an absolute http or https URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL, such as 'https://mcp.example.com/'")
    if "@" in parts.netloc or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must not hold credentials, a query or a fragment")
    return value


class ProjectService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_default(self) -> None:
        with self.db.session() as s:
            if s.get(Project, DEFAULT_PROJECT) is None:
                s.add(Project(id=DEFAULT_PROJECT, name="default", created_at=now(), soft_threshold=0.8))
        # A replica starting at the same moment may have added it first: that is fine.

    def create(self, name: str, **settings) -> dict:
        if not _NAME.match(name):
            raise InvalidRequest("A project name is 1-100 letters, digits, '.', '_' or '-'.", param="name")
        try:
            with self.db.session() as s:
                row = Project(id="proj_" + uuid.uuid4().hex[:16], name=name, created_at=now(), soft_threshold=0.8,
                              status=ACTIVE)
                for field, value in settings.items():
                    if field in EDITABLE and value is not None:
                        setattr(row, field, value)
                s.add(row)
                s.flush()
                return project_view(row)
        except IntegrityError:
            raise InvalidRequest(f"A project named '{name}' already exists.", param="name",
                                 code="already_exists") from None

    def get(self, project_id: str) -> dict:
        with self.db.session() as s:
            return project_view(self._row(s, project_id))

    def resolve(self, ref: str) -> str | None:
        """The id of the project `ref` names: its id, or else its name (a name may look like another's id: the id
        wins). None when there is no such project."""
        with self.db.session() as s:
            found = {row.id: row.name for row in s.execute(
                select(Project.id, Project.name).where((Project.id == ref) | (Project.name == ref)))}
        if ref in found:
            return ref
        return next(iter(found), None)

    def mcp_servers(self, project_id: str) -> list[str] | None:
        """The URL prefixes of the MCP servers the project may reach; None: any public address."""
        with self.db.session() as s:
            found = s.execute(select(Project.mcp_servers).where(Project.id == project_id)).first()
        if found is None:
            raise NotFound(f"No project '{project_id}'.", param="project_id")
        return found[0]

    def list(self, only: str | None = None, status: str | None = None) -> list[dict]:
        with self.db.session() as s:
            query = select(Project).order_by(Project.created_at)
            if only is not None:
                query = query.where(Project.id == only)
            if status is not None:
                query = query.where(Project.status == status)
            return [project_view(row) for row in s.scalars(query)]

    def update(self, project_id: str, changes: dict) -> dict:
        with self.db.session() as s:
            row = self._row(s, project_id)
            if row.status == ARCHIVED:
                raise Conflict(f"The project '{project_id}' is archived; its settings no longer change.",
                               param="project_id", code="project_archived")
            for field, value in changes.items():
                if field in EDITABLE:
                    setattr(row, field, value)
            return project_view(row)

    def archive(self, project_id: str) -> tuple[dict, int]:
        """Archive a project and revoke its live keys, in one transaction. Returns the project and how many keys
        were revoked. Archiving an archived project changes nothing."""
        with self.db.session() as s:
            row = self._row(s, project_id, lock=True)
            _not_default(project_id, "archived")
            if row.status == ARCHIVED:
                return project_view(row), 0
            at = now()
            revoked = s.execute(update(ApiKey).where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))
                                .values(revoked_at=at)).rowcount
            row.status, row.archived_at = ARCHIVED, at
            return project_view(row), revoked

    def delete(self, project_id: str) -> dict:
        """Delete an empty project with its revoked or expired keys and its blocklists; 409 otherwise."""
        try:
            with self.db.session() as s:
                row = self._row(s, project_id, lock=True)
                _not_default(project_id, "deleted")
                reasons = self._contents(s, project_id)
                if reasons:
                    raise Conflict(f"The project '{project_id}' is not empty ({'; '.join(reasons)}): archive it "
                                   f"instead (POST /admin/v1/projects/{project_id}/archive), which revokes its keys "
                                   "and keeps its history.", param="project_id", code="project_not_empty")
                view = project_view(row)
                lists = select(BlocklistRow.id).where(BlocklistRow.project_id == project_id).scalar_subquery()
                s.execute(delete(BlocklistItemRow).where(BlocklistItemRow.blocklist_id.in_(lists)))
                blocklists = s.execute(delete(BlocklistRow).where(BlocklistRow.project_id == project_id)).rowcount
                keys = s.execute(delete(ApiKey).where(ApiKey.project_id == project_id)).rowcount
                s.delete(row)
        except IntegrityError:  # a key made for it at this very moment
            raise Conflict(f"The project '{project_id}' changed while it was being deleted; try again.",
                           param="project_id", code="project_not_empty") from None
        return {**view, "deleted_keys": keys, "deleted_blocklists": blocklists}

    @staticmethod
    def _contents(s, project_id: str) -> list[str]:
        """Why a project is not empty (nothing: it is)."""
        reasons = []
        if s.scalar(select(UsageRecord.id).where(UsageRecord.project_id == project_id).limit(1)) is not None:
            reasons.append("it has usage records")
        if s.scalar(select(ContentLogEntry.id).where(ContentLogEntry.project_id == project_id).limit(1)) is not None:
            reasons.append("it has logged content")
        at = now()
        live = [k for k in s.scalars(select(ApiKey).where(ApiKey.project_id == project_id,
                                                           ApiKey.revoked_at.is_(None)))
                if k.expires_at is None or to_utc(k.expires_at, "expires_at") > at]
        if live:
            reasons.append(f"{len(live)} key(s) not revoked")
        return reasons

    @staticmethod
    def _row(s, project_id: str, lock: bool = False) -> Project:
        query = select(Project).where(Project.id == project_id)
        row = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFound(f"No project '{project_id}'.", param="project_id")
        return row


def _not_default(project_id: str, what: str) -> None:
    if project_id == DEFAULT_PROJECT:
        raise Conflict(f"The default project holds the bootstrap admin key; it cannot be {what}.",
                       param="project_id", code="default_project")
