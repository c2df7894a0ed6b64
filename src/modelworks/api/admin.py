"""The admin API, `/admin/v1`: projects, keys, deployments, usage, the content log and the audit trail.

Every call is authenticated like an inference call. Admins see everything; a project admin manages its own
project's keys and reads its audit; a user key may only read its own project. Another project's resources
answer 404, as if they did not exist. Every change is written to the audit trail before the answer. Query
parameters are checked as strictly as bodies: a bad one is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from urllib.parse import parse_qs

from modelworks.api.admin_models import (
    INT32_MAX, DeploymentCreate, DeploymentUpdate, KeyCreate, ProjectCreate, ProjectUpdate,
)
from modelworks.api.http import JSONResult
from modelworks.api.request import Request
from modelworks.catalog import Catalog
from modelworks.control.audit import Event
from modelworks.control.keys import _iso, to_utc
from modelworks.control.plane import ControlPlane
from modelworks.control.principal import ADMIN, PROJECT_ADMIN, Principal
from modelworks.control.projects import STATUSES
from modelworks.errors import Conflict, Forbidden, InvalidRequest, NotFound
from modelworks.metering.usage import parse_group_by, to_csv
from modelworks.policies.chain import Call
from modelworks.protocol.parse import parse_request


class AdminHandlers:
    def __init__(self, control: ControlPlane, catalog: Catalog, max_body: int) -> None:
        self.control = control
        self.catalog = catalog
        self.max_body = max_body

    # -- projects ----------------------------------------------------------------------------------------------

    async def list_projects(self, request: Request) -> JSONResult:
        who = await self._who(request, "projects.list")
        status = _choice(_one(request, "status"), "status", STATUSES)
        rows = await _run(self.control.projects.list, None if who.is_admin else who.project_id, status)
        return _list("project", rows)

    async def create_project(self, request: Request) -> JSONResult:
        who = await self._who(request, "projects.create")
        _require(who.is_admin, "Only admins create projects.")
        body = await parse_request(ProjectCreate, await request.body(self.max_body))
        row = await _run(self.control.projects.create, **body.model_dump())
        await self._audit(who, "project.create", row["id"], row["id"], body.model_dump(exclude_none=True))
        return JSONResult({"object": "project", **row}, status=201)

    async def get_project(self, request: Request) -> JSONResult:
        who = await self._who(request, "projects.get")
        project_id = await self._project_ref(who, request.path_params["project_id"])
        _visible(who.can_read(project_id), f"No project '{project_id}'.")
        return JSONResult({"object": "project", **await _run(self.control.projects.get, project_id)})

    async def update_project(self, request: Request) -> JSONResult:
        who = await self._who(request, "projects.update")
        project_id = await self._project_ref(who, request.path_params["project_id"])
        _visible(who.can_read(project_id), f"No project '{project_id}'.")
        _require(who.is_admin, "Only admins change a project's settings.")
        body = await parse_request(ProjectUpdate, await request.body(self.max_body))
        changes = body.model_dump(exclude_unset=True)
        row = await _run(self.control.projects.update, project_id, changes)
        await self._audit(who, "project.update", project_id, project_id, changes)
        return JSONResult({"object": "project", **row})

    async def archive_project(self, request: Request) -> JSONResult:
        """Revoke every key of the project, refuse new ones, keep its history: `status: archived`."""
        who, project_id = await self._ending(request, "projects.archive", "archive")
        row, revoked = await _run(self.control.projects.archive, project_id)
        self.control.auth.forget()  # its keys fail at once on this replica; the others within the cache time
        await self._audit(who, "project.archive", project_id, project_id, {"revoked_keys": revoked})
        return JSONResult({"object": "project", **row, "revoked_keys": revoked})

    async def delete_project(self, request: Request) -> JSONResult:
        """Only an empty project (no usage, no logged content, no live key); otherwise 409: archive it."""
        who, project_id = await self._ending(request, "projects.delete", "delete")
        row = await _run(self.control.projects.delete, project_id)
        await self._audit(who, "project.delete", project_id, project_id,
                          {"name": row["name"], "keys": row["deleted_keys"], "blocklists": row["deleted_blocklists"]})
        return JSONResult({"object": "project", **row, "deleted": True})

    async def _ending(self, request: Request, operation: str, verb: str) -> tuple[Principal, str]:
        who = await self._who(request, operation)
        project_id = await self._project_ref(who, request.path_params["project_id"])
        _visible(who.can_read(project_id), f"No project '{project_id}'.")
        _require(who.is_admin, f"Only admins {verb} projects.")
        if project_id == who.project_id:
            raise Conflict(f"The project '{project_id}' holds the key making this call; {verb} it with an admin "
                           "key of another project.", param="project_id", code="own_project")
        return who, project_id

    # -- keys ------------------------------------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> JSONResult:
        who = await self._who(request, "keys.list")
        _require(who.role in (ADMIN, PROJECT_ADMIN), "Only admins and project admins list keys.")
        project_id = _project_scope(who, await self._project_ref(who, request.query("project_id")))
        return _list("api_key", await _run(self.control.keys.list, project_id))

    async def create_key(self, request: Request) -> JSONResult:
        who = await self._who(request, "keys.create")
        _require(who.role in (ADMIN, PROJECT_ADMIN), "Only admins and project admins create keys.")
        body = await parse_request(KeyCreate, await request.body(self.max_body))
        project_id = await self._project_ref(who, body.project_id) or who.project_id
        _visible(who.can_read(project_id), f"No project '{project_id}'.")
        _require(who.is_admin or body.role != ADMIN, "Only admins create admin keys.")
        created = await _run(self.control.keys.create, project_id, body.role, body.name,
                             expires_at=body.expires_at, rpm_limit=body.rpm_limit, tpm_limit=body.tpm_limit)
        await self._audit(who, "key.create", project_id, created.record["id"],
                          {"name": body.name, "role": body.role, "expires_at": created.record["expires_at"]})
        return JSONResult({"object": "api_key", **created.record, "key": created.key}, status=201)

    async def get_key(self, request: Request) -> JSONResult:
        who = await self._who(request, "keys.get")
        record = await self._visible_key(who, request.path_params["key_id"])
        return JSONResult({"object": "api_key", **record})

    async def revoke_key(self, request: Request) -> JSONResult:
        who = await self._who(request, "keys.revoke")
        record = await self._visible_key(who, request.path_params["key_id"])
        _require(who.can_manage(record["project_id"]), "Only admins and project admins revoke keys.")
        record = await _run(self.control.keys.revoke, record["id"])
        self.control.auth.forget()  # at once on this replica; the others within the cache time
        await self._audit(who, "key.revoke", record["project_id"], record["id"], {"name": record["name"]})
        return JSONResult({"object": "api_key", **record})

    async def _visible_key(self, who: Principal, key_id: str) -> dict:
        try:
            record = await _run(self.control.keys.get, key_id)
        except NotFound:
            record = None
        _visible(record is not None and (who.can_manage(record["project_id"]) or record["id"] == who.key_id),
                 f"No key '{key_id}'.")
        return record

    # -- deployments (every key may read them, as it may list models; only admins change them) ---------------------

    async def list_deployments(self, request: Request) -> JSONResult:
        await self._who(request, "deployments.list")
        return _list("deployment", await _run(self.control.deployments.all))

    async def get_deployment(self, request: Request) -> JSONResult:
        await self._who(request, "deployments.get")
        return JSONResult({"object": "deployment",
                           **await _run(self.control.deployments.get, request.path_params["name"])})

    async def create_deployment(self, request: Request) -> JSONResult:
        who = await self._who(request, "deployments.create")
        _require(who.is_admin, "Only admins manage deployments.")
        body = await parse_request(DeploymentCreate, await request.body(self.max_body))
        values = body.model_dump(exclude={"name"})
        row = await _run(self.control.deployments.create, body.name, values)
        await self.catalog.reload()
        await self._audit(who, "deployment.create", None, body.name, values)
        return JSONResult({"object": "deployment", **row}, status=201)

    async def update_deployment(self, request: Request) -> JSONResult:
        who = await self._who(request, "deployments.update")
        _require(who.is_admin, "Only admins manage deployments.")
        body = await parse_request(DeploymentUpdate, await request.body(self.max_body))
        changes = body.model_dump(exclude_unset=True)
        row = await _run(self.control.deployments.update, request.path_params["name"], changes)
        await self.catalog.reload()
        await self._audit(who, "deployment.update", None, row["name"], changes)
        return JSONResult({"object": "deployment", **row})

    async def delete_deployment(self, request: Request) -> JSONResult:
        who = await self._who(request, "deployments.delete")
        _require(who.is_admin, "Only admins manage deployments.")
        row = await _run(self.control.deployments.delete, request.path_params["name"])
        await self.catalog.reload()
        await self._audit(who, "deployment.delete", None, row["name"], {})
        return JSONResult({"object": "deployment", **row, "deleted": True})

    # -- usage ---------------------------------------------------------------------------------------------------------

    async def usage(self, request: Request) -> JSONResult:
        """Aggregated by any of day, deployment, key and project; `format=csv` for a CSV export."""
        who = await self._who(request, "usage.read")
        project_id = _project_scope(who, await self._project_ref(who, request.query("project_id")))
        groups = parse_group_by(_values(request, "group_by"))
        as_csv = _choice(_one(request, "format"), "format", ("json", "csv")) == "csv"
        rows = await _run(self.control.usage.aggregate, project_id=project_id, group_by=groups,
                          since=_date(_one(request, "since"), "since"), until=_date(_one(request, "until"), "until"))
        if as_csv:
            return JSONResult(to_csv(rows).encode(), headers={"content-type": "text/csv; charset=utf-8"})
        body = {"object": "list", "group_by": list(groups), "data": rows}
        if project_id is not None:
            body["budget"] = await _run(self._budget, project_id)
        return JSONResult(body)

    def _budget(self, project_id: str) -> dict:
        return self.control.budget(project_id)

    # -- content log (only deployments whose content-filter policy opts in write to it) ---------------------------

    async def list_content_log(self, request: Request) -> JSONResult:
        who = await self._who(request, "content_log.list")
        _require(who.role in (ADMIN, PROJECT_ADMIN), "Only admins and project admins read logged content.")
        project_id = _project_scope(who, await self._project_ref(who, request.query("project_id")))
        limit = _int(_one(request, "limit"), "limit", 100, MAX_LIMIT)
        rows = await _run(self.control.content_log.entries, project_id, limit)
        data = [{**row, "at": _iso(row["at"]), "expires_at": _iso(row["expires_at"]),
                 "prompt": json.loads(row["prompt"]), "completion": json.loads(row["completion"])} for row in rows]
        return _list("content_log_entry", data)

    # -- audit -------------------------------------------------------------------------------------------------------

    async def list_audit(self, request: Request) -> JSONResult:
        who = await self._who(request, "audit.list")
        _require(who.role in (ADMIN, PROJECT_ADMIN), "Only admins and project admins read the audit trail.")
        after = _int(_one(request, "after"), "after", 0, INT32_MAX)  # audit sequence numbers are INTEGER
        limit = _int(_one(request, "limit"), "limit", 100, MAX_LIMIT)
        rows = await _run(self.control.audit.entries, project_id=None if who.is_admin else who.project_id,
                          after=after, limit=limit)
        return _list("audit_entry", rows)

    async def verify_audit(self, request: Request) -> JSONResult:
        who = await self._who(request, "audit.verify")
        _require(who.is_admin, "Only admins verify the whole audit trail.")
        verdict = await _run(self.control.audit.verify)
        return JSONResult({"object": "audit_verification", "ok": verdict.ok, "entries": verdict.entries,
                           "problem": verdict.problem, "seq": verdict.seq})

    async def export_audit(self, request: Request) -> JSONResult:
        who = await self._who(request, "audit.export")
        _require(who.is_admin, "Only admins export the whole audit trail.")
        text = await _run(lambda: "".join(self.control.audit.export_jsonl()))
        return JSONResult(text.encode(), headers={"content-type": "application/x-ndjson"})

    # -- shared ------------------------------------------------------------------------------------------------------

    async def _who(self, request: Request, operation: str) -> Principal:
        call = Call(operation=f"admin.{operation}", headers=request.headers)
        await self.control.auth.admit(call)
        _refuse_nul(request)
        return call.principal

    async def _project_ref(self, who: Principal, ref: str | None) -> str | None:
        """The id of the project a request names by id or by name; one unknown, or not the caller's to see, as
        given (its 404 names what was asked, never another project's id)."""
        if ref is None or "\x00" in ref:
            return ref
        found = await _run(self.control.projects.resolve, ref)
        return found if found is not None and who.can_read(found) else ref

    async def _audit(self, who: Principal, action: str, project_id: str | None, target: str | None,
                     detail: dict) -> None:
        await _run(self.control.audit.append, [Event(action, actor=who.key_id, project_id=project_id,
                                                     target=target, detail=detail)])


async def _run(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def _list(kind: str, rows: list[dict]) -> JSONResult:
    return JSONResult({"object": "list", "data": [{"object": kind, **row} for row in rows]})


def _project_scope(who: Principal, asked: str | None) -> str | None:
    """The project a listing covers: admins any they ask for (None: all); others their own, and another one
    asked for answers 404 as if it did not exist."""
    if who.is_admin:
        return asked
    _visible(asked in (None, who.project_id), f"No project '{asked}'.")
    return who.project_id


def _require(allowed: bool, message: str) -> None:
    if not allowed:
        raise Forbidden(message)


def _visible(allowed: bool, message: str) -> None:
    if not allowed:
        raise NotFound(message)


# -- query parameters: each one a 400 naming it when it is malformed, out of range or given twice ----------------

MAX_LIMIT = 1000
_DIGITS = re.compile(r"[0-9]{1,19}")


def _values(request: Request, name: str) -> list[str]:
    raw = request.scope.get("query_string", b"")
    return parse_qs(raw.decode("latin-1"), keep_blank_values=True).get(name, []) if raw else []


def _one(request: Request, name: str) -> str | None:
    values = _values(request, name)
    if len(values) > 1:
        raise InvalidRequest(f"'{name}' is given {len(values)} times; give it once.", param=name)
    return values[0] if values else None


def _int(raw: str | None, name: str, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or int(raw) > maximum:
        raise InvalidRequest(f"'{name}' must be an integer from 0 to {maximum}.", param=name)
    return int(raw)


def _choice(raw: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if raw is not None and raw not in allowed:
        raise InvalidRequest(f"'{name}' takes {' or '.join(allowed)}.", param=name)
    return raw


def _date(raw: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or time, in UTC (one without an offset is UTC)."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an ISO 8601 date or time.", param=name) from None
    return to_utc(value, name)


def _refuse_nul(request: Request) -> None:
    """PostgreSQL refuses NUL in text: an id or filter holding one is a 400, not a failed query."""
    for name, value in request.path_params.items():
        if "\x00" in value:
            raise InvalidRequest(f"'{name}' must not contain NUL characters.", param=name)
    raw = request.scope.get("query_string", b"")
    if b"%00" in raw or b"\x00" in raw:
        for name, values in parse_qs(raw.decode("latin-1"), keep_blank_values=True).items():
            if any("\x00" in value for value in values):
                raise InvalidRequest(f"'{name}' must not contain NUL characters.", param=name)
