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


DeploymentType = Literal["GlobalStandard", "DataZoneStandard", "Standard", "GlobalProvisioned", "DataZoneProvisioned",
                         "ProvisionedManaged", "GlobalBatch", "DataZoneBatch"]


class DeploymentUpdate(_Body):
    backends: list[str] | None = Field(default=None, min_length=1)
    model: str | None = None
    deployment_type: DeploymentType | None = None
    region: str | None = None
    data_zone: Literal["EU", "US"] | None = None
    tpm: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    content_filter_policy: str | None = None
    price_input_per_1k: float | None = Field(default=None, ge=0)
    price_output_per_1k: float | None = Field(default=None, ge=0)
    enabled: bool | None = None
    owned_by: str | None = None
    spillover: str | None = Field(default=None, description="provisioned types: a standard deployment for overflow")


class DeploymentCreate(DeploymentUpdate):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    backends: list[str] = Field(min_length=1)
    deployment_type: DeploymentType = "GlobalStandard"
    price_input_per_1k: float = Field(default=0.0, ge=0)
    price_output_per_1k: float = Field(default=0.0, ge=0)
    enabled: bool = True
    owned_by: str = "modelworks"


class BlocklistCreate(_Body):
    name: str = Field(min_length=1, max_length=100)
    project_id: str | None = Field(default=None, description="default: the caller's project")
    description: str | None = Field(default=None, max_length=500)


class BlocklistItem(_Body):
    kind: Literal["term", "regex"] = Field(default="term", description="term: a whole word or phrase, any case; "
                                                                       "regex: a regular expression")
    value: str = Field(min_length=1, max_length=1000)


class BlocklistItemsAdd(_Body):
    items: list[BlocklistItem] = Field(min_length=1, max_length=1000)
