"""Agent frameworks on the Responses API: the OpenAI Agents SDK (a tool loop on a scripted upstream, and a forced
tool call on the embedded model) and LangChain's ChatOpenAI (`use_responses_api=True`). Their HTTP clients go
through the spec-checking transport, so every body and event they receive is validated by `recorder`."""

from __future__ import annotations

import agents
import httpx
import jsonschema
import openai
import pytest
from agents import Agent, ModelSettings, Runner, function_tool
from agents.memory import OpenAIConversationsSession
from agents.models import _openai_shared  # the SDK's default client, to put it back after a test
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool as langchain_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from conftest import API_KEY
from support.servers import start_modelworks
from support.spec import AsyncCheckingTransport, CheckingTransport

pytestmark = pytest.mark.anyio

TIMEOUT = 120
REPLY = "Hello from the fake upstream."  # the fake upstream's text answer


def _config(upstream_url: str) -> dict:
    """A server of its own: `agent-tools` is a fake upstream model that calls each given tool in turn (the
    session server's `upstream-tools` calls the first tool only, as other tests expect)."""
    upstream = {"type": "openai", "base_url": f"{upstream_url}/v1", "api_key": "upstream-secret"}
    return {"backends": {"upstream": upstream},
            "deployments": {"agent-tools": {"backend": "upstream", "model": "tools-in-turn"},
                            "upstream-model": {"backend": "upstream", "model": "fake-model"},
                            "upstream-tools": {"backend": "upstream", "model": "tool-model"}}}


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory, upstream):
    proc = start_modelworks(tmp_path_factory.mktemp("agents"), _config(upstream.url), API_KEY, name="agents")
    yield proc
    proc.stop()


@pytest.fixture
async def sdk_client(recorder):
    """Points the Agents SDK (tracing off) at a server: call it with the server's URL. The default client is
    put back afterwards."""
    agents.set_tracing_disabled(True)
    previous = _openai_shared.get_default_openai_client()
    async with httpx.AsyncClient(transport=AsyncCheckingTransport(recorder), timeout=TIMEOUT) as http:
        def use(url: str) -> openai.AsyncOpenAI:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, http_client=http, max_retries=0)
            agents.set_default_openai_client(client, use_for_tracing=False)
            return client

        try:
            yield use
        finally:
            _openai_shared.set_default_openai_client(previous)
    assert recorder.responses > 0  # the SDK's answers went through the checking transport


def _upstream_chats(upstream) -> list[dict]:
    sent = httpx.get(f"{upstream.url}/_fake/requests", timeout=TIMEOUT).json()["requests"]
    return [r["body"] for r in sent if r["path"].endswith("/chat/completions")]


def _clear_upstream(upstream) -> None:
    httpx.delete(f"{upstream.url}/_fake/requests", timeout=TIMEOUT).raise_for_status()


# -- the OpenAI Agents SDK -------------------------------------------------------------------------------------


def _weather_agent(ran: list[tuple[str, dict]], **settings) -> Agent:
    @function_tool
    def get_weather(city: str, days: int = 1) -> str:
        """The weather forecast for a city."""
        ran.append(("get_weather", {"city": city, "days": days}))
        return f"Sunny in {city} for {days} day(s)."

    @function_tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        ran.append(("get_time", {"city": city}))
        return f"It is noon in {city}."

    return Agent(name="concierge", instructions="Answer with the tools' help.", tools=[get_weather, get_time],
                 model=settings.pop("model", "agent-tools"), model_settings=ModelSettings(**settings))


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_agent_runs_two_tools_to_completion(agent_server, upstream, sdk_client, streamed):
    sdk_client(agent_server.url)
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran, temperature=0.2, max_tokens=64)
    _clear_upstream(upstream)
    if streamed:
        result = Runner.run_streamed(agent, "Weather and time in Paris?", max_turns=5)
        kinds = [event.type async for event in result.stream_events()]
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    else:
        result = await Runner.run(agent, "Weather and time in Paris?", max_turns=5)
    assert ran == [("get_weather", {"city": "x", "days": 1}), ("get_time", {"city": "x"})]
    assert result.final_output == REPLY
    outputs = [item for item in result.new_items if item.type == "tool_call_output_item"]
    assert [o.output for o in outputs] == ["Sunny in x for 1 day(s).", "It is noon in x."]
    chats = _upstream_chats(upstream)
    assert len(chats) == 3  # a call of each tool, then the answer
    last = chats[-1]["messages"]
    assert last[0] == {"role": "system", "content": "Answer with the tools' help."}
    assert [m["role"] for m in last[1:]] == ["user", "assistant", "tool", "assistant", "tool"]
    assert last[-1]["content"] == "It is noon in x." and last[-1]["tool_call_id"].startswith("call_fake_1")
    assert last[-2]["tool_calls"][0]["id"] == last[-1]["tool_call_id"]
    assert chats[-1]["temperature"] == 0.2 and chats[-1]["max_completion_tokens"] == 64


async def test_agent_model_settings_reach_the_model(agent_server, upstream, sdk_client):
    """Every setting the SDK sends is taken: the sampling ones reach the model, the caching hints (which
    change no answer) are accepted, and the response echoes the rest."""
    client = sdk_client(agent_server.url)
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran, temperature=0.3, top_p=0.9, parallel_tool_calls=False, truncation="disabled",
                           max_tokens=50, metadata={"team": "a"}, store=True, prompt_cache_retention="24h",
                           prompt_cache_options={"ttl": "30m", "mode": "implicit"}, include_usage=True,
                           extra_args={"user": "user-7", "prompt_cache_key": "weather"})
    _clear_upstream(upstream)
    result = await Runner.run(agent, "Weather and time in Paris?", max_turns=5)
    assert result.final_output == REPLY and len(ran) == 2
    sent = _upstream_chats(upstream)[-1]
    assert (sent["temperature"], sent["top_p"], sent["parallel_tool_calls"]) == (0.3, 0.9, False)
    assert sent["max_completion_tokens"] == 50 and sent["user"] == "user-7"
    last = result.raw_responses[-1]
    assert last.usage.input_tokens > 0 and last.usage.output_tokens > 0
    stored = await client.responses.retrieve(last.response_id)
    assert stored.metadata == {"team": "a"} and stored.truncation == "disabled" and stored.top_p == 0.9
    assert stored.parallel_tool_calls is False and stored.max_output_tokens == 50 and stored.user == "user-7"


async def test_agent_continues_with_previous_response_id(agent_server, upstream, sdk_client):
    """The server keeps the chain: each model call sends only its new items."""
    sdk_client(agent_server.url)
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran)
    first = await Runner.run(agent, "Weather and time in Paris?", max_turns=5, auto_previous_response_id=True)
    assert first.final_output == REPLY and [name for name, _ in ran] == ["get_weather", "get_time"]
    _clear_upstream(upstream)
    second = await Runner.run(agent, "And tomorrow?", previous_response_id=first.last_response_id, max_turns=5)
    assert second.final_output == REPLY
    messages = _upstream_chats(upstream)[0]["messages"]  # the whole first run, then the new question
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                              "assistant", "user"]
    assert messages[-1]["content"] == "And tomorrow?"


async def test_agent_in_a_server_conversation(agent_server, upstream, sdk_client):
    """`conversation_id`: the server keeps the conversation's items; each turn sends only its new ones."""
    client = sdk_client(agent_server.url)
    conversation = await client.conversations.create()
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran)
    await Runner.run(agent, "Weather and time in Paris?", conversation_id=conversation.id, max_turns=5)
    _clear_upstream(upstream)
    second = await Runner.run(agent, "Thanks!", conversation_id=conversation.id, max_turns=5)
    assert second.final_output == REPLY and len(ran) == 4  # both tools again, for the new question
    roles = [m["role"] for m in _upstream_chats(upstream)[0]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    items = [item async for item in client.conversations.items.list(conversation.id, order="asc")]
    assert [i.type for i in items].count("function_call_output") == 4
    assert items[-1].type == "message" and items[-1].role == "assistant"


async def test_agent_with_a_conversations_session(agent_server, upstream, sdk_client):
    """The SDK's own memory on the Conversations API: it lists the items, then adds the turn's new ones."""
    client = sdk_client(agent_server.url)
    session = OpenAIConversationsSession(openai_client=client)
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran)
    await Runner.run(agent, "Weather and time in Paris?", session=session, max_turns=5)
    _clear_upstream(upstream)
    second = await Runner.run(agent, "Thanks!", session=session, max_turns=5)
    assert second.final_output == REPLY
    first_call = _upstream_chats(upstream)[0]["messages"]
    assert [m["role"] for m in first_call] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                "assistant", "user"]
    assert first_call[-1]["content"] == "Thanks!"
    kept = await session.get_items()
    assert kept[0]["role"] == "user" and kept[-1]["role"] == "assistant"
    await session.clear_session()


class Place(BaseModel):
    city: str
    country: str | None


class Forecast(BaseModel):
    place: Place
    days: int
    sunny: bool


FORECAST = Forecast(place=Place(city="x", country="x"), days=1, sunny=True)  # what fits the schema, to the fake


async def test_agent_structured_output(agent_server, sdk_client, upstream):
    """An `output_type` is sent as a json_schema text format and comes back parsed (the fake upstream answers
    a value that fits the schema)."""
    sdk_client(agent_server.url)
    agent = Agent(name="forecaster", model="upstream-model", output_type=Forecast)
    _clear_upstream(upstream)
    result = await Runner.run(agent, "Forecast for Paris?", max_turns=2)
    assert result.final_output == FORECAST
    sent = _upstream_chats(upstream)[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["required"] == ["place", "days", "sunny"]


@pytest.mark.model
async def test_agent_forced_tool_call_on_the_embedded_model(server, sdk_client):
    sdk_client(server.url)
    ran: list[tuple[str, dict]] = []
    agent = _weather_agent(ran, model="smollm2-135m-instruct", tool_choice="get_weather", max_tokens=48,
                           temperature=0)
    agent.tool_use_behavior = "stop_on_first_tool"  # the tool's output is the answer: one model call
    result = await Runner.run(agent, "What is the weather in Paris?", max_turns=2)
    assert [name for name, _ in ran] == ["get_weather"]
    arguments = ran[0][1]
    jsonschema.validate(arguments, agent.tools[0].params_json_schema)
    assert arguments["city"].strip() and result.final_output == f"Sunny in {arguments['city']} for " \
        f"{arguments['days']} day(s)."


# -- LangChain ---------------------------------------------------------------------------------------------------


@pytest.fixture
def chat_model(agent_server, recorder):
    sync_http = httpx.Client(transport=CheckingTransport(recorder), timeout=TIMEOUT)
    async_http = httpx.AsyncClient(transport=AsyncCheckingTransport(recorder), timeout=TIMEOUT)

    def make(model: str, **kwargs) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=f"{agent_server.url}/v1", api_key=API_KEY, use_responses_api=True,
                          http_client=sync_http, http_async_client=async_http, max_retries=0, **kwargs)

    yield make
    sync_http.close()
    assert recorder.responses > 0  # LangChain's answers went through the checking transport


def test_langchain_invoke_and_stream(chat_model):
    model = chat_model("upstream-model", temperature=0, max_tokens=32)
    answer = model.invoke("Say hello.")
    assert answer.text == REPLY
    assert answer.usage_metadata["input_tokens"] > 0 and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata["status"] == "completed"
    chunks = list(model.stream("Say hello."))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk) and whole.text == REPLY
    assert len([c for c in chunks if c.text]) > 1  # it came in pieces
    assert whole.usage_metadata["output_tokens"] > 0


def test_langchain_bind_tools(chat_model, upstream):
    @langchain_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}."

    model = chat_model("upstream-tools").bind_tools([get_weather])
    _clear_upstream(upstream)
    asked = model.invoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in asked.tool_calls] == [("get_weather", {})]
    sent = _upstream_chats(upstream)[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"]["required"] == ["city"]
    answer = model.invoke(["Weather in Paris?", asked,
                           {"role": "tool", "tool_call_id": asked.tool_calls[0]["id"], "content": "Sunny."}])
    assert answer.text == REPLY and not answer.tool_calls
    messages = _upstream_chats(upstream)[-1]["messages"]
    assert messages[-1] == {"role": "tool", "tool_call_id": asked.tool_calls[0]["id"], "content": "Sunny."}
    streamed = list(model.stream("Weather in Paris?"))
    whole = streamed[0]
    for chunk in streamed[1:]:
        whole += chunk
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [("get_weather", {})]


async def test_langchain_async_invoke_and_history(chat_model, upstream):
    model = chat_model("upstream-model")
    first = await model.ainvoke("My name is Ada.")
    assert first.text == REPLY
    _clear_upstream(upstream)
    again = await model.ainvoke([HumanMessage("My name is Ada."), first, HumanMessage("What is my name?")])
    assert again.text == REPLY
    messages = _upstream_chats(upstream)[-1]["messages"]  # its own answer went back as an assistant item
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "My name is Ada."), ("assistant", REPLY), ("user", "What is my name?")]


def test_langchain_previous_response_id(chat_model, upstream):
    model = chat_model("upstream-model", use_previous_response_id=True)
    first = model.invoke("My name is Ada.")
    _clear_upstream(upstream)
    model.invoke([HumanMessage("My name is Ada."), first, HumanMessage("What is my name?")])
    messages = _upstream_chats(upstream)[-1]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "My name is Ada."), ("assistant", REPLY), ("user", "What is my name?")]


def test_langchain_structured_output(chat_model):
    answer = chat_model("upstream-model").with_structured_output(Forecast, method="json_schema").invoke("Paris?")
    assert answer == FORECAST


# -- request fields the SDKs may send ------------------------------------------------------------------------------

FIELDS = [
    ({"prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "30m", "mode": "explicit"},
      "prompt_cache_key": "k", "service_tier": "auto", "truncation": "auto", "stream_options": None}, None),
    ({"prompt_cache_retention": 24}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"ttl": 30}}, "prompt_cache_options.ttl"),
    ({"context_management": [{"type": "compaction", "compact_threshold": 1000}]}, "context_management"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1",
                 "output": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]},
     "input[1].output"),
]


@pytest.mark.parametrize("extra, param", FIELDS, ids=[p or "accepted" for _, p in FIELDS])
def test_request_fields(raw, extra, param):
    """A hint that changes no answer is accepted; what cannot be honoured is a 400 naming it."""
    r = raw.post("/v1/responses", json={"model": "fake", "input": "Hi", **extra})
    if param is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
