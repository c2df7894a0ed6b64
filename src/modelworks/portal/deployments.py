"""The Deployments screen: every deployment with its type, place, quota (and what the last minute used of it),
content-filter policy and backends (health and circuit); admins create, edit, disable and delete them.

Changes go through the same service, validation (the admin API's request models), audit entries and catalog
reload as `/admin/v1/deployments`, so a deployment made here serves at once, on every replica.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from pydantic import ValidationError

from modelworks.api.admin_models import DeploymentCreate, DeploymentUpdate
from modelworks.catalog import Catalog
from modelworks.control.plane import ControlPlane
from modelworks.errors import InvalidRequest, NotFound
from modelworks.portal.web import Page, Redirect, Visit, audit, form_error as _message, number, require
from modelworks.settings import DEPLOYMENT_TYPES

TPM_STEP = 1000
ADMINS, MANAGERS = ("admin",), ("admin", "project_admin")
_NUMBERS = {"tpm": int, "rpm": int, "price_input_per_1k": float, "price_output_per_1k": float}
_TEXTS = ("model", "region", "content_filter_policy", "spillover", "owned_by")


class DeploymentsScreen:
    def __init__(self, control: ControlPlane, catalog: Catalog, backend_states) -> None:
        self.control = control
        self.catalog = catalog
        self.backend_states = backend_states  # () -> {backend name: its live state}, as the overview shows them

    async def list(self, visit: Visit) -> Page:
        require(visit, MANAGERS, "Only admins and project admins see the deployments screen.")
        return Page("deployments.html", await self._context(visit))

    async def _context(self, visit: Visit, **extra) -> dict:
        rows = await asyncio.to_thread(self.control.deployments.all)
        since = datetime.now(timezone.utc) - timedelta(minutes=1)
        scope = None if visit.who.is_admin else visit.who.project_id  # a project admin sees their project's use
        used = await asyncio.to_thread(self.control.usage.aggregate, project_id=scope, since=since, until=None,
                                       group_by=("deployment",))
        tokens = {u["deployment"]: u["prompt_tokens"] + u["completion_tokens"] for u in used}
        states = self.backend_states()
        for row in rows:
            row["used_last_minute"] = tokens.get(row["name"], 0)
            row["backend_states"] = [states.get(b, {"name": b, "healthy": None, "circuit": "unknown"})
                                     for b in row["backends"]]
        return {"deployments": rows, "can_edit": visit.who.is_admin, "types": DEPLOYMENT_TYPES,
                "backends": sorted(self.control.deployments.backend_names),
                "policies": sorted(self.control.deployments.policy_names), "tpm_step": TPM_STEP, **extra}

    async def create(self, visit: Visit) -> Page | Redirect:
        require(visit, ADMINS, "Only admins manage deployments.")
        form = visit.form
        try:
            values = _values(form, creating=True)
            body = DeploymentCreate.model_validate(values)
            made = body.model_dump(exclude={"name"})
            await asyncio.to_thread(self.control.deployments.create, body.name, made)
        except (InvalidRequest, ValidationError) as exc:
            return await self._form_error(visit, exc, "deployments.html", form)
        await self.catalog.reload()
        await audit(self.control, visit, "deployment.create", None, body.name, made)
        return Redirect(f"/portal/deployments?made={body.name}")

    async def edit_form(self, visit: Visit) -> Page:
        require(visit, MANAGERS, "Only admins and project admins see the deployments screen.")
        row = await self._row(visit)
        return Page("deployment_edit.html", await self._edit_context(visit, row))

    async def _edit_context(self, visit: Visit, row: dict, **extra) -> dict:
        context = await self._context(visit)
        return {**context, "d": row, "editable": visit.who.is_admin and row["source"] != "config", **extra}

    async def update(self, visit: Visit) -> Page | Redirect:
        require(visit, ADMINS, "Only admins manage deployments.")
        row = await self._row(visit)
        form = visit.form
        try:
            changes = DeploymentUpdate.model_validate(_values(form, creating=False)).model_dump(exclude_unset=True)
            await asyncio.to_thread(self.control.deployments.update, row["name"], changes)
        except (InvalidRequest, ValidationError) as exc:
            return Page("deployment_edit.html", await self._edit_context(visit, {**row, **_shown(form)},
                                                                         error=_message(exc)), status=400)
        await self.catalog.reload()
        await audit(self.control, visit, "deployment.update", None, row["name"], changes)
        return Redirect(f"/portal/deployments/{row['name']}?saved=1")

    async def toggle(self, visit: Visit) -> Redirect:
        """Disable (or enable) at once: a disabled deployment answers 404 to inference at once."""
        require(visit, ADMINS, "Only admins manage deployments.")
        row = await self._row(visit)
        enabled = visit.form.get("enabled") == "true"
        await asyncio.to_thread(self.control.deployments.update, row["name"], {"enabled": enabled})
        await self.catalog.reload()
        await audit(self.control, visit, "deployment.update", None, row["name"], {"enabled": enabled})
        return Redirect(f"/portal/deployments/{row['name']}")

    async def delete(self, visit: Visit) -> Redirect:
        require(visit, ADMINS, "Only admins manage deployments.")
        row = await self._row(visit)
        if visit.form.get("confirm") != row["name"]:
            raise InvalidRequest(f"Type the deployment's name ('{row['name']}') to delete it.", param="confirm")
        await asyncio.to_thread(self.control.deployments.delete, row["name"])
        await self.catalog.reload()
        await audit(self.control, visit, "deployment.delete", None, row["name"], {})
        return Redirect(f"/portal/deployments?deleted={row['name']}")

    async def _row(self, visit: Visit) -> dict:
        name = visit.request.path_params["name"]
        try:
            return await asyncio.to_thread(self.control.deployments.get, name)
        except NotFound:
            raise NotFound(f"No deployment '{name[:100]}'.") from None

    async def _form_error(self, visit: Visit, exc: Exception, template: str, form: dict) -> Page:
        return Page(template, await self._context(visit, error=_message(exc), draft=_shown(form)), status=400)


def _values(form: dict, *, creating: bool) -> dict:
    """The form's fields as the admin API's request model takes them (typed; empty fields left out; on an edit,
    an emptied optional field is set to null)."""
    values: dict = {}
    if creating:
        values["name"] = form.get("name", "").strip()
    backends = [b for b in form.get("backends", "").replace("\n", ",").split(",") if b.strip()]
    if backends or creating:
        values["backends"] = [b.strip() for b in backends]
    if form.get("deployment_type"):
        values["deployment_type"] = form["deployment_type"]
    zone = form.get("data_zone", "").strip()
    if zone or not creating:
        values["data_zone"] = zone or None
    for name, kind in _NUMBERS.items():
        value = number(form, name, kind)
        if value is not None or (not creating and name in ("tpm", "rpm")):
            values[name] = value
    if values.get("tpm") is not None and values["tpm"] % TPM_STEP:
        raise InvalidRequest(f"TPM is set in steps of {TPM_STEP:,}.", param="tpm")
    for name in _TEXTS:
        raw = form.get(name, "").strip()
        if raw:
            values[name] = raw
        elif not creating and name in ("model", "region", "content_filter_policy", "spillover"):
            values[name] = None
    if "enabled" in form or not creating:
        values["enabled"] = form.get("enabled") in ("on", "true", "1")
    return values


def _shown(form: dict) -> dict:
    """The form as it was sent, to fill it again after an error."""
    return {k: v for k, v in form.items() if k != "csrf"}

