"""HTTP handlers of the Batch API (`/v1/batches`, `/openai/v1/batches`, Azure's dated `/openai/batches`): thin,
the work is in `modelworks.batches`. Another project's batch is answered as missing (404)."""

from __future__ import annotations

from modelworks.api.http import JSONResult
from modelworks.api.request import Request, int_query
from modelworks.api.responses import dated_api_version
from modelworks.batches.service import BatchService, CreateBatch
from modelworks.control.audit import Event
from modelworks.control.audit_writer import AuditWriter
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol.parse import parse_request


class BatchHandlers:
    def __init__(self, service: BatchService, chain: PolicyChain, audit: AuditWriter, max_body_bytes: int) -> None:
        self.service = service
        self.chain = chain
        self.audit = audit
        self.max_body = max_body_bytes

    async def _who(self, request: Request, operation: str):
        if request.path.startswith("/openai/") and not request.path.startswith("/openai/v1/"):
            dated_api_version(request)
        call = Call(operation=operation, headers=request.headers)
        await self.chain.authenticate(call)
        return call.principal

    async def create(self, request: Request) -> JSONResult:
        who = await self._who(request, "batches.create")
        req = await parse_request(CreateBatch, await request.body(self.max_body))
        body = await self.service.create(who, req, azure=request.path.startswith("/openai/"))
        await self.audit.submit(Event("batch.create", actor=who.key_id, project_id=who.project_id, target=body["id"],
                                      detail={"endpoint": body["endpoint"], "model": body["model"],
                                              "lines": body["request_counts"]["total"]}))
        return JSONResult(body)

    async def retrieve(self, request: Request) -> JSONResult:
        who = await self._who(request, "batches.retrieve")
        return JSONResult(await self.service.get(who.project_id, request.path_params["batch_id"]))

    async def list(self, request: Request) -> JSONResult:
        who = await self._who(request, "batches.list")
        limit = int_query(request, "limit", 20, 1, 100)
        items, more = await self.service.list(who.project_id, limit, request.query("after"))
        return JSONResult({"object": "list", "data": items, "has_more": more,
                           "first_id": items[0]["id"] if items else "", "last_id": items[-1]["id"] if items else ""})

    async def cancel(self, request: Request) -> JSONResult:
        who = await self._who(request, "batches.cancel")
        batch_id = request.path_params["batch_id"]
        body = await self.service.cancel(who.project_id, batch_id)
        await self.audit.submit(Event("batch.cancel", actor=who.key_id, project_id=who.project_id, target=batch_id))
        return JSONResult(body)
