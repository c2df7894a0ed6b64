"""Bad input is a 400 in the OpenAI error envelope naming the `param`: never a 422, a 500 or a stack trace.

Each case runs against the real server; the `raw` client checks every error body against the spec.
"""

from __future__ import annotations

import pytest

USER = [{"role": "user", "content": "hi"}]

# (name, path, body, expected param)
CASES = [
    ("missing messages", "/v1/chat/completions", {"model": "fake"}, "messages"),
    ("empty messages", "/v1/chat/completions", {"model": "fake", "messages": []}, "messages"),
    ("messages not a list", "/v1/chat/completions", {"model": "fake", "messages": "hi"}, "messages"),
    ("unknown role", "/v1/chat/completions", {"model": "fake", "messages": [{"role": "robot", "content": "x"}]},
     "messages[0].role"),
    ("content wrong type", "/v1/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": 1}]},
     "messages[0].content"),
    ("tool message without id", "/v1/chat/completions",
     {"model": "fake", "messages": [{"role": "tool", "content": "42"}]}, "messages[0]"),
    ("text part without text", "/v1/chat/completions",
     {"model": "fake", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
    ("temperature a string", "/v1/chat/completions", {"model": "fake", "messages": USER, "temperature": "hot"},
     "temperature"),
    ("temperature too high", "/v1/chat/completions", {"model": "fake", "messages": USER, "temperature": 3},
     "temperature"),
    ("top_p above 1", "/v1/chat/completions", {"model": "fake", "messages": USER, "top_p": 1.5}, "top_p"),
    ("max_tokens zero", "/v1/chat/completions", {"model": "fake", "messages": USER, "max_tokens": 0}, "max_tokens"),
    ("max_tokens a string", "/v1/chat/completions", {"model": "fake", "messages": USER, "max_tokens": "10"},
     "max_tokens"),
    ("max_completion_tokens negative", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "max_completion_tokens": -1}, "max_completion_tokens"),
    ("n zero", "/v1/chat/completions", {"model": "fake", "messages": USER, "n": 0}, "n"),
    ("stream not a boolean", "/v1/chat/completions", {"model": "fake", "messages": USER, "stream": "yes"}, "stream"),
    ("five stop sequences", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop a number", "/v1/chat/completions", {"model": "fake", "messages": USER, "stop": 7}, "stop"),
    ("presence_penalty out of range", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "presence_penalty": 5}, "presence_penalty"),
    ("seed not an integer", "/v1/chat/completions", {"model": "fake", "messages": USER, "seed": 1.5}, "seed"),
    ("unknown response_format", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "response_format": {"type": "yaml"}}, "response_format.type"),
    ("json_schema without schema object", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ("tool of unknown type", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "tools": [{"type": "robot", "function": {"name": "f"}}]}, "tools[0].type"),
    ("tool name with spaces", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "tools[0].function.name"),
    ("tool_choice without tools", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "tool_choice": "required"}, "tool_choice"),
    ("top_logprobs without logprobs", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ("stream_options without stream", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ("missing model", "/v1/chat/completions", {"messages": USER}, "model"),
    ("model not a string", "/v1/chat/completions", {"model": 5, "messages": USER}, "model"),
    ("missing prompt", "/v1/completions", {"model": "fake"}, "prompt"),
    ("prompt a number", "/v1/completions", {"model": "fake", "prompt": 12}, "prompt"),
    ("completion logprobs above 5", "/v1/completions", {"model": "fake", "prompt": "x", "logprobs": 10}, "logprobs"),
    ("missing input", "/v1/embeddings", {"model": "fake"}, "input"),
    ("empty input", "/v1/embeddings", {"model": "fake", "input": ""}, "input"),
    ("unknown encoding_format", "/v1/embeddings", {"model": "fake", "input": "x", "encoding_format": "hex"},
     "encoding_format"),
    ("dimensions zero", "/v1/embeddings", {"model": "fake", "input": "x", "dimensions": 0}, "dimensions"),
    ("dimensions above the model's", "/v1/embeddings", {"model": "fake", "input": "x", "dimensions": 9},
     "dimensions"),
    ("embeddings from a chat model", "/v1/embeddings", {"model": "gemma-3-270m", "input": "x"}, "model"),
    ("chat on an embeddings model", "/v1/chat/completions", {"model": "all-minilm-l6-v2", "messages": USER}, "model"),
    ("a tool schema the embedded model cannot use", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": USER,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "tools[0].function.parameters"),
    ("image on the embedded model", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "messages[0].content"),
    ("logit_bias with a key that is no token id", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": USER, "logit_bias": {"hello": 5}}, "logit_bias"),
    ("logit_bias with a token id past the vocabulary", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": USER, "logit_bias": {"99999999": 5}}, "logit_bias"),
    ("logit_bias above 100", "/v1/chat/completions",
     {"model": "fake", "messages": USER, "logit_bias": {"1": 101}}, "logit_bias"),
    ("max_tokens past the context", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": USER, "max_tokens": 100000}, "max_tokens"),
    ("token embeddings on MiniLM", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, "input"),
    ("bad schema for json_schema", "/v1/chat/completions",
     {"model": "gemma-3-270m", "messages": USER,
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema"),
]


@pytest.mark.parametrize("name,path,body,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_param(raw, name, path, body, param):
    r = raw.post(path, json=body)
    assert r.status_code == 400, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert error["param"] == param, (name, error)
    assert error["type"] == "invalid_request_error"
    assert error["message"] and "Traceback" not in r.text


def test_enough_kinds_of_bad_input():
    assert len(CASES) >= 20


@pytest.mark.parametrize("content,expected", [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_body"),
                                              (b"", "invalid_body"), (b"\xff\xfe", "invalid_json")])
def test_malformed_bodies(raw, content, expected):
    r = raw.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == expected


def test_unknown_fields_are_ignored(raw):
    r = raw.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "banana": 1, "metadata": {}})
    assert r.status_code == 200


def test_azure_api_version_rules(raw):
    body = {"messages": USER}
    missing = raw.post("/openai/deployments/fake/chat/completions", json=body)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "api-version"
    assert missing.json()["error"]["code"] == "missing_api_version"
    bad = raw.post("/openai/deployments/fake/chat/completions?api-version=yesterday", json=body)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "api-version"
    for version in ("2024-10-21", "2025-04-01-preview", "2024-02-15-preview"):
        assert raw.post(f"/openai/deployments/fake/chat/completions?api-version={version}", json=body).status_code == 200
    v1 = raw.post("/openai/v1/chat/completions", json={"model": "fake", "messages": USER})
    assert v1.status_code == 200


def test_body_too_large(raw):
    big = "x" * (1024 * 1024 + 10)
    r = raw.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method(raw):
    r = raw.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = raw.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
