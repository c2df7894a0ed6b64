"""Request bodies of the admin API (strict: a wrong type is a 400 naming the field)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ProjectCreate(_Body):
    name: str = Field(min_length=1, max_length=100)
    monthly_token_cap: int | None = Field(default=None, ge=0)
    monthly_cost_cap: float | None = Field(default=None, ge=0)
    soft_threshold: float | None = Field(default=None, ge=0, le=1)
    rpm_limit: int | None = Field(default=None, ge=1)
    tpm_limit: int | None = Field(default=None, ge=1)


class ProjectUpdate(_Body):
    monthly_token_cap: int | None = Field(default=None, ge=0)
    monthly_cost_cap: float | None = Field(default=None, ge=0)
    soft_threshold: float | None = Field(default=None, ge=0, le=1)
    rpm_limit: int | None = Field(default=None, ge=1)
    tpm_limit: int | None = Field(default=None, ge=1)


class KeyCreate(_Body):
    name: str = Field(min_length=1, max_length=100)
    project_id: str | None = Field(default=None, description="default: the caller's project")
    role: Literal["admin", "project_admin", "user"] = "user"
    expires_at: datetime | None = None
    rpm_limit: int | None = Field(default=None, ge=1)
    tpm_limit: int | None = Field(default=None, ge=1)
