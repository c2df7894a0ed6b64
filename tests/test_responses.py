"""The Responses and Conversations APIs through the official openai SDK, against the real server process; every
JSON body and every SSE event is validated against the OpenAI spec by the `recorder` fixture."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

HTTP_TIMEOUT = 60

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                         "additionalProperties": False}, "strict": True}]


def _upstream_requests(upstream) -> list[dict]:
    return httpx.get(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).json()["requests"]


def _clear_upstream(upstream) -> None:
    httpx.delete(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).raise_for_status()


def test_create_retrieve_items_delete(client):
    made = client.responses.create(model="fake", input="Say hello.", instructions="Be brief.",
                                   metadata={"team": "a"})
    assert made.status == "completed" and made.object == "response"
    assert made.output_text.startswith("This is a scripted reply")
    assert made.usage.input_tokens > 0 and made.usage.output_tokens > 0
    assert made.metadata == {"team": "a"} and made.instructions == "Be brief."
    again = client.responses.retrieve(made.id)
    assert again.id == made.id and again.output_text == made.output_text
    items = client.responses.input_items.list(made.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Say hello."
    deleted = client.responses.delete(made.id)
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_stream_emits_the_ordered_event_set(client):
    with client.responses.stream(model="fake", input="Say hello.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.output_text.delta" in kinds
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.completed"]
    assert kinds[-4:] == tail
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert sum(k in ("response.completed", "response.failed", "response.incomplete") for k in kinds) == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text and final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == text


def test_previous_response_id_carries_the_context(client, upstream):
    first = client.responses.create(model="upstream-model", input="My name is Ada.", instructions="Be kind.")
    _clear_upstream(upstream)
    second = client.responses.create(model="upstream-model", input="What is my name?",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = [r for r in _upstream_requests(upstream) if r.get("path", "").endswith("/chat/completions")]
    messages = sent[-1]["body"]["messages"]
    # the earlier turn's input and output, then the new input; the earlier instructions are not carried over
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "My name is Ada." and messages[2]["content"] == "What is my name?"
    assert messages[1]["content"] == first.output_text


def test_function_tool_round_trip(client, upstream):
    call = client.responses.create(model="upstream-tools", input="Weather in Paris?", tools=TOOLS)
    calls = [o for o in call.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments == "{}"
    _clear_upstream(upstream)
    answer = client.responses.create(model="upstream-tools", previous_response_id=call.id, tools=TOOLS,
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": '{"temperature": 21}'}])
    assert answer.output_text
    messages = _upstream_requests(upstream)[-1]["body"]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == calls[0].call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": '{"temperature": 21}'}


def test_streamed_function_call_events(client):
    with client.responses.stream(model="upstream-tools", input="Weather?", tools=TOOLS,
                                 tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == "{}" and done.name == "get_weather"
    assert final.output[0].type == "function_call" and final.output[0].status == "completed"


def test_store_false_leaves_nothing(client):
    made = client.responses.create(model="fake", input="Hi", store=False)
    assert made.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake", input="Again", previous_response_id=made.id)


def test_conversations(client, upstream):
    conv = client.conversations.create(metadata={"topic": "demo"},
                                       items=[{"type": "message", "role": "user", "content": "I like tea."}])
    assert conv.metadata == {"topic": "demo"}
    assert client.conversations.retrieve(conv.id).id == conv.id
    _clear_upstream(upstream)
    reply = client.responses.create(model="upstream-model", input="What do I like?", conversation=conv.id)
    messages = _upstream_requests(upstream)[-1]["body"]["messages"]
    assert [m["content"] for m in messages] == ["I like tea.", "What do I like?"]
    items = client.conversations.items.list(conv.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert items.data[-1].role == "assistant" and items.data[-1].content[0].text == reply.output_text
    added = client.conversations.items.create(conv.id, items=[{"type": "message", "role": "user",
                                                               "content": "More."}])
    item_id = added.data[0].id
    assert client.conversations.items.retrieve(item_id, conversation_id=conv.id).id == item_id
    client.conversations.items.delete(item_id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(item_id, conversation_id=conv.id)
    updated = client.conversations.update(conv.id, metadata={"topic": "tea"})
    assert updated.metadata == {"topic": "tea"}
    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_input_tokens(client):
    counted = client.responses.input_tokens.count(model="smollm2-135m-instruct", input="What is the capital of France?")
    assert counted.object == "response.input_tokens" and 5 < counted.input_tokens < 100


def test_embedded_chat_model_answers(client):
    made = client.responses.create(model="smollm2-135m-instruct", input="What is the capital of France?",
                                   max_output_tokens=32, temperature=0)
    assert made.status in ("completed", "incomplete") and made.output_text.strip()
    assert "Paris" in made.output_text


def test_max_output_tokens_makes_it_incomplete(client):
    made = client.responses.create(model="smollm2-135m-instruct", input="Tell me a long story about a cat.",
                                   max_output_tokens=16, temperature=0)
    assert made.status == "incomplete" and made.incomplete_details.reason == "max_output_tokens"
    assert made.output[0].status == "incomplete"


def test_azure_v1_path(server, recorder):
    from support.spec import CheckingTransport
    from conftest import API_KEY

    with httpx.Client(transport=CheckingTransport(recorder), timeout=HTTP_TIMEOUT) as http:
        azure = openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=API_KEY, http_client=http, max_retries=0)
        made = azure.responses.create(model="fake", input="Hi")
        assert azure.responses.retrieve(made.id).id == made.id


BAD = [
    ({"input": "x"}, "model"),
    ({"model": "nope", "input": "x"}, "model"),
    ({"model": "fake"}, "input"),
    ({"model": "fake", "input": 5}, "input"),
    ({"model": "fake", "input": [{"type": "bogus"}]}, "input[0].type"),
    ({"model": "fake", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"model": "fake", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "fake", "input": "x", "previous_response_id": "resp_x", "conversation": "conv_x"}, "conversation"),
    ({"model": "fake", "input": "x", "background": True, "store": False}, "background"),
    ({"model": "fake", "input": "x", "tools": [{"type": "web_search_preview_2099"}]}, "tools[0].type"),
    ({"model": "fake", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "fake", "input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"model": "fake", "input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice"),
    ({"model": "fake", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "fake", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "fake", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
    ({"model": "fake", "input": "x", "metadata": {"k": 5}}, "metadata.k"),
    ({"model": "fake", "input": "x", "include": ["everything"]}, "include"),
    ({"model": "fake", "input": "x", "previous_response_id": "resp_missing"}, "previous_response_id"),
    ({"model": "fake", "input": "x", "conversation": "conv_missing"}, "conversation"),
    ({"model": "fake", "input": [{"type": "item_reference", "id": "msg_missing"}]}, "input[0].id"),
    ({"model": "fake", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "fake", "input": "x", "truncation": "sometimes"}, "truncation"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[p for _, p in BAD])
def test_bad_input_names_the_param(raw, body, param):
    r = raw.post("/v1/responses", json=body)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param, error


def test_conversation_bad_input(raw):
    assert raw.post("/v1/conversations", json={"metadata": {"k": "v" * 600}}).json()["error"]["param"] == "metadata"
    assert raw.post("/v1/conversations", json={"items": [{"type": "nope"}]}).json()["error"]["param"] == "items[0].type"
    made = raw.post("/v1/conversations", json={}).json()
    r = raw.post(f"/v1/conversations/{made['id']}/items", json={"items": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items"
    assert raw.get(f"/v1/conversations/{made['id']}/items?limit=0").json()["error"]["param"] == "limit"


def test_embedded_model_calls_a_function_tool(client):
    made = client.responses.create(model="smollm2-135m-instruct", input="What is the weather in Paris?",
                                   tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"},
                                   max_output_tokens=48, temperature=0)
    call = next(o for o in made.output if o.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    with client.responses.stream(model="smollm2-135m-instruct", input="Weather in Rome?", tools=TOOLS,
                                 tool_choice="required", max_output_tokens=48, temperature=0) as stream:
        events = list(stream)
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert isinstance(json.loads(done.arguments)["city"], str)
    assert events[-1].type == "response.completed"


def test_azure_dated_responses_path(server, recorder):
    from conftest import API_KEY

    with httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=HTTP_TIMEOUT) as http:
        missing = http.post("/openai/responses", json={"model": "fake", "input": "Hi"})
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_api_version"
        made = http.post("/openai/responses?api-version=2025-04-01-preview", json={"model": "fake", "input": "Hi"})
        assert made.status_code == 200 and made.json()["status"] == "completed"
        again = http.get(f"/openai/responses/{made.json()['id']}?api-version=2025-04-01-preview")
        assert again.json()["id"] == made.json()["id"]


def test_logprobs_when_included(client):
    made = client.responses.create(model="smollm2-135m-instruct", input="Say hi.", max_output_tokens=16,
                                   include=["message.output_text.logprobs"], top_logprobs=2, temperature=0)
    part = made.output[0].content[0]
    assert part.logprobs and all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in part.logprobs)
    assert "".join(lp.token for lp in part.logprobs) == part.text
    with client.responses.stream(model="smollm2-135m-instruct", input="Say hi.", max_output_tokens=16,
                                 include=["message.output_text.logprobs"], temperature=0) as stream:
        events = list(stream)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert sum(len(e.logprobs) for e in deltas) > 0


def test_reasoning_and_verbosity_reach_the_upstream(client, upstream):
    _clear_upstream(upstream)
    client.responses.create(model="upstream-model", input="Hi", reasoning={"effort": "low"},
                            text={"verbosity": "low"})
    sent = _upstream_requests(upstream)[-1]["body"]
    assert sent["reasoning_effort"] == "low" and sent["verbosity"] == "low"


def test_truncation_auto_drops_the_oldest_turns(client):
    long_turn = "Tell me about the sea. " * 140  # ~700 tokens a turn: three of them overflow a 2048 context
    previous = None
    for _ in range(2):
        made = client.responses.create(model="smollm2-135m-instruct", input=long_turn, max_output_tokens=16,
                                       temperature=0, previous_response_id=previous, truncation="auto")
        previous = made.id
    with pytest.raises(openai.BadRequestError) as refused:  # without truncation the chain no longer fits
        client.responses.create(model="smollm2-135m-instruct", input=long_turn, max_output_tokens=16,
                                previous_response_id=previous)
    assert refused.value.code == "context_length_exceeded"
    fitted = client.responses.create(model="smollm2-135m-instruct", input=long_turn, max_output_tokens=16,
                                     temperature=0, previous_response_id=previous, truncation="auto")
    assert fitted.status in ("completed", "incomplete") and fitted.usage.input_tokens < 2048


def test_repeated_item_ids_are_kept_apart(client):
    same = {"type": "message", "role": "user", "content": "Hi", "id": "msg_same"}
    conv = client.conversations.create(items=[same, same])
    items = client.conversations.items.list(conv.id, order="asc").data
    assert len(items) == 2 and items[0].id != items[1].id
    made = client.responses.create(model="fake", input=[same, same], conversation=conv.id)
    assert made.status == "completed"
    assert len(client.conversations.items.list(conv.id).data) == 5
    too_long = {"type": "message", "role": "user", "content": "Hi", "id": "m" * 65}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="fake", input=[too_long])
    assert refused.value.body["param"] == "input[0].id"


def test_a_chain_grown_past_the_value_bound_is_refused(client):
    """Each request is small enough, but the chain it continues grows: past the bound on JSON values one request
    may make the server validate, the next turn is refused naming previous_response_id (not a stalled server)."""
    many = [{"role": "user", "content": f"n{i}"} for i in range(2000)]
    previous, refused = None, None
    for _ in range(20):
        try:
            previous = client.responses.create(model="fake", input=many, previous_response_id=previous).id
        except openai.BadRequestError as exc:
            refused = exc
            break
    assert refused is not None and refused.body["param"] == "previous_response_id"
    assert refused.code == "context_too_large"


def test_truncation_auto_cuts_a_long_chain_to_the_window(client):
    """A chain grown to the bound on JSON values (each turn 2,000 messages): continued on the embedded model,
    it is refused without truncation and cut to the model's window with `truncation: auto`."""
    many = [{"role": "user", "content": f"n{i}"} for i in range(2000)]
    previous = None
    for _ in range(20):
        try:
            previous = client.responses.create(model="fake", input=many, previous_response_id=previous).id
        except openai.BadRequestError:
            break
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="smollm2-135m-instruct", input="Hi", previous_response_id=previous,
                                max_output_tokens=16)
    made = client.responses.create(model="smollm2-135m-instruct", input="Hi", previous_response_id=previous,
                                   max_output_tokens=16, temperature=0, truncation="auto")
    assert made.status in ("completed", "incomplete") and made.usage.input_tokens < 2048
