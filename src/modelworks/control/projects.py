"""Projects (tenants): every key belongs to one; budgets and optional limits are set per project."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelworks.control.keys import _iso, now
from modelworks.errors import InvalidRequest, NotFound
from modelworks.store.db import Database
from modelworks.store.schema import Project

DEFAULT_PROJECT = "proj_default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
EDITABLE = ("monthly_token_cap", "monthly_cost_cap", "soft_threshold", "rpm_limit", "tpm_limit")


def project_view(row: Project) -> dict:
    return {"id": row.id, "name": row.name, "created_at": _iso(row.created_at),
            **{field: getattr(row, field) for field in EDITABLE}}


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
                row = Project(id="proj_" + uuid.uuid4().hex[:16], name=name, created_at=now(), soft_threshold=0.8)
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
            row = s.get(Project, project_id)
            if row is None:
                raise NotFound(f"No project '{project_id}'.", param="project_id")
            return project_view(row)

    def list(self, only: str | None = None) -> list[dict]:
        with self.db.session() as s:
            query = select(Project).order_by(Project.created_at)
            if only is not None:
                query = query.where(Project.id == only)
            return [project_view(row) for row in s.scalars(query)]

    def update(self, project_id: str, changes: dict) -> dict:
        with self.db.session() as s:
            row = s.get(Project, project_id)
            if row is None:
                raise NotFound(f"No project '{project_id}'.", param="project_id")
            for field, value in changes.items():
                if field in EDITABLE:
                    setattr(row, field, value)
            return project_view(row)
