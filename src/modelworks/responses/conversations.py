"""The Conversations API: a conversation is a stored list of items that responses read as their context and
append their input and output to."""

from __future__ import annotations

import asyncio

from modelworks.errors import NotFound
from modelworks.responses.items import new_id, normalize_input
from modelworks.responses.protocol import AddItems, CreateConversation, UpdateConversation
from modelworks.responses.store import ResponseStore

MAX_CREATE_ITEMS = 20


class ConversationsService:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def _lookup(self, project: str):
        return lambda item_id: asyncio.to_thread(self.store.find_item, project, item_id)

    async def create(self, project: str, req: CreateConversation) -> dict:
        items = await normalize_input(req.items or [], self._lookup(project), where="items", limit=MAX_CREATE_ITEMS)
        return await asyncio.to_thread(self.store.create_conversation, project, new_id("conv_"),
                                       req.metadata or {}, items)

    async def get(self, project: str, conversation_id: str) -> dict:
        found = await asyncio.to_thread(self.store.conversation, project, conversation_id)
        if found is None:
            raise _missing(conversation_id)
        return found

    async def update(self, project: str, conversation_id: str, req: UpdateConversation) -> dict:
        found = await asyncio.to_thread(self.store.update_conversation, project, conversation_id, req.metadata)
        if found is None:
            raise _missing(conversation_id)
        return found

    async def delete(self, project: str, conversation_id: str) -> dict:
        if not await asyncio.to_thread(self.store.delete_conversation, project, conversation_id):
            raise _missing(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def items(self, project: str, conversation_id: str, *, after: str | None, limit: int,
                    descending: bool) -> list[dict]:
        found = await asyncio.to_thread(self.store.conversation_items, project, conversation_id, after=after,
                                        limit=limit, descending=descending)
        if found is None:
            raise _missing(conversation_id)
        return found

    async def add_items(self, project: str, conversation_id: str, req: AddItems) -> list[dict]:
        items = await normalize_input(req.items, self._lookup(project), where="items")
        if not await asyncio.to_thread(self.store.add_conversation_items, project, conversation_id, items):
            raise _missing(conversation_id)
        return items

    async def item(self, project: str, conversation_id: str, item_id: str) -> dict:
        found = await asyncio.to_thread(self.store.conversation_item, project, conversation_id, item_id)
        if found is None:
            raise NotFound(f"Item with id '{item_id[:80]}' not found.", param="item_id")
        return found

    async def delete_item(self, project: str, conversation_id: str, item_id: str) -> dict:
        if not await asyncio.to_thread(self.store.delete_conversation_item, project, conversation_id, item_id):
            raise NotFound(f"Item with id '{item_id[:80]}' not found.", param="item_id")
        return await self.get(project, conversation_id)


def _missing(conversation_id: str) -> NotFound:
    return NotFound(f"Conversation with id '{conversation_id[:80]}' not found.", param="conversation_id")
