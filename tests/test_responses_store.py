"""The Responses store on its own, on SQLite and PostgreSQL: retention purges responses, their items and events
and conversations; an expired response reads as absent before it is purged; replays are idempotent."""

from __future__ import annotations

import time
from datetime import timedelta

from modelworks.responses.store import ResponseStore
from modelworks.store.db import Database


def _body(response_id: str, previous: str | None = None) -> dict:
    return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
            "previous_response_id": previous, "output": [], "model": "m"}


def _item(text: str) -> dict:
    return {"id": f"msg_{text}", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


def test_retention_purges_everything(database_url):
    db = Database(database_url)
    db.upgrade()
    store = ResponseStore(db, timedelta(seconds=1))
    store.insert_finished([("p", _body("resp_a"), [_item("a")], [], None)])
    store.insert_finished([("p", _body("resp_b", "resp_a"), [_item("b")], [], None)])
    store.insert_finished([("p", _body("resp_b", "resp_a"), [_item("b")], [], None)])  # a replay: no error
    conversation = store.create_conversation("p", "conv_a", {}, [_item("c")])
    assert [i["id"] for i in store.context("p", "resp_b")] == ["msg_a", "msg_b"]
    assert store.context("q", "resp_b") is None  # another project's
    assert store.conversation("p", conversation["id"]) is not None
    time.sleep(1.2)
    assert store.get("p", "resp_a") is None and store.context("p", "resp_b") is None  # expired: absent
    assert store.purge() == 3
    assert store.input_items("p", "resp_a") is None
    assert store.conversation_items("p", "conv_a") is None
    db.dispose()
