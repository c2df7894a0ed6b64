"""The Batch API's requests: create (the input file checked whole first), retrieve, list, cancel."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelworks.batches.store import BatchDB, now
from modelworks.batches.validate import ENDPOINTS, parse_lines
from modelworks.errors import InvalidRequest, NotFound
from modelworks.files.service import FilesService
from modelworks.responses.protocol import Metadata, check_metadata
from modelworks.service import Gateway
from modelworks.store.schema import BatchRow

BATCH_TYPES = ("GlobalBatch", "DataZoneBatch")
WINDOW = timedelta(hours=24)


class OutputExpiry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    anchor: str = Field(pattern="^created_at$")
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatch(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    output_expires_after: OutputExpiry | None = None

    _metadata = field_validator("metadata")(lambda cls, v: check_metadata(v))

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in ENDPOINTS:
            raise ValueError(f"one of {', '.join(ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value != "24h":
            raise ValueError("the only completion window is '24h'")
        return value


class BatchService:
    def __init__(self, store: BatchDB, files: FilesService, gateway: Gateway) -> None:
        self.store = store
        self.files = files
        self.gateway = gateway
        self.wake = asyncio.Event()  # the workers': lines are waiting

    async def create(self, who, req: CreateBatch, azure: bool) -> dict:
        try:
            file_row, data = await asyncio.to_thread(self.files.read_bytes, who.project_id, req.input_file_id)
        except NotFound:
            raise InvalidRequest(f"No file found with id '{req.input_file_id[:80]}'.", param="input_file_id",
                                 code="invalid_value") from None
        if file_row.purpose != "batch":
            raise InvalidRequest(f"The file '{req.input_file_id[:80]}' was uploaded with purpose "
                                 f"'{file_row.purpose}'; a batch's input needs purpose 'batch'.",
                                 param="input_file_id", code="invalid_value")
        lines, model = await asyncio.to_thread(parse_lines, data, req.endpoint)
        del data
        route = self.gateway.routes_get(model)
        if route is None:
            raise InvalidRequest(f"The input file has 1 invalid line(s): line {lines[0].number}: model "
                                 f"'{model[:100]}' is not a deployment here.",
                                 param="input_file_id", code="model_not_found")
        kind = route.info.get("deployment_type")
        if azure and kind not in BATCH_TYPES:
            raise InvalidRequest(f"The deployment '{model[:100]}' is of type {kind}; Azure OpenAI batches run on a "
                                 f"deployment of type {' or '.join(BATCH_TYPES)}.", param="input_file_id",
                                 code="invalid_deployment_type")
        at = now()
        row = BatchRow(id="batch_" + secrets.token_hex(12), project_id=who.project_id, key_id=who.key_id,
                       endpoint=req.endpoint, model=model, input_file_id=req.input_file_id,
                       completion_window=req.completion_window, status="validating", created_at=at,
                       expires_at=at + WINDOW, metadata_json=json.dumps(req.metadata or {}),
                       output_expires_s=req.output_expires_after.seconds if req.output_expires_after else None,
                       total=len(lines))
        await asyncio.to_thread(self.store.create, row, lines)
        self.wake.set()
        return await asyncio.to_thread(self.store.get, who.project_id, row.id)

    async def get(self, project_id: str, batch_id: str) -> dict:
        return await asyncio.to_thread(self.store.get, project_id, batch_id)

    async def list(self, project_id: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        return await asyncio.to_thread(self.store.list, project_id, limit=limit, after=after)

    async def cancel(self, project_id: str, batch_id: str) -> dict:
        body = await asyncio.to_thread(self.store.cancel, project_id, batch_id)
        self.wake.set()
        return body
