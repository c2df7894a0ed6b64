"""HTTP handlers of the Responses and Conversations APIs (`/v1/...` and `/openai/v1/...`): thin, the work is in
`modelworks.responses`."""

from __future__ import annotations

from modelworks.api.http import EventStream, JSONResult
from modelworks.api.request import Request
from modelworks.errors import InvalidRequest, MissingApiVersion
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol.api_version import api_version_supported
from modelworks.protocol.parse import parse_request
from modelworks.responses.conversations import ConversationsService
from modelworks.responses.protocol import (
    AddItems, CreateConversation, CreateResponse, InputTokensRequest, UpdateConversation,
)
from modelworks.responses.service import ResponsesService


class ResponsesHandlers:
    def __init__(self, service: ResponsesService, conversations: ConversationsService, chain: PolicyChain,
                 max_body_bytes: int) -> None:
        self.service = service
        self.conversations = conversations
        self.chain = chain
        self.max_body = max_body_bytes

    async def _who(self, request: Request, operation: str) -> Call:
        if request.path.startswith("/openai/") and not request.path.startswith("/openai/v1/"):
            dated_api_version(request)  # Azure's resource-level dated paths (/openai/responses?api-version=...)
        call = Call(operation=operation, headers=request.headers)
        await self.chain.authenticate(call)
        return call

    async def _project(self, request: Request, operation: str) -> str:
        return (await self._who(request, operation)).principal.project_id

    # -- responses --------------------------------------------------------------------------------------------

    async def create(self, request: Request) -> JSONResult | EventStream:
        call = await self._who(request, "responses")
        req = await parse_request(CreateResponse, await request.body(self.max_body))
        if not req.background:  # a background run goes on when its client leaves
            request.watch_disconnect()
        result = await self.service.create(call, req)
        if isinstance(result, (dict, bytes)):
            return JSONResult(result, headers=call.response_headers if not req.background else None)
        return EventStream(b"", result, headers=call.response_headers)

    async def retrieve(self, request: Request) -> JSONResult | EventStream:
        project = await self._project(request, "responses.retrieve")
        response_id = request.path_params["response_id"]
        if request.query("stream") in (None, "false"):
            return JSONResult(await self.service.retrieve(project, response_id))
        if request.query("stream") != "true":
            raise InvalidRequest("Invalid value for 'stream': true or false.", param="stream", code="invalid_value")
        after = request.query("starting_after")
        try:
            start = -1 if after is None else int(after)
        except ValueError:
            start = -2
        if start < -1:
            raise InvalidRequest("Invalid value for 'starting_after': a sequence number (0 or more).",
                                 param="starting_after", code="invalid_value")
        return EventStream(b"", await self.service.stream_stored(project, response_id, start))

    async def delete(self, request: Request) -> JSONResult:
        project = await self._project(request, "responses.delete")
        return JSONResult(await self.service.delete(project, request.path_params["response_id"]))

    async def cancel(self, request: Request) -> JSONResult:
        project = await self._project(request, "responses.cancel")
        return JSONResult(await self.service.cancel(project, request.path_params["response_id"]))

    async def input_items(self, request: Request) -> JSONResult:
        project = await self._project(request, "responses.input_items")
        items = await self.service.input_items(project, request.path_params["response_id"])
        return JSONResult(page(items, request, default_order="desc"))

    async def input_tokens(self, request: Request) -> JSONResult:
        call = await self._who(request, "responses.input_tokens")
        req = await parse_request(InputTokensRequest, await request.body(self.max_body))
        tokens = await self.service.input_tokens(call, req)
        return JSONResult({"object": "response.input_tokens", "input_tokens": tokens})

    # -- conversations ----------------------------------------------------------------------------------------

    async def create_conversation(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.create")
        req = await parse_request(CreateConversation, await request.body(self.max_body))
        return JSONResult(await self.conversations.create(project, req))

    async def get_conversation(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.retrieve")
        return JSONResult(await self.conversations.get(project, request.path_params["conversation_id"]))

    async def update_conversation(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.update")
        req = await parse_request(UpdateConversation, await request.body(self.max_body))
        return JSONResult(await self.conversations.update(project, request.path_params["conversation_id"], req))

    async def delete_conversation(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.delete")
        return JSONResult(await self.conversations.delete(project, request.path_params["conversation_id"]))

    async def list_items(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.items.list")
        limit, order, after = page_params(request, default_order="desc")
        items = await self.conversations.items(project, request.path_params["conversation_id"], after=after,
                                               limit=limit + 1, descending=order == "desc")
        return JSONResult(listing(items[:limit], has_more=len(items) > limit))

    async def add_items(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.items.create")
        req = await parse_request(AddItems, await request.body(self.max_body))
        items = await self.conversations.add_items(project, request.path_params["conversation_id"], req)
        return JSONResult(listing(items, has_more=False))

    async def get_item(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.items.retrieve")
        p = request.path_params
        return JSONResult(await self.conversations.item(project, p["conversation_id"], p["item_id"]))

    async def delete_item(self, request: Request) -> JSONResult:
        project = await self._project(request, "conversations.items.delete")
        p = request.path_params
        return JSONResult(await self.conversations.delete_item(project, p["conversation_id"], p["item_id"]))


def dated_api_version(request: Request) -> None:
    version = request.query("api-version")
    if version is None:
        raise MissingApiVersion("Missing the required query parameter 'api-version' (for example "
                                "api-version=2025-04-01-preview).", param="api-version")
    if not api_version_supported(version):
        raise InvalidRequest(f"Unsupported api-version '{version[:40]}'. Use a dated version such as "
                             "2025-04-01-preview.", param="api-version", code="invalid_api_version")


def page_params(request: Request, *, default_order: str) -> tuple[int, str, str | None]:
    raw_limit = request.query("limit")
    try:
        limit = 20 if raw_limit is None else int(raw_limit)
    except ValueError:
        limit = -1
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': an integer from 1 to 100.", param="limit",
                             code="invalid_value")
    order = request.query("order") or default_order
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': 'asc' or 'desc'.", param="order", code="invalid_value")
    return limit, order, request.query("after")


def page(items: list[dict], request: Request, *, default_order: str) -> dict:
    """A list page of items held in order (oldest first): `order`, `after` (an item id) and `limit`."""
    limit, order, after = page_params(request, default_order=default_order)
    ordered = list(reversed(items)) if order == "desc" else items
    if after is not None:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else ordered
    return listing(ordered[:limit], has_more=len(ordered) > limit)


def listing(items: list[dict], *, has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more,
            "first_id": items[0]["id"] if items else "", "last_id": items[-1]["id"] if items else ""}
