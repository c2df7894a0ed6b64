"""The Keys and projects screen: keys (display prefix, role, project, created, last used, expiry, revoked) with
create, the secret shown once, and revoke; projects with their budgets and this month's spend against them.

Admins see every project; a project admin sees and manages only their own project's keys. Changes go through the
same services, request models, rules and audit entries as `/admin/v1/keys` and `/admin/v1/projects`.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timezone

from pydantic import ValidationError

from modelworks.api.admin_models import KeyCreate, ProjectCreate, ProjectUpdate
from modelworks.control.plane import ControlPlane
from modelworks.control.principal import ADMIN, PROJECT_ADMIN, ROLES
from modelworks.errors import Forbidden, InvalidRequest, NotFound
from modelworks.portal.sessions import SessionService
from modelworks.portal.web import Page, Redirect, Visit, audit, form_error as _message, number, require


class KeysScreen:
    def __init__(self, control: ControlPlane, sessions: SessionService) -> None:
        self.control = control
        self.sessions = sessions  # a key's form acts once (see `SessionService.use_form`)

    async def list(self, visit: Visit, **extra) -> Page:
        who = require(visit, (ADMIN, PROJECT_ADMIN), "Only admins and project admins manage keys.")
        status = extra.pop("status", 200)
        scope = None if who.is_admin else who.project_id
        keys, projects = await asyncio.gather(asyncio.to_thread(self.control.keys.list, scope),
                                              asyncio.to_thread(self.control.projects.list, scope))
        budgets = await asyncio.gather(*(asyncio.to_thread(self.control.budget, p["id"]) for p in projects))
        names = {p["id"]: p["name"] for p in projects}
        for key in keys:
            key["project_name"] = names.get(key["project_id"], key["project_id"])
        for project, budget in zip(projects, budgets):
            project["budget"] = budget
        roles = ROLES if who.is_admin else tuple(r for r in ROLES if r != ADMIN)
        return Page("keys.html", {"keys": list(reversed(keys)), "projects": projects, "roles": roles,
                                  "once": secrets.token_urlsafe(16),
                                  "is_admin": who.is_admin, **extra}, status=status)

    async def create_key(self, visit: Visit) -> Page:
        """The new key's secret is on this page only (the answer to the form, never stored, never redirected to)."""
        who = require(visit, (ADMIN, PROJECT_ADMIN), "Only admins and project admins manage keys.")
        form = visit.form
        token = form.get("once", "")
        if not token or not await asyncio.to_thread(self.sessions.use_form, visit.session.id_hash, token):
            return await self.list(visit, error="This form was sent already: its key was created and its secret "
                                                "shown then, once. If it was not copied, revoke that key and "
                                                "create another.", status=409)
        try:
            body = KeyCreate.model_validate({k: v for k, v in (
                ("name", form.get("name", "").strip() or None), ("role", form.get("role") or "user"),
                ("project_id", form.get("project_id") or None), ("expires_at", _day(form.get("expires")))) if v})
            project_id = body.project_id or who.project_id
            if not who.can_read(project_id):
                raise NotFound(f"No project '{project_id}'.", param="project_id")
            if body.role == ADMIN and not who.is_admin:
                raise Forbidden("Only admins create admin keys.")
            created = await asyncio.to_thread(self.control.keys.create, project_id, body.role, body.name,
                                              expires_at=body.expires_at)
        except (InvalidRequest, NotFound, ValidationError) as exc:
            return await self.list(visit, error=_message(exc), status=400)
        await audit(self.control, visit, "key.create", project_id, created.record["id"],
                          {"name": created.record["name"], "role": body.role,
                           "expires_at": created.record["expires_at"]})
        return await self.list(visit, created={**created.record, "key": created.key})

    async def revoke_key(self, visit: Visit) -> Redirect:
        who = require(visit, (ADMIN, PROJECT_ADMIN), "Only admins and project admins manage keys.")
        key_id = visit.request.path_params["key_id"]
        try:
            record = await asyncio.to_thread(self.control.keys.get, key_id)
        except NotFound:
            record = None
        if record is None or not who.can_manage(record["project_id"]):
            raise NotFound(f"No key '{key_id[:60]}'.")
        await asyncio.to_thread(self.control.keys.revoke, key_id)
        self.control.auth.forget()  # at once on this replica; the others within the key cache time
        await audit(self.control, visit, "key.revoke", record["project_id"], key_id, {"name": record["name"]})
        return Redirect("/portal/keys?revoked=" + key_id)

    async def create_project(self, visit: Visit) -> Page | Redirect:
        require(visit, (ADMIN,), "Only admins manage projects.")
        form = visit.form
        try:
            body = ProjectCreate.model_validate({"name": form.get("name", "").strip(), **_caps(form)})
            row = await asyncio.to_thread(self.control.projects.create, **body.model_dump())
        except (InvalidRequest, ValidationError) as exc:
            return await self.list(visit, error=_message(exc), status=400)
        await audit(self.control, visit, "project.create", row["id"], row["id"], body.model_dump(exclude_none=True))
        return Redirect("/portal/keys?project=" + row["id"])

    async def update_project(self, visit: Visit) -> Page | Redirect:
        require(visit, (ADMIN,), "Only admins manage projects.")
        project_id = visit.request.path_params["project_id"]
        try:
            changes = ProjectUpdate.model_validate(_caps(visit.form, clear=True)).model_dump(exclude_unset=True)
            await asyncio.to_thread(self.control.projects.update, project_id, changes)
        except (InvalidRequest, ValidationError) as exc:
            return await self.list(visit, error=_message(exc), status=400)
        await audit(self.control, visit, "project.update", project_id, project_id, changes)
        return Redirect("/portal/keys?project=" + project_id)


def _day(raw: str | None) -> datetime | None:
    """A date field (YYYY-MM-DD): the key expires at the start of that day, UTC."""
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidRequest("'expires' must be a date (YYYY-MM-DD).", param="expires_at") from None


def _caps(form: dict, *, clear: bool = False) -> dict:
    """The budget fields of a project form, typed; on an edit, an emptied field removes that cap."""
    out: dict = {}
    for name, kind in (("monthly_token_cap", int), ("monthly_cost_cap", float), ("soft_threshold", float)):
        value = number(form, name, kind)
        if value is not None or (clear and name != "soft_threshold"):
            out[name] = value
    return out

