"""Upstream backends (OpenAI-compatible and Azure OpenAI) against a fake upstream server on loopback."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import API_KEY
from support.raw_http import open_stream

USER = [{"role": "user", "content": "hello upstream"}]


@pytest.fixture
def upstream_log(upstream):
    httpx.delete(f"{upstream.url}/_fake/requests")

    def read() -> dict:
        return httpx.get(f"{upstream.url}/_fake/requests").json()
    return read


def test_chat_passes_through(client, upstream_log):
    reply = client.chat.completions.create(model="upstream-model", messages=USER, temperature=0.2, max_tokens=9,
                                           seed=4, user="u1")
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert reply.model == "upstream-model"
    assert reply.usage.total_tokens == 11
    seen = upstream_log()["requests"][-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer upstream-secret"
    assert seen["body"]["model"] == "fake-model"
    assert seen["body"]["messages"] == USER
    assert (seen["body"]["temperature"], seen["body"]["max_tokens"], seen["body"]["seed"]) == (0.2, 9, 4)
    assert API_KEY not in json.dumps(seen), "the client's key must never reach the upstream"


def test_stream_relays_every_event(client, upstream_log):
    chunks = list(client.chat.completions.create(model="upstream-model", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream."
    assert chunks[-1].usage.total_tokens > 0
    assert upstream_log()["requests"][-1]["body"]["stream"] is True


def test_stream_without_usage_still_meters_upstream(client, upstream_log):
    chunks = list(client.chat.completions.create(model="upstream-model", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks)
    assert upstream_log()["requests"][-1]["body"]["stream_options"] == {"include_usage": True}


def test_tools_and_response_format_pass_through(client, upstream_log):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {}}}}]
    reply = client.chat.completions.create(model="upstream-tools", messages=USER, tools=tools, tool_choice="auto",
                                           response_format={"type": "json_object"})
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and reply.choices[0].finish_reason == "tool_calls"
    body = upstream_log()["requests"][-1]["body"]
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}


def test_completions_and_embeddings(client, upstream_log):
    assert client.completions.create(model="upstream-model", prompt="hi").choices[0].text
    chunks = list(client.completions.create(model="upstream-model", prompt="hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    emb = client.embeddings.create(model="upstream-model", input=["a", "b"])
    assert len(emb.data) == 2
    assert upstream_log()["requests"][-1]["path"] == "/v1/embeddings"


def test_azure_upstream(client, upstream_log):
    reply = client.chat.completions.create(model="azure-upstream", messages=USER)
    assert reply.choices[0].message.content
    seen = upstream_log()["requests"][-1]
    assert seen["path"] == "/openai/deployments/az-dep/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == "azure-secret"
    assert "authorization" not in seen["headers"]
    stream = client.chat.completions.create(model="azure-upstream", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_upstream_errors_are_mapped(client):
    with pytest.raises(openai.BadGatewayError if hasattr(openai, "BadGatewayError") else openai.InternalServerError):
        client.chat.completions.create(model="upstream-broken", messages=USER)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="upstream-limited", messages=USER)
    assert info.value.response.headers["retry-after"] == "1"


def test_client_disconnect_cuts_the_upstream_stream(server, upstream_log):
    sock = open_stream(server.url, API_KEY, {"model": "upstream-slow", "messages": USER}, events=3)
    sock.close()
    deadline = time.monotonic() + 3
    while upstream_log()["cut_streams"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    log = upstream_log()
    assert log["cut_streams"] == 1 and log["finished_streams"] == 0


def test_unreachable_upstream_is_503(tmp_path, specs):
    """A dead upstream: the server still starts, /readyz says 503, and calls answer 503 in the envelope."""
    import os
    import subprocess
    import sys

    import yaml

    from support.servers import free_port

    port = free_port()
    config = {"server": {"port": port, "data_dir": str(tmp_path / "d")},
              "backends": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                  "connect_timeout_s": 1}},
              "deployments": {"m": {"backend": "up"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "modelworks", "serve", "--config", str(tmp_path / "c.yaml")],
                            env={**os.environ, "MODELWORKS_API_KEY": API_KEY},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{url}/readyz").status_code == 503
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": USER},
                       headers={"api-key": API_KEY})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        specs.check("/v1/chat/completions", r.status_code, r.json())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
