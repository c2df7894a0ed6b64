"""A continued response's model call built from the remembered context (its chat messages validated already,
only the response's own converted) is the same, byte for byte and message for message, as converting the whole
context; where it cannot be (a function call that joins the context's last turn), the whole is converted. And the
journal's bulk insert leaves SQLite's foreign-key checks on for everything else."""

from __future__ import annotations

import json
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import text

from modelworks.responses.context import Context
from modelworks.responses.items import message, to_chat_messages
from modelworks.responses.protocol import CreateResponse, parse_tools
from modelworks.responses.service import _chat_body, _continued, _validated
from modelworks.responses.store import Finished, ResponseStore
from modelworks.store.db import Database

CALL = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\": 1}",
        "status": "completed"}
CALL_2 = {**CALL, "id": "fc_2", "call_id": "call_2"}
OUTPUT = {"id": "fco_1", "type": "function_call_output", "call_id": "call_1", "output": "42", "status": "completed"}
MCP = {"id": "mcp_1", "type": "mcp_call", "server_label": "docs", "name": "search", "arguments": "{}",
       "output": "found", "error": None, "status": "completed"}
TOOLS = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]

TURNS = {
    "text": [[message("user", "Hi"), message("assistant", "Hello")], [message("user", "More?"), message("assistant", "Yes")]],
    "tools": [[message("user", "Look it up"), CALL], [OUTPUT, message("assistant", "It is 42")]],
    "mcp": [[message("user", "Search"), MCP, message("assistant", "Found it")]],
    "open call then call": [[message("user", "Two calls"), CALL], [CALL_2]],  # joins the last turn: converted whole
}


def _full(req, tools, context: list[dict], new: list[dict]):
    messages = to_chat_messages(context + new, req.instructions)
    request = _validated(orjson.dumps(_chat_body(req, tools, messages, stream=False)))
    return request


@pytest.mark.parametrize("name", sorted(TURNS))
@pytest.mark.parametrize("instructions", [None, "Be brief."])
@pytest.mark.parametrize("with_tools", [False, True])
def test_a_continued_call_is_what_converting_the_whole_context_gives(name, instructions, with_tools):
    body = {"model": "m", "input": "x", "temperature": 0.5, "max_output_tokens": 64, "metadata": {"a": "b"},
            "top_p": 0.9, "user": "u", "parallel_tool_calls": False, "include": ["message.output_text.logprobs"],
            "top_logprobs": 2, "reasoning": {"effort": "low"}, "text": {"verbosity": "low"}}
    if instructions:
        body["instructions"] = instructions
    if with_tools:
        body.update(tools=TOOLS, tool_choice="auto")
    req = CreateResponse.model_validate_json(json.dumps(body))
    tools = parse_tools(req.tools) or []
    context, items = Context.none(), []
    for turn in TURNS[name]:
        context, items = context.then(turn), items + turn
    remembered = context.fresh()
    assert remembered.items == items  # the items, from their JSON
    for new in ([message("user", "And now?")], [OUTPUT] if name == "tools" else [message("user", "Ok")]):
        full = _full(req, tools, items, new)
        if not remembered.follows(new):
            continue
        fast = _continued(req, tools, remembered, new, stream=False)
        assert fast is not None
        assert fast._json == full._json
        assert fast.model_dump() == full.model_dump()  # built without validating again: the same request
    if name == "open call then call":  # its last turn ends with a call that the next call joins
        assert remembered.messages is not None and not remembered.follows([CALL_2])


@pytest.mark.parametrize("quiet", [{"id": "rs_1", "type": "reasoning", "summary": []},
                                   {"id": "mcpa_1", "type": "mcp_approval_response", "approval_request_id": "mcpr_1",
                                    "approve": True}])
def test_a_call_after_items_that_make_no_message_still_joins_the_last_turn(quiet):
    """Reasoning, listings and approvals make no chat message: a call after them joins the context's call-only
    turn as it does when the whole context is converted."""
    req = CreateResponse.model_validate_json(json.dumps({"model": "m", "input": "x", "tools": TOOLS}))
    tools = parse_tools(req.tools) or []
    context = Context.none().then([message("user", "Two calls"), CALL]).fresh()
    new = [quiet, CALL_2]
    assert not context.follows(new)
    after = Context.none().then([message("user", "Two calls"), CALL]).then(new).fresh()
    assert orjson.loads(after.messages_json) == to_chat_messages([message("user", "Two calls"), CALL] + new, None)
    assert len(_full(req, tools, context.items, new).messages) == 2  # one assistant turn with both calls


def test_a_context_from_the_store_gets_its_messages_once():
    stored = Context([message("user", "Hi"), CALL])  # read from the store: messages not known
    assert not stored.follows([OUTPUT])
    after = stored.then([OUTPUT, message("assistant", "Done")])
    assert after.messages is not None and after.follows([message("user", "Next")])
    assert orjson.loads(after.messages_json) == to_chat_messages(stored.items + [OUTPUT, message("assistant", "Done")],
                                                                 None)


def test_journal_inserts_leave_foreign_keys_checked(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    db.upgrade()
    store = ResponseStore(db, timedelta(days=1))
    body = {"id": "resp_1", "created_at": 1_700_000_000, "status": "completed", "previous_response_id": None,
            "output": []}
    store.insert_records([Finished("resp_1", "p", body["created_at"], "completed", None, None, orjson.dumps(body),
                                   [orjson.dumps(message("user", "Hi"))])])
    store.insert_records([Finished("resp_1", "p", body["created_at"], "completed", None, None, orjson.dumps(body),
                                   [orjson.dumps(message("user", "Hi"))])])  # a replay: nothing twice
    assert [i["content"][0]["text"] for i in store.context("p", "resp_1")] == ["Hi"]
    for _ in range(3):  # every pooled connection
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            with pytest.raises(Exception):
                conn.execute(text("INSERT INTO response_events (response_id, seq, body) "
                                  "VALUES ('resp_missing', 0, '{}')"))
            conn.rollback()
    db.dispose()


def test_migration_moves_stored_items_into_their_responses(database_url):
    """0010: a response's input items move from `response_items` into its row, in order; its output items are in
    its body already. Then back again (downgrade), and up."""
    from alembic import command
    from alembic.config import Config

    from modelworks.store.db import MIGRATIONS

    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def migrate(step, target):
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            step(config, target)

    try:
        migrate(command.upgrade, "0009")
        out = message("assistant", "Hello")
        body = {"id": "resp_m", "object": "response", "created_at": 1_700_000_000, "status": "completed",
                "previous_response_id": None, "output": [out]}
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM responses WHERE id = 'resp_m'"))
            conn.execute(text(
                "INSERT INTO responses (id, project_id, created_at, updated_at, expires_at, status, background, "
                "cancel_requested, body) VALUES ('resp_m', 'p', :t, :t, :e, 'completed', false, false, :b)"),
                {"t": "2026-11-27 00:00:00.000000", "e": "2999-01-01 00:00:00.000000", "b": json.dumps(body)})
            for k, word in ((1, "second"), (0, "first")):  # inserted out of order: the position decides
                conn.execute(text("INSERT INTO response_items (id, response_id, project_id, kind, position, body) "
                                  "VALUES (:id, 'resp_m', 'p', 'input', :k, :b)"),
                             {"id": f"resp_m:i{k}", "k": k, "b": json.dumps(message("user", word))})
            conn.execute(text("INSERT INTO response_items (id, response_id, project_id, kind, position, body) "
                              "VALUES ('resp_m:o0', 'resp_m', 'p', 'output', 0, :b)"), {"b": json.dumps(out)})
        migrate(command.upgrade, "head")
        store = ResponseStore(db, timedelta(days=1))
        assert [i["content"][0]["text"] for i in store.input_items("p", "resp_m")] == ["first", "second"]
        assert [i["content"][0]["text"] for i in store.context("p", "resp_m")] == ["first", "second", "Hello"]
        assert store.find_item("p", store.input_items("p", "resp_m")[1]["id"])["content"][0]["text"] == "second"
        migrate(command.downgrade, "0009")
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, position FROM response_items WHERE response_id = 'resp_m' "
                                     "ORDER BY kind, position")).all()
        assert [tuple(r) for r in rows] == [("input", 0), ("input", 1), ("output", 0)]
        migrate(command.upgrade, "head")
        assert len(store.input_items("p", "resp_m")) == 2
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM responses WHERE id = 'resp_m'"))
    finally:
        db.dispose()
