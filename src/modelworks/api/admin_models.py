"""Request bodies of the admin API (strict: a wrong type is a 400 naming the field).

Every bound here is one the store can hold, so that no value that passes reaches the database as an error:
integers fit their columns (INTEGER is 32-bit on PostgreSQL, BIGINT 64-bit), floats are finite (pydantic's JSON
parser reads `1e999` as infinity, which would be stored as null and shown as "no cap"), strings are no longer
than their columns and hold no NUL character (PostgreSQL refuses those in text).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelworks.control.keys import utc
from modelworks.control.projects import MAX_MCP_SERVER_URL, MAX_MCP_SERVERS, mcp_server_prefix
from modelworks.protocol.requests import INT32_MAX, INT64_MAX  # INTEGER (rpm, tpm) and BIGINT (token caps)

MAX_PRICE_PER_1K = 1_000_000.0  # far above any real price; keeps a request's cost finite
NO_NUL = r"^[^\x00]*$"

Text = Annotated[str, Field(pattern=NO_NUL)]
UtcTime = Annotated[datetime, AfterValidator(utc)]
McpServerPrefix = Annotated[str, Field(min_length=1, max_length=MAX_MCP_SERVER_URL),
                            AfterValidator(mcp_server_prefix)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ProjectUpdate(_Body):
    monthly_token_cap: int | None = Field(default=None, ge=0, le=INT64_MAX, description="null: no cap")
    monthly_cost_cap: float | None = Field(default=None, ge=0, description="null: no cap")
    soft_threshold: float = Field(default=None, ge=0, le=1)
    rpm_limit: int | None = Field(default=None, ge=1, le=INT32_MAX, description="null: no limit")
    tpm_limit: int | None = Field(default=None, ge=1, le=INT32_MAX, description="null: no limit")
    mcp_servers: list[McpServerPrefix] | None = Field(
        default=None, max_length=MAX_MCP_SERVERS,
        description="URL prefixes (absolute http or https URLs) of the remote MCP servers this project's requests "
                    "may reach, private and loopback ones included; a server's URL must start with one (same scheme, "
                    "host and port; the path continuing at a '/'). null (the default): any server at a public "
                    "address; []: none.")


class ProjectCreate(ProjectUpdate):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    soft_threshold: float | None = Field(default=None, ge=0, le=1, description="default: 0.8")


PROJECT_REF = "the project's id or name; default: the caller's project"


class KeyCreate(_Body):
    name: Text | None = Field(default=None, min_length=1, max_length=100, description="default: the key's id")
    project_id: Text | None = Field(default=None, max_length=100, description=PROJECT_REF)
    role: Literal["admin", "project_admin", "user"] = "user"
    expires_at: UtcTime | None = Field(default=None, description="ISO 8601; a time without an offset is UTC; "
                                                                 "shown back in UTC")
    rpm_limit: int | None = Field(default=None, ge=1, le=INT32_MAX)
    tpm_limit: int | None = Field(default=None, ge=1, le=INT32_MAX)


DeploymentType = Literal["GlobalStandard", "DataZoneStandard", "Standard", "GlobalProvisioned", "DataZoneProvisioned",
                         "ProvisionedManaged", "GlobalBatch", "DataZoneBatch"]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE_PER_1K)]


class DeploymentUpdate(_Body):
    """A change: the fields given are set. Fields the store always holds take no null."""

    backends: list[Annotated[Text, Field(max_length=100)]] = Field(default=None, min_length=1, max_length=64)
    model: Text | None = Field(default=None, max_length=200)
    deployment_type: DeploymentType = None
    region: Text | None = Field(default=None, max_length=40)
    data_zone: Literal["EU", "US"] | None = None
    tpm: int | None = Field(default=None, ge=1, le=INT32_MAX)
    rpm: int | None = Field(default=None, ge=1, le=INT32_MAX)
    content_filter_policy: Text | None = Field(default=None, max_length=100)
    price_input_per_1k: Price = None
    price_output_per_1k: Price = None
    enabled: bool = None
    owned_by: Text = Field(default=None, max_length=100)
    spillover: Text | None = Field(default=None, max_length=100,
                                   description="provisioned types: a standard deployment for overflow")


class DeploymentCreate(DeploymentUpdate):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    backends: list[Annotated[Text, Field(max_length=100)]] = Field(min_length=1, max_length=64)
    deployment_type: DeploymentType = "GlobalStandard"
    price_input_per_1k: Price = 0.0
    price_output_per_1k: Price = 0.0
    enabled: bool = True
    owned_by: Text = Field(default="modelworks", max_length=100)


class BlocklistCreate(_Body):
    name: Text = Field(min_length=1, max_length=100)
    project_id: Text | None = Field(default=None, max_length=100, description=PROJECT_REF)
    description: Text | None = Field(default=None, max_length=500)


class BlocklistItem(_Body):
    kind: Literal["term", "regex"] = Field(default="term", description="term: a whole word or phrase, any case; "
                                                                       "regex: a regular expression")
    value: Text = Field(min_length=1, max_length=1000)


class BlocklistItemsAdd(_Body):
    items: list[BlocklistItem] = Field(min_length=1, max_length=1000)
