"""The admin API's OpenAPI 3.1 document, built from the request models that validate the bodies.

Every `$ref` points into `components/schemas`: the request models' own definitions (a nested model such as
`BlocklistItem`) are hoisted there beside them.
"""

from __future__ import annotations

import functools

from pydantic.json_schema import models_json_schema

from modelworks import __version__
from modelworks.api.admin import MAX_LIMIT
from modelworks.api.admin_models import (
    INT32_MAX, BlocklistCreate, BlocklistItemsAdd, DeploymentCreate, DeploymentUpdate, KeyCreate, ProjectCreate,
    ProjectUpdate,
)
from modelworks.api.http import JSONResult
from modelworks.metering.usage import GROUPS

_REQUEST_MODELS = (ProjectCreate, ProjectUpdate, KeyCreate, DeploymentCreate, DeploymentUpdate, BlocklistCreate,
                   BlocklistItemsAdd)

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}

_RESPONSES = {
    "Project": {"type": "object", "required": ["object", "id", "name", "created_at", "status"], "properties": {
        "object": {"const": "project"}, "id": {"type": "string"}, "name": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"}, "monthly_token_cap": _NULLABLE_INT,
        "monthly_cost_cap": _NULLABLE_NUM, "soft_threshold": _NULLABLE_NUM, "rpm_limit": _NULLABLE_INT,
        "tpm_limit": _NULLABLE_INT,
        "mcp_servers": {"type": ["array", "null"], "items": {"type": "string"},
                        "description": "URL prefixes of the MCP servers the project may reach; null: any public "
                                       "address"},
        "status": {"enum": ["active", "archived"], "description": "archived: its keys are revoked, it takes no new "
                                                                   "ones, its usage and audit are kept"},
        "archived_at": {"type": ["string", "null"], "format": "date-time"},
        "revoked_keys": {"type": "integer", "description": "only in the answer to archive: keys it revoked"},
        "deleted_keys": {"type": "integer", "description": "only in the answer to delete: its revoked or expired "
                                                           "keys, deleted with it"},
        "deleted_blocklists": {"type": "integer", "description": "only in the answer to delete"},
        "deleted": {"type": "boolean"}}},
    "ApiKey": {"type": "object", "required": ["object", "id", "project_id", "name", "role", "display"], "properties": {
        "object": {"const": "api_key"}, "id": {"type": "string"}, "project_id": {"type": "string"},
        "name": {"type": "string"}, "role": {"enum": ["admin", "project_admin", "user"]},
        "display": {"type": "string", "description": "the key's first characters"},
        "key": {"type": "string", "description": "the key itself: only in the answer that creates it"},
        "created_at": {"type": "string"}, "expires_at": _NULLABLE_STR, "revoked_at": _NULLABLE_STR,
        "last_used_at": _NULLABLE_STR, "rpm_limit": _NULLABLE_INT, "tpm_limit": _NULLABLE_INT}},
    "Deployment": {"type": "object", "required": ["object", "name", "backends", "deployment_type", "enabled", "source"],
                   "properties": {
        "object": {"const": "deployment"}, "name": {"type": "string"}, "model": _NULLABLE_STR,
        "backends": {"type": "array", "items": {"type": "string"}}, "deployment_type": {"type": "string"},
        "region": _NULLABLE_STR, "data_zone": {"enum": ["EU", "US", None]}, "tpm": _NULLABLE_INT, "rpm": _NULLABLE_INT,
        "rpm_effective": _NULLABLE_INT, "content_filter_policy": _NULLABLE_STR,
        "price_input_per_1k": {"type": "number"}, "price_output_per_1k": {"type": "number"},
        "enabled": {"type": "boolean"}, "owned_by": {"type": "string"}, "spillover": _NULLABLE_STR,
        "source": {"enum": ["config", "api"]},
        "updated_at": {"type": "string"}, "deleted": {"type": "boolean"}}},
    "AuditEntry": {"type": "object", "required": ["object", "seq", "at", "action", "outcome", "hash", "prev_hash"],
                   "properties": {
        "object": {"const": "audit_entry"}, "seq": {"type": "integer"}, "at": {"type": "string"},
        "actor": _NULLABLE_STR, "project_id": _NULLABLE_STR, "action": {"type": "string"}, "target": _NULLABLE_STR,
        "outcome": {"type": "string"}, "detail": {"type": "object"}, "prev_hash": {"type": "string"},
        "hash": {"type": "string"}}},
    "AuditVerification": {"type": "object", "required": ["object", "ok", "entries"], "properties": {
        "object": {"const": "audit_verification"}, "ok": {"type": "boolean"}, "entries": {"type": "integer"},
        "problem": _NULLABLE_STR, "seq": _NULLABLE_INT}},
    "Blocklist": {"type": "object", "required": ["object", "id", "project_id", "name"], "properties": {
        "object": {"const": "blocklist"}, "id": {"type": "string"}, "project_id": {"type": "string"},
        "name": {"type": "string"}, "description": _NULLABLE_STR, "created_at": {"type": "string"},
        "updated_at": {"type": "string"}, "items": {"type": "integer"}, "deleted": {"type": "boolean"}}},
    "BlocklistItemRecord": {"type": "object", "required": ["object", "id", "blocklist_id", "kind", "value"],
                            "properties": {
        "object": {"const": "blocklist_item"}, "id": {"type": "string"}, "blocklist_id": {"type": "string"},
        "kind": {"enum": ["term", "regex"]}, "value": {"type": "string"}, "created_at": {"type": "string"},
        "deleted": {"type": "boolean"}}},
    "ContentLogEntry": {"type": "object", "required": ["object", "id", "at", "expires_at", "deployment", "prompt",
                                                       "completion"], "properties": {
        "object": {"const": "content_log_entry"}, "id": {"type": "string"}, "at": {"type": "string"},
        "expires_at": {"type": "string"}, "project_id": _NULLABLE_STR, "key_id": _NULLABLE_STR,
        "deployment": {"type": "string"}, "filter_outcome": _NULLABLE_STR,
        "prompt": {"type": "array", "items": {"type": "string"}},
        "completion": {"type": "array", "items": {"type": "string"}}}},
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": _NULLABLE_STR,
            "code": _NULLABLE_STR}}}},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(name: str) -> dict:
    return {"type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref(name)}}}


def _op(summary: str, ok: dict, body: str | None = None, status: str = "200", params: list | None = None) -> dict:
    op = {"summary": summary, "security": [{"bearer": []}, {"apiKey": []}],
          "responses": {status: {"description": "OK", "content": {"application/json": {"schema": ok}}},
                        "default": {"description": "Error", "content": {"application/json": {"schema": _ref("Error")}}}}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_LIMIT = _query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": 100})
_GROUP = "|".join(GROUPS)


@functools.lru_cache(maxsize=1)
def document() -> dict:
    schemas = dict(_RESPONSES)
    _, definitions = models_json_schema([(model, "validation") for model in _REQUEST_MODELS],
                                        ref_template="#/components/schemas/{model}")
    schemas.update(definitions["$defs"])
    p, k, d = _path_param("project_id"), _path_param("key_id"), _path_param("name")
    bl = _path_param("blocklist_id")
    paths = {
        "/admin/v1/projects": {
            "get": _op("List the projects the caller may see, archived ones too (or ?status=)", _list_of("Project"),
                       params=[_query("status", {"enum": ["active", "archived"]})]),
            "post": _op("Create a project (admins)", _ref("Project"), "ProjectCreate", "201")},
        "/admin/v1/projects/{project_id}": {
            "get": _op("Read a project", _ref("Project"), params=[p]),
            "patch": _op("Change a project's budgets, limits and MCP servers (admins; not once archived)", _ref("Project"),
                         "ProjectUpdate", params=[p]),
            "delete": _op("Delete an empty project (admins): no usage, no logged content, no key that is not revoked "
                          "or expired; 409 otherwise (archive it instead). Not the default project, nor the "
                          "caller's own.", _ref("Project"), params=[p])},
        "/admin/v1/projects/{project_id}/archive": {
            "post": _op("Archive a project (admins): revoke its keys (at once on this replica, on the others within "
                        "the key cache time), refuse new ones, keep its usage and audit. Not the default project, "
                        "nor the caller's own.", _ref("Project"), params=[p])},
        "/admin/v1/keys": {
            "get": _op("List keys (admins: all or ?project_id=; project admins: their project's)",
                       _list_of("ApiKey"), params=[_query("project_id", {"type": "string"})]),
            "post": _op("Create a key; the answer holds the key, shown this once", _ref("ApiKey"), "KeyCreate", "201")},
        "/admin/v1/keys/{key_id}": {
            "get": _op("Read a key (never the key itself)", _ref("ApiKey"), params=[k]),
            "delete": _op("Revoke a key (every replica refuses it within 5 seconds)", _ref("ApiKey"), params=[k])},
        "/admin/v1/deployments": {
            "get": _op("List deployments", _list_of("Deployment")),
            "post": _op("Create a deployment (admins); it serves at once, on every replica within seconds",
                        _ref("Deployment"), "DeploymentCreate", "201")},
        "/admin/v1/deployments/{name}": {
            "get": _op("Read a deployment", _ref("Deployment"), params=[d]),
            "patch": _op("Change a deployment made through the API (admins)", _ref("Deployment"),
                         "DeploymentUpdate", params=[d]),
            "delete": _op("Delete a deployment made through the API (admins)", _ref("Deployment"), params=[d])},
        "/admin/v1/usage": {
            "get": {"summary": "Usage aggregated by day, deployment, key or project (CSV with format=csv)",
                    "security": [{"bearer": []}, {"apiKey": []}],
                    "parameters": [_query("group_by", {
                        "type": "string", "example": "day,deployment,key",
                        "pattern": f"^({_GROUP})?(,({_GROUP}))*$",
                        "description": f"comma-separated (or repeated): {', '.join(GROUPS)}, each at most once; "
                                       "default day,deployment"}),
                                   _query("since", {"type": "string", "format": "date-time"}),
                                   _query("until", {"type": "string", "format": "date-time"}),
                                   _query("project_id", {"type": "string"}),
                                   _query("format", {"enum": ["json", "csv"]})],
                    "responses": {"200": {"description": "OK", "content": {
                        "application/json": {"schema": {"type": "object", "required": ["object", "data"],
                                                        "properties": {"object": {"const": "list"},
                                                                       "group_by": {"type": "array"},
                                                                       "data": {"type": "array",
                                                                                "items": {"type": "object"}}}}},
                        "text/csv": {"schema": {"type": "string"}}}},
                        "default": {"description": "Error",
                                    "content": {"application/json": {"schema": _ref("Error")}}}}}},
        "/admin/v1/blocklists": {
            "get": _op("List blocklists (admins: all or ?project_id=; project admins: their project's)",
                       _list_of("Blocklist"), params=[_query("project_id", {"type": "string"})]),
            "post": _op("Create a blocklist in a project (admins, project admins)", _ref("Blocklist"),
                        "BlocklistCreate", "201")},
        "/admin/v1/blocklists/{blocklist_id}": {
            "get": _op("Read a blocklist", _ref("Blocklist"), params=[bl]),
            "delete": _op("Delete a blocklist and its items", _ref("Blocklist"), params=[bl])},
        "/admin/v1/blocklists/{blocklist_id}/items": {
            "get": _op("List a blocklist's terms and patterns", _list_of("BlocklistItemRecord"), params=[bl]),
            "post": _op("Add terms and patterns (patterns are compiled now: a bad one is a 400)",
                        _list_of("BlocklistItemRecord"), "BlocklistItemsAdd", "201", params=[bl])},
        "/admin/v1/blocklists/{blocklist_id}/items/{item_id}": {
            "delete": _op("Remove an item", _ref("BlocklistItemRecord"), params=[bl, _path_param("item_id")])},
        "/admin/v1/content-log": {
            "get": _op("Logged prompts and completions of the deployments whose policy sets log_content, newest "
                       "first (admins: all or ?project_id=; project admins: their project's)", _list_of("ContentLogEntry"),
                       params=[_query("project_id", {"type": "string"}), _LIMIT])},
        "/admin/v1/audit": {
            "get": _op("Read the audit trail (project admins: their project's entries)", _list_of("AuditEntry"),
                       params=[_query("after", {"type": "integer", "minimum": 0, "maximum": INT32_MAX,
                                                          "description": "the last seq already read"}), _LIMIT])},
        "/admin/v1/audit/verify": {"get": _op("Check the hash chain (admins)", _ref("AuditVerification"))},
        "/admin/v1/audit/export": {"get": {
            "summary": "The whole audit trail as JSON Lines (admins)", "security": [{"bearer": []}, {"apiKey": []}],
            "responses": {"200": {"description": "One AuditEntry per line",
                                  "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                          "default": {"description": "Error",
                                      "content": {"application/json": {"schema": _ref("Error")}}}}}},
    }
    return {"openapi": "3.1.0", "info": {"title": "Modelworks admin API", "version": __version__},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"}}}}


async def openapi_endpoint(request) -> JSONResult:
    return JSONResult(document())
