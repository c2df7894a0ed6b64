"""The real embedded model (Gemma 3 270M GGUF on llama.cpp) end to end, through the openai SDK."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from conftest import API_KEY
from support.raw_http import open_stream, send_request
from support.waiting import wait_until

pytestmark = pytest.mark.model
MODEL = "gemma-3-270m"
USER = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_chat(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=24, temperature=0.7)
    choice = reply.choices[0]
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.prompt_tokens > 5


def test_every_message_role_and_text_parts(client):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "developer", "content": [{"type": "text", "text": "Prefer numbers."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"},
                                     {"type": "text", "text": "Use the tool."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                           presence_penalty=0.5, frequency_penalty=0.5, user="someone")
    assert reply.choices[0].message.content is not None
    assert reply.usage.prompt_tokens > 40


def test_completion(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert reply.choices[0].text
    assert reply.usage.completion_tokens <= 8


def test_streaming_matches_non_streaming_at_temperature_zero(client):
    # with a seed the prompt is evaluated afresh (a cached prefix can move the logits by a rounding: see llama_engine)
    args = dict(model=MODEL, messages=USER, max_tokens=20, temperature=0, seed=1)
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert chunks[-1].usage.completion_tokens > 0


def test_completion_stream(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_seed_gives_the_same_output(client):
    args = dict(model=MODEL, messages=USER, max_tokens=24, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**args).choices[0].message.content
    client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=1.0)  # disturb the cache
    second = client.chat.completions.create(**args).choices[0].message.content
    assert first == second
    other = client.chat.completions.create(**{**args, "seed": 99}).choices[0].message.content
    assert other != first


def test_n_choices_differ_and_stop_sequences(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, n=2, seed=7)
    assert len(reply.choices) == 2 and reply.choices[0].message.content != reply.choices[1].message.content
    reply = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                                      stop=[" 8"])
    assert " 8" not in reply.choices[0].text and reply.choices[0].finish_reason == "stop"


def test_json_schema_output_parses_and_matches(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        max_tokens=60, temperature=0.5, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_json_object_output_parses(client):
    # Gemma 3 270M is a base model and a JSON object can run on past max_tokens: the answers that end parse
    ended = 0
    for seed in (1, 3):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "A JSON object with one key."}], max_tokens=60,
            response_format={"type": "json_object"}, seed=seed)
        choice = reply.choices[0]
        assert choice.message.content.startswith("{")
        if choice.finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(choice.message.content), dict)
    assert ended


def test_logprobs(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    reply = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logprobs=1)
    assert len(reply.choices[0].logprobs.tokens) == 4


@pytest.mark.anyio
async def test_eight_concurrent_streams_all_complete(async_client):
    async def one(i: int) -> tuple[str, str | None]:
        stream = await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=16, stream=True,
            seed=i)
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(finish in ("stop", "length") for _, finish in results), results
    assert all(text for text, _ in results)


SYSTEM = ("You are the assistant of a lighthouse museum. Answer visitors' questions about the lighthouse, its "
          "keepers, the lamp and the lens, the storms and the ships, in plain words and short sentences. ") * 4


def test_prompt_cache_reports_cached_tokens(client, server):
    """The second request shares the first's system prompt: its evaluation is reused and reported as OpenAI and
    Azure do (usage.prompt_tokens_details.cached_tokens), in answers, streams and the Responses API."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When was it built?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0.7)
    assert first.usage.prompt_tokens > 150
    messages[1]["content"] = "Who kept the lamp?"
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0.7)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 150 < cached < second.usage.prompt_tokens
    messages[1]["content"] = "How tall is it?"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0.7,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 150
    for question in ("Is it open in winter?", "Can I climb it?"):
        response = client.responses.create(model=MODEL, instructions=SYSTEM, input=question, max_output_tokens=16,
                                           temperature=0.7)
    assert response.usage.input_tokens_details.cached_tokens > 150
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    cached_total = [line for line in text.splitlines()
                    if line.startswith('modelworks_engine_prompt_tokens_total{backend="gemma",source="cached"}')]
    assert cached_total and float(cached_total[0].split()[-1]) > 450
    assert 'modelworks_engine_sequences{backend="gemma",state="idle"} 2' in text
    assert 'modelworks_engine_tokens_per_second{backend="gemma"}' in text


def _busy(server) -> tuple[int, int]:
    engine = httpx.get(f"{server.url}/readyz", timeout=60).json()["backends"]["gemma"]["engine"]
    return engine["active"], engine["waiting"]


# A generation that cannot end by itself while a test runs, however fast the machine: at temperature 0 this
# prompt runs to max_tokens without an end-of-turn token (checked: 1,500 tokens), and 64 choices are generated
# one after another in the request's slot: 96,000 tokens in all, minutes of work even at 1,000 tokens a second.
# So a slot freed within the tests' 60-second deadlines was freed because its generation was stopped.
ENDLESS = {"model": MODEL, "messages": [{"role": "user", "content": "Count from 1 to 5000, separated by commas."}],
           "max_tokens": 1500, "temperature": 0, "n": 64}


def _open_stream(server):
    """A generation that does not end by itself, streamed and held open after its first token."""
    return open_stream(server.url, API_KEY, ENDLESS)


def test_disconnect_stops_generation_and_frees_the_slot(server):
    socks = [_open_stream(server), _open_stream(server)]
    assert _busy(server)[0] == 2  # both are generating, and neither can finish on its own
    for sock in socks:
        sock.close()
    # a full run of either would hold its slot for minutes: freed in time means generation stopped
    wait_until(lambda: _busy(server), lambda b: b == (0, 0), what="both slots freed after their clients left")


def test_full_queue_answers_429_with_retry_after(server):
    # 2 slots busy, 8 waiting: the next request is refused at once with 429 and retry-after.
    socks = [_open_stream(server), _open_stream(server)]
    waiters = []
    try:
        for _ in range(8):
            waiters.append(send_request(server.url, API_KEY, {"model": MODEL, "messages": USER, "max_tokens": 5}))
        wait_until(lambda: _busy(server), lambda b: b == (2, 8), what="2 slots busy and 8 requests waiting")
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5)
        headers = info.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert int(headers["retry-after-ms"]) == int(headers["retry-after"]) * 1000
    finally:
        for sock in socks + waiters:
            sock.close()
    wait_until(lambda: _busy(server), lambda b: b == (0, 0), what="cancelled waiters left the line, slots freed")
