"""The Content filters screen: each content-filter policy with its per-category thresholds for prompts and
completions and the deployments that use it; the project's blocklists and their items (create, add, remove).

Policies come from the config file (read-only here). Blocklists go through the same service, checks and audit
entries as `/admin/v1/blocklists` (the audit records how many terms and patterns were added, never the terms).
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from modelworks.api.admin_models import BlocklistCreate, BlocklistItem
from modelworks.control.plane import ControlPlane
from modelworks.control.principal import ADMIN, PROJECT_ADMIN
from modelworks.errors import InvalidRequest, NotFound
from modelworks.portal.web import Page, Redirect, Visit, audit, form_error, require

MANAGERS = (ADMIN, PROJECT_ADMIN)
MANAGERS_ONLY = "Only admins and project admins see content filters and manage blocklists."
HARMS = ("hate", "sexual", "violence", "self_harm")


class FiltersScreen:
    def __init__(self, control: ControlPlane, policies: dict) -> None:
        self.control = control
        self.policies = policies  # name -> ContentFilterPolicy, from the settings

    async def page(self, visit: Visit, **extra) -> Page:
        who = require(visit, MANAGERS, MANAGERS_ONLY)
        status = extra.pop("status", 200)
        deployments, lists, projects = await asyncio.gather(
            asyncio.to_thread(self.control.deployments.all),
            asyncio.to_thread(self.control.blocklists.list, None if who.is_admin else who.project_id),
            asyncio.to_thread(self.control.projects.list, None if who.is_admin else who.project_id))
        users: dict[str, list[str]] = {}
        for d in deployments:
            users.setdefault(d["content_filter_policy"] or "default", []).append(d["name"])
        items = await asyncio.gather(*(asyncio.to_thread(self.control.blocklists.items, b["id"]) for b in lists))
        for blocklist, its_items in zip(lists, items):
            blocklist["items"] = its_items
        names = {p["id"]: p["name"] for p in projects}
        for blocklist in lists:
            blocklist["project_name"] = names.get(blocklist["project_id"], blocklist["project_id"])
        return Page("filters.html", {
            "policies": [_policy_view(name, policy, users.get(name, [])) for name, policy in
                         sorted(self.policies.items())],
            "blocklists": lists, "projects": projects, "is_admin": who.is_admin, **extra}, status=status)

    async def create_blocklist(self, visit: Visit) -> Page | Redirect:
        who = require(visit, MANAGERS, MANAGERS_ONLY)
        form = visit.form
        try:
            body = BlocklistCreate.model_validate({k: v for k, v in (
                ("name", form.get("name", "").strip()), ("description", form.get("description", "").strip() or None),
                ("project_id", form.get("project_id") or None)) if v is not None})
            project_id = body.project_id or who.project_id
            if not who.can_manage(project_id):
                raise NotFound(f"No project '{project_id}'.", param="project_id")
            await asyncio.to_thread(self.control.projects.get, project_id)  # NotFound for one that is not there
            row = await asyncio.to_thread(self.control.blocklists.create, project_id, body.name, body.description)
        except (InvalidRequest, NotFound, ValidationError) as exc:
            return await self.page(visit, error=form_error(exc), status=400)
        await audit(self.control, visit, "blocklist.create", project_id, row["id"], {"name": body.name})
        return Redirect(f"/portal/filters#{row['id']}")

    async def add_item(self, visit: Visit) -> Page | Redirect:
        row = await self._blocklist(visit)
        form = visit.form
        try:
            item = BlocklistItem.model_validate({"kind": form.get("kind") or "term", "value": form.get("value", "")})
            await asyncio.to_thread(self.control.blocklists.add_items, row["id"], [item.model_dump()])
        except (InvalidRequest, ValidationError) as exc:
            return await self.page(visit, error=form_error(exc).replace("items[0].", ""), status=400)
        await audit(self.control, visit, "blocklist.items.add", row["project_id"], row["id"],
                          {"terms": int(item.kind == "term"), "patterns": int(item.kind == "regex")})
        return Redirect(f"/portal/filters#{row['id']}")

    async def remove_item(self, visit: Visit) -> Redirect:
        row = await self._blocklist(visit)
        item_id = visit.request.path_params["item_id"]
        item = await asyncio.to_thread(self.control.blocklists.remove_item, row["id"], item_id)
        await audit(self.control, visit, "blocklist.items.remove", row["project_id"], row["id"], {"item": item["id"]})
        return Redirect(f"/portal/filters#{row['id']}")

    async def delete_blocklist(self, visit: Visit) -> Redirect:
        row = await self._blocklist(visit)
        await asyncio.to_thread(self.control.blocklists.delete, row["id"])
        await audit(self.control, visit, "blocklist.delete", row["project_id"], row["id"], {"name": row["name"]})
        return Redirect("/portal/filters")

    async def _blocklist(self, visit: Visit) -> dict:
        who = require(visit, MANAGERS, MANAGERS_ONLY)
        blocklist_id = visit.request.path_params["blocklist_id"]
        try:
            row = await asyncio.to_thread(self.control.blocklists.get, blocklist_id)
        except NotFound:
            row = None
        if row is None or not who.can_manage(row["project_id"]):
            raise NotFound(f"No blocklist '{blocklist_id[:60]}'.")
        return row


def _policy_view(name: str, policy, deployments: list[str]) -> dict:
    sides = {}
    for side in ("prompt", "completion"):
        d = getattr(policy, side)
        sides[side] = {**{h: {"threshold": d.harm(h).threshold, "action": d.harm(h).action} for h in HARMS},
                       "pii": d.pii.action, "profanity": d.profanity, "blocklists": d.blocklists}
    return {"name": name, "sides": sides, "jailbreak": policy.jailbreak, "indirect_attack": policy.indirect_attack,
            "harmful_request": policy.harmful_request,
            "blocklists": policy.blocklists, "judge": policy.judge.deployment if policy.judge else None,
            "stream_mode": policy.stream_mode, "fail_closed": policy.fail_closed, "deployments": deployments,
            "harms": HARMS}
