"""Upstream backends (OpenAI-compatible and Azure OpenAI) against a fake upstream server on loopback."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import API_KEY
from support.raw_http import open_stream
from support.servers import start_modelworks
from support.waiting import wait_until

USER = [{"role": "user", "content": "hello upstream"}]


HTTP_TIMEOUT = 60


@pytest.fixture
def upstream_log(upstream):
    httpx.delete(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT)

    def read() -> dict:
        return httpx.get(f"{upstream.url}/_fake/requests", timeout=HTTP_TIMEOUT).json()
    return read


@pytest.fixture(scope="module")
def stalling(tmp_path_factory, upstream):
    """A server with one upstream deployment on a fake instance of its own (`upstream-stall`), whose idle streams
    it ends only after an hour: only the client's leaving ends a stalled stream within a test."""
    config = {"backends": {"stall": {"type": "openai", "base_url": f"{upstream.url}/upstream-stall/v1",
                                     "model": "fake-model"}},
              "deployments": {"upstream-stall": {"backend": "stall"}},
              "routing": {"stream_idle_timeout_s": 3600}}
    proc = start_modelworks(tmp_path_factory.mktemp("stalling"), config, API_KEY, name="stalling")
    yield proc
    proc.stop()


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


def test_client_disconnect_cuts_the_upstream_stream(stalling, upstream, upstream_log):
    # the upstream sends three words, then nothing until its client leaves: it never finishes by itself
    httpx.post(f"{upstream.url}/_fake/faults/upstream-stall", json={"mode": "stall", "after": 3},
               timeout=HTTP_TIMEOUT).raise_for_status()
    try:
        sock = open_stream(stalling.url, API_KEY, {"model": "upstream-stall", "messages": USER}, events=3)
        sock.close()
        wait_until(lambda: upstream_log()["cut_streams"], lambda n: n >= 1,
                   what="the upstream's stream cut after the client left")
    finally:
        httpx.delete(f"{upstream.url}/_fake/faults/upstream-stall", timeout=HTTP_TIMEOUT)
    log = upstream_log()
    assert log["cut_streams"] == 1 and log["finished_streams"] == 0


def test_unreachable_upstream_is_503(tmp_path, specs):
    """A dead upstream: the server still starts, /readyz says it is degraded but ready (the upstream is shared by
    every replica: taking them all out would not help), and calls answer 503 in the envelope."""
    import sys

    import yaml

    from support.servers import Process, free_port

    port = free_port()
    config = {"server": {"port": port, "data_dir": str(tmp_path / "d")},
              "backends": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                  "connect_timeout_s": 1}},
              "deployments": {"m": {"backend": "up"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = Process([sys.executable, "-m", "modelworks", "serve", "--config", str(tmp_path / "c.yaml")],
                   f"http://127.0.0.1:{port}", tmp_path / "server.log", env={"MODELWORKS_API_KEY": API_KEY})
    url = proc.url
    try:
        proc.wait_ready("/healthz")
        ready = httpx.get(f"{url}/readyz", timeout=HTTP_TIMEOUT)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["deployments"] == {"m": False} and not ready.json()["backends"]["up"]["ok"]
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": USER},
                       headers={"api-key": API_KEY}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        specs.check("/v1/chat/completions", r.status_code, r.json())
    finally:
        proc.stop()  # terminate; kill if it does not exit
