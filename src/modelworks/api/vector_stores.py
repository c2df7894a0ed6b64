"""HTTP handlers of the Vector Stores API (`/v1/vector_stores`, `/openai/v1/vector_stores`): thin, the work is in
`modelworks.vectors`. Another project's store is answered as missing (404)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.api.http import JSONResult
from modelworks.api.request import Request, int_query
from modelworks.control.audit import Event
from modelworks.control.audit_writer import AuditWriter
from modelworks.errors import InvalidRequest
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol.parse import parse_request
from modelworks.vectors.protocol import (
    CreateFileBatch, CreateVectorStore, CreateVectorStoreFile, SearchRequest, UpdateAttributes, UpdateVectorStore,
)
from modelworks.vectors.store import STATUSES

if TYPE_CHECKING:
    from modelworks.vectors.service import VectorStoresService  # NumPy: loaded when the app is built


class VectorStoreHandlers:
    def __init__(self, service: VectorStoresService, chain: PolicyChain, audit: AuditWriter,
                 max_body_bytes: int) -> None:
        self.service = service
        self.chain = chain
        self.audit = audit
        self.max_body = max_body_bytes

    async def _call(self, request: Request, operation: str) -> Call:
        call = Call(operation=operation, headers=request.headers)
        await self.chain.authenticate(call)
        return call

    async def _body(self, request: Request, model):
        return await parse_request(model, await request.body(self.max_body))

    # -- stores ---------------------------------------------------------------------------------------------------

    async def create(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.create")).principal
        body = await self.service.create(who, await self._body(request, CreateVectorStore))
        await self.audit.submit(Event("vector_store.create", actor=who.key_id, project_id=who.project_id,
                                      target=body["id"], detail={"files": body["file_counts"]["total"]}))
        return JSONResult(body)

    async def list(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.list")).principal
        items, more = await self.service.list(who.project_id, **_page(request))
        return JSONResult(_listing(items, more))

    async def retrieve(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.retrieve")).principal
        return JSONResult(await self.service.get(who.project_id, request.path_params["vector_store_id"]))

    async def update(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.update")).principal
        req = await self._body(request, UpdateVectorStore)
        return JSONResult(await self.service.update(who.project_id, request.path_params["vector_store_id"], req))

    async def delete(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.delete")).principal
        store_id = request.path_params["vector_store_id"]
        body = await self.service.delete(who.project_id, store_id)
        await self.audit.submit(Event("vector_store.delete", actor=who.key_id, project_id=who.project_id,
                                      target=store_id))
        return JSONResult(body)

    async def search(self, request: Request) -> JSONResult:
        call = await self._call(request, "vector_stores.search")
        req = await self._body(request, SearchRequest)
        request.watch_disconnect()
        queries, items = await self.service.search(call.principal, call, [request.path_params["vector_store_id"]],
                                                   req)
        return JSONResult({"object": "vector_store.search_results.page", "search_query": queries, "data": items,
                           "has_more": False, "next_page": None}, headers=call.response_headers or None)

    # -- files ----------------------------------------------------------------------------------------------------

    async def add_file(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.create")).principal
        req = await self._body(request, CreateVectorStoreFile)
        return JSONResult(await self.service.add_file(who, request.path_params["vector_store_id"], req))

    async def list_files(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.list")).principal
        items, more = await self.service.list_files(who.project_id, request.path_params["vector_store_id"],
                                                    status=_status(request), batch_id=None, **_page(request))
        return JSONResult(_listing(items, more))

    async def get_file(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.retrieve")).principal
        p = request.path_params
        return JSONResult(await self.service.get_file(who.project_id, p["vector_store_id"], p["file_id"]))

    async def update_file(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.update")).principal
        req = await self._body(request, UpdateAttributes)
        p = request.path_params
        return JSONResult(await self.service.update_file(who.project_id, p["vector_store_id"], p["file_id"], req))

    async def delete_file(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.delete")).principal
        p = request.path_params
        return JSONResult(await self.service.delete_file(who.project_id, p["vector_store_id"], p["file_id"]))

    async def file_content(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.files.content")).principal
        p = request.path_params
        return JSONResult(await self.service.file_content(who.project_id, p["vector_store_id"], p["file_id"]))

    # -- file batches ---------------------------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.file_batches.create")).principal
        req = await self._body(request, CreateFileBatch)
        return JSONResult(await self.service.create_batch(who, request.path_params["vector_store_id"], req))

    async def get_batch(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.file_batches.retrieve")).principal
        p = request.path_params
        return JSONResult(await self.service.get_batch(who.project_id, p["vector_store_id"], p["batch_id"]))

    async def cancel_batch(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.file_batches.cancel")).principal
        p = request.path_params
        return JSONResult(await self.service.get_batch(who.project_id, p["vector_store_id"], p["batch_id"],
                                                       cancel=True))

    async def batch_files(self, request: Request) -> JSONResult:
        who = (await self._call(request, "vector_stores.file_batches.files")).principal
        p = request.path_params
        items, more = await self.service.batch_files(who.project_id, p["vector_store_id"], p["batch_id"],
                                                     status=_status(request), **_page(request))
        return JSONResult(_listing(items, more))


def _page(request: Request) -> dict:
    limit = int_query(request, "limit", 20, 1, 100)
    order = request.query("order") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': 'asc' or 'desc'.", param="order", code="invalid_value")
    return {"limit": limit, "after": request.query("after"), "before": request.query("before"),
            "descending": order == "desc"}


def _status(request: Request) -> str | None:
    status = request.query("filter")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"Invalid value for 'filter': one of {', '.join(STATUSES)}.", param="filter",
                             code="invalid_value")
    return status


def _listing(items: list[dict], more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": more, "first_id": items[0]["id"] if items else "",
            "last_id": items[-1]["id"] if items else ""}
