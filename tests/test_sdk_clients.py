"""The official openai SDK against a real server process: OpenAI and AzureOpenAI clients, sync and async,
streaming and not. Every body and SSE event is validated against the specs by the `recorder` fixture."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import API_KEY, AZURE_API_VERSION
from support.spec import CheckingTransport

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def test_chat(client):
    reply = client.chat.completions.create(model="fake", messages=MESSAGES)
    assert reply.choices[0].message.content.startswith("This is a scripted reply")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "fake"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(model="fake", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is a scripted reply")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_chat_n_choices(client):
    reply = client.chat.completions.create(model="fake", messages=MESSAGES, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]


def test_completion(client):
    reply = client.completions.create(model="fake", prompt="Once upon a time", max_tokens=3)
    assert reply.choices[0].text == "This is a"
    assert reply.choices[0].finish_reason == "length"


def test_completion_stream(client):
    text = "".join(c.choices[0].text for c in client.completions.create(model="fake", prompt="x", stream=True)
                   if c.choices)
    assert text.startswith("This is a scripted reply")


def test_embeddings_and_models(client):
    result = client.embeddings.create(model="fake", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]
    ids = {m.id for m in client.models.list()}
    assert {"fake", "gemma-3-270m", "all-minilm-l6-v2"} <= ids
    assert client.models.retrieve("fake").id == "fake"


def test_embeddings_base64(client):
    import base64
    import struct

    result = client.embeddings.with_raw_response.create(model="fake", input="a", encoding_format="base64")
    raw = result.http_response.json()["data"][0]["embedding"]
    values = struct.unpack("<8f", base64.b64decode(raw))
    assert abs(sum(v * v for v in values) - 1) < 1e-5


@pytest.mark.anyio
async def test_async_chat_and_stream(async_client):
    reply = await async_client.chat.completions.create(model="fake", messages=MESSAGES)
    assert reply.choices[0].message.role == "assistant"
    stream = await async_client.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == reply.choices[0].message.content
    result = await async_client.embeddings.create(model="fake", input="hello")
    assert len(result.data) == 1
    models = [m.id async for m in async_client.models.list()]
    assert "fake" in models


def test_azure_model_as_deployment(azure_client):
    reply = azure_client.chat.completions.create(model="fake", messages=MESSAGES)
    assert reply.choices[0].message.content
    stream = azure_client.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert azure_client.completions.create(model="fake", prompt="hi").choices[0].text
    assert azure_client.embeddings.create(model="fake", input="hi").data[0].embedding
    assert "fake" in {m.id for m in azure_client.models.list()}


def test_azure_with_azure_deployment(server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as http:
        client = openai.AzureOpenAI(azure_endpoint=server.url, azure_deployment="fake", api_key=API_KEY,
                                    api_version=AZURE_API_VERSION, http_client=http, max_retries=0)
        reply = client.chat.completions.create(model="ignored-by-azure", messages=MESSAGES)
        assert reply.model == "fake"
        stream = client.chat.completions.create(model="ignored", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_azure_v1_path(server, recorder):
    """Azure's v1 API: plain OpenAI client at {endpoint}/openai/v1, model = deployment name."""
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as http:
        client = openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=API_KEY, http_client=http,
                               max_retries=0, default_headers={"api-key": API_KEY})
        assert client.chat.completions.create(model="fake", messages=MESSAGES).choices
        assert "fake" in {m.id for m in client.models.list()}
        assert client.embeddings.create(model="fake", input="x").data


@pytest.mark.anyio
async def test_async_azure(async_azure_client):
    reply = await async_azure_client.chat.completions.create(model="fake", messages=MESSAGES)
    assert reply.choices[0].finish_reason == "stop"
    stream = await async_azure_client.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
    assert [c async for c in stream]


def test_api_key_header_and_bearer(server, recorder):
    body = {"model": "fake", "messages": MESSAGES}
    with httpx.Client(base_url=server.url, transport=CheckingTransport(recorder), timeout=60) as http:
        assert http.post("/v1/chat/completions", json=body, headers={"api-key": API_KEY}).status_code == 200
        assert http.post("/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200
        for headers in ({}, {"api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
            r = http.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["type"] == "invalid_request_error"
        azure = http.post("/openai/deployments/fake/chat/completions?api-version=2024-10-21", json=body,
                          headers={"api-key": "wrong"})
        assert azure.status_code == 401 and azure.json()["error"]["code"] == "401"


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake", messages=[])
    assert info.value.body["param"] == "messages"
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_azure_deployment_not_found(azure_client):
    with pytest.raises(openai.NotFoundError) as info:
        azure_client.chat.completions.create(model="missing", messages=MESSAGES)
    assert info.value.code == "DeploymentNotFound"


def test_health(server):
    assert httpx.get(f"{server.url}/healthz", timeout=60).json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_request_ids(raw):
    r = raw.get("/v1/models")
    assert len(r.headers["x-request-id"]) == 16
    r = raw.get("/openai/models?api-version=2024-10-21")
    assert r.headers["apim-request-id"] == r.headers["x-request-id"]
