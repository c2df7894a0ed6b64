"""HTTP handlers of the Files API (`/v1/files`, `/openai/v1/files`): thin, the work is in `modelworks.files`."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from modelworks.api.http import ByteStream, JSONResult
from modelworks.api.request import Request, int_query
from modelworks.api.responses import dated_api_version
from modelworks.control.audit import Event
from modelworks.control.audit_writer import AuditWriter
from modelworks.errors import InvalidRequest
from modelworks.files.service import OUTPUT_PURPOSES, PURPOSES, FilesService
from modelworks.files.upload import read_upload
from modelworks.policies.chain import Call, PolicyChain


class FilesHandlers:
    def __init__(self, files: FilesService, chain: PolicyChain, audit: AuditWriter) -> None:
        self.files = files
        self.chain = chain
        self.audit = audit

    async def _who(self, request: Request, operation: str):
        if request.path.startswith("/openai/") and not request.path.startswith("/openai/v1/"):
            dated_api_version(request)  # Azure's resource-level dated paths (/openai/files?api-version=...)
        call = Call(operation=operation, headers=request.headers)
        await self.chain.authenticate(call)
        return call.principal

    async def create(self, request: Request) -> JSONResult:
        who = await self._who(request, "files.create")
        upload = await read_upload(request, self.files.spool, self.files.settings.max_file_bytes)
        body = await self.files.create(who.project_id, upload)
        await self.audit.submit(Event("file.create", actor=who.key_id, project_id=who.project_id, target=body["id"],
                                      detail={"purpose": body["purpose"], "bytes": body["bytes"],
                                              "filename": body["filename"]}))
        return JSONResult(body)

    async def list(self, request: Request) -> JSONResult:
        who = await self._who(request, "files.list")
        limit = int_query(request, "limit", 10000, 1, 10000)
        order = request.query("order") or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequest("Invalid value for 'order': 'asc' or 'desc'.", param="order", code="invalid_value")
        purpose = request.query("purpose")
        if purpose is not None and purpose not in PURPOSES + OUTPUT_PURPOSES:
            raise InvalidRequest(f"Invalid value for 'purpose': '{purpose[:64]}'.", param="purpose",
                                 code="invalid_value")
        items, more = await asyncio.to_thread(self.files.list, who.project_id, purpose=purpose, limit=limit,
                                              after=request.query("after"), descending=order == "desc")
        return JSONResult({"object": "list", "data": items, "has_more": more,
                           "first_id": items[0]["id"] if items else "", "last_id": items[-1]["id"] if items else ""})

    async def retrieve(self, request: Request) -> JSONResult:
        who = await self._who(request, "files.retrieve")
        return JSONResult(await asyncio.to_thread(self.files.get, who.project_id, request.path_params["file_id"]))

    async def delete(self, request: Request) -> JSONResult:
        who = await self._who(request, "files.delete")
        file_id = request.path_params["file_id"]
        body = await asyncio.to_thread(self.files.delete, who.project_id, file_id)
        await self.audit.submit(Event("file.delete", actor=who.key_id, project_id=who.project_id, target=file_id))
        return JSONResult(body)

    async def content(self, request: Request) -> ByteStream:
        who = await self._who(request, "files.content")
        row, chunks = await self.files.content(who.project_id, request.path_params["file_id"])
        disposition = f"attachment; filename*=UTF-8''{quote(row.filename, safe='')}"
        return ByteStream(chunks, {"content-type": row.media_type, "content-disposition": disposition,
                                   "x-content-type-options": "nosniff"}, length=row.bytes)
