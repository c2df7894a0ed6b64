"""Who is calling: the key's id, project and role (never the key itself)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ADMIN = "admin"                  # everything, every project
PROJECT_ADMIN = "project_admin"  # its own project's keys, usage and audit
USER = "user"                    # inference, and its own project's usage
ROLES = (ADMIN, PROJECT_ADMIN, USER)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    project_id: str
    role: str
    name: str
    expires_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    project_rpm_limit: int | None = None
    project_tpm_limit: int | None = None
    monthly_token_cap: int | None = None
    monthly_cost_cap: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def can_manage(self, project_id: str) -> bool:
        return self.role == ADMIN or (self.role == PROJECT_ADMIN and self.project_id == project_id)

    def can_read(self, project_id: str) -> bool:
        return self.role == ADMIN or self.project_id == project_id
