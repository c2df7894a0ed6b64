"""The admin API's custom blocklists: `/admin/v1/blocklists` and their items.

Admins manage every project's lists, project admins their own project's; to anyone else another project's list
answers 404. Every change is audited. Changes reach request screening on every replica within seconds.
"""

from __future__ import annotations

from modelworks.api.admin import AdminHandlers, _list, _project_scope, _require, _run, _visible
from modelworks.api.admin_models import BlocklistCreate, BlocklistItemsAdd
from modelworks.api.http import JSONResult
from modelworks.api.request import Request
from modelworks.control.principal import ADMIN, PROJECT_ADMIN, Principal
from modelworks.errors import NotFound
from modelworks.protocol.parse import parse_request


class BlocklistHandlers:
    def __init__(self, admin: AdminHandlers) -> None:
        self.admin = admin
        self.service = admin.control.blocklists

    async def list(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.list")
        project_id = _project_scope(who, await self.admin._project_ref(who, request.query("project_id")))
        return _list("blocklist", await _run(self.service.list, project_id))

    async def create(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.create")
        body = await parse_request(BlocklistCreate, await request.body(self.admin.max_body))
        project_id = await self.admin._project_ref(who, body.project_id) or who.project_id
        _visible(who.can_manage(project_id), f"No project '{project_id}'.")
        await _run(self.admin.control.projects.get, project_id)
        row = await _run(self.service.create, project_id, body.name, body.description)
        await self.admin._audit(who, "blocklist.create", project_id, row["id"], {"name": body.name})
        return JSONResult({"object": "blocklist", **row}, status=201)

    async def get(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.get")
        row = await self._visible(who, request.path_params["blocklist_id"])
        return JSONResult({"object": "blocklist", **row})

    async def delete(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.delete")
        row = await self._visible(who, request.path_params["blocklist_id"])
        deleted = await _run(self.service.delete, row["id"])
        await self.admin._audit(who, "blocklist.delete", row["project_id"], row["id"], {"name": row["name"]})
        return JSONResult({"object": "blocklist", **deleted, "deleted": True})

    async def list_items(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.items.list")
        row = await self._visible(who, request.path_params["blocklist_id"])
        return _list("blocklist_item", await _run(self.service.items, row["id"]))

    async def add_items(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.items.add")
        row = await self._visible(who, request.path_params["blocklist_id"])
        body = await parse_request(BlocklistItemsAdd, await request.body(self.admin.max_body))
        items = await _run(self.service.add_items, row["id"], [i.model_dump() for i in body.items])
        # the audit keeps how many and of which kind, not the terms (they may be sensitive themselves)
        await self.admin._audit(who, "blocklist.items.add", row["project_id"], row["id"],
                                {"terms": sum(i.kind == "term" for i in body.items),
                                 "patterns": sum(i.kind == "regex" for i in body.items)})
        return JSONResult({"object": "list", "data": [{"object": "blocklist_item", **i} for i in items]}, status=201)

    async def remove_item(self, request: Request) -> JSONResult:
        who = await self._manager(request, "blocklists.items.remove")
        row = await self._visible(who, request.path_params["blocklist_id"])
        item = await _run(self.service.remove_item, row["id"], request.path_params["item_id"])
        await self.admin._audit(who, "blocklist.items.remove", row["project_id"], row["id"], {"item": item["id"]})
        return JSONResult({"object": "blocklist_item", **item, "deleted": True})

    async def _manager(self, request: Request, operation: str) -> Principal:
        who = await self.admin._who(request, operation)
        _require(who.role in (ADMIN, PROJECT_ADMIN), "Only admins and project admins manage blocklists.")
        return who

    async def _visible(self, who: Principal, blocklist_id: str) -> dict:
        try:
            row = await _run(self.service.get, blocklist_id)
        except NotFound:
            row = None
        _visible(row is not None and who.can_manage(row["project_id"]), f"No blocklist '{blocklist_id}'.")
        return row
