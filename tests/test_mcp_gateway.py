"""Remote MCP tools: `McpGateway` against a real MCP server process on loopback (the `mcp` SDK's, over streamable
HTTP), the policy deciding which servers a project may reach, the `mcp_servers` migration on SQLite and the real
PostgreSQL, and the setting in the admin API of real server processes. Nothing here reaches beyond loopback."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from jsonschema import Draft202012Validator

from conftest import API_KEY
from modelworks.control.projects import ProjectService
from modelworks.errors import InvalidRequest
from modelworks.responses.mcp import McpGateway, McpServerError, check_tool, needs_approval
from modelworks.responses.mcp_policy import (
    NOT_ALLOWED, McpServerPolicy, PinnedTransport, Target, _under, is_public,
)
from modelworks.responses.protocol import McpTool
from modelworks.store.db import Database
from support.servers import free_port, start_mcp_server, start_modelworks
from support.spec import OPENAI_SPEC
from test_admin_api import FAKE_ONLY, AdminClient

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    proc = start_mcp_server(tmp_path_factory.mktemp("mcp"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('mcp-store') / 'control.db'}")
    db.upgrade()
    yield ProjectService(db)
    db.dispose()


@pytest.fixture(scope="module")
def listed(projects, mcp_server):
    """A project whose mcp_servers names the test server's origin."""
    return projects.create(f"listed-{time.time_ns()}", mcp_servers=[mcp_server.url + "/"])["id"]


@pytest.fixture(scope="module")
def unlisted(projects):
    """A project with the default setting: any public address, nothing else."""
    return projects.create(f"open-{time.time_ns()}")["id"]


@pytest.fixture
def gateway(projects):
    return McpGateway(McpServerPolicy(projects, resolve_timeout_s=5.0), connect_timeout_s=5.0, read_timeout_s=10.0)


def _tool(url: str, **fields) -> McpTool:
    return McpTool(type="mcp", server_label="test", server_url=url, **fields)


def not_allowed():
    """A refusal by the project's mcp_servers setting: a 400 naming the server URL, with its own code."""
    return pytest.raises(InvalidRequest, match="mcp_servers")


def _calls(mcp_server) -> list[dict]:
    return httpx.get(mcp_server.url + "/_calls", timeout=10).json()["calls"]


# -- listing and calling -----------------------------------------------------------------------------------------

async def test_lists_the_servers_tools_in_openais_shape(gateway, listed, mcp_server):
    tools = await gateway.list_tools(listed, _tool(mcp_server.url + "/mcp"), param="tools[0]")
    by_name = {tool["name"]: tool for tool in tools}
    assert set(by_name) == {"add", "echo", "fail", "slow", "big"}
    assert set(by_name["add"]["input_schema"]["properties"]) == {"a", "b"}
    assert by_name["add"]["description"] == "Add two integers."
    assert by_name["add"]["annotations"] == {"readOnlyHint": True} and by_name["fail"]["annotations"] is None
    if OPENAI_SPEC.exists():
        schema = json.loads(OPENAI_SPEC.read_text())["components"]["schemas"]["MCPListToolsTool"]
        for tool in tools:
            assert not list(Draft202012Validator(schema).iter_errors(tool)), tool


@pytest.mark.parametrize("allowed,names", [
    (["add", "fail", "nope"], {"add", "fail"}),
    ({"tool_names": ["echo", "slow"]}, {"echo", "slow"}),
    ({"read_only": True}, {"add", "echo"}),
    ({"tool_names": ["add", "fail"], "read_only": False}, {"fail"}),
    ([], set()),
])
async def test_allowed_tools_filter_the_list(gateway, listed, mcp_server, allowed, names):
    tools = await gateway.list_tools(listed, _tool(mcp_server.url + "/mcp", allowed_tools=allowed))
    assert {tool["name"] for tool in tools} == names


async def test_the_list_is_bounded(projects, listed, mcp_server):
    small = McpGateway(McpServerPolicy(projects), max_tools=2)
    assert len(await small.list_tools(listed, _tool(mcp_server.url + "/mcp"))) == 2


async def test_calls_a_tool_and_the_server_ran_it(gateway, listed, mcp_server):
    assert await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp"), "add", {"a": 2, "b": 40}) == ("42", None)
    assert await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp"), "echo", {"text": "héllo"}) == (
        "héllo", None)
    ran = _calls(mcp_server)
    assert ran[-2]["tool"] == "add" and ran[-2]["arguments"] == {"a": 2, "b": 40}
    assert ran[-1]["arguments"] == {"text": "héllo"}


async def test_an_error_result_is_the_error(gateway, listed, mcp_server):
    output, error = await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp"), "fail", {"reason": "no good"})
    assert output is None and "no good" in error


async def test_headers_and_authorization_reach_the_server(gateway, listed, mcp_server):
    tool = _tool(mcp_server.url + "/mcp", headers={"X-Trace": "abc-1", "Authorization": "Bearer overridden"},
                 authorization="tok-123")
    assert await gateway.call_tool(listed, tool, "echo", {"text": "hi"}) == ("hi", None)
    seen = _calls(mcp_server)[-1]
    assert seen["authorization"] == "Bearer tok-123" and seen["headers"]["x-trace"] == "abc-1"
    await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp"), "echo", {"text": "bare"})
    assert _calls(mcp_server)[-1]["authorization"] is None


async def test_a_tool_outside_allowed_tools_is_not_called(gateway, listed, mcp_server):
    before = len(_calls(mcp_server))
    output, error = await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp", allowed_tools=["add"]), "echo",
                                            {"text": "x"})
    assert output is None and "allowed_tools" in error
    assert len(_calls(mcp_server)) == before


async def test_long_output_is_cut_with_a_note(gateway, listed, mcp_server):
    output, error = await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp"), "big", {"size": 200_000})
    assert error is None and output.startswith("x" * 1000)
    assert len(output.encode()) < 64 * 1024 + 200 and "output truncated: 200,000 bytes" in output


async def test_an_answer_over_the_size_bound_is_an_error(projects, listed, mcp_server):
    small = McpGateway(McpServerPolicy(projects), max_response_bytes=50_000)
    output, error = await small.call_tool(listed, _tool(mcp_server.url + "/mcp"), "big", {"size": 100_000})
    assert output is None and error


async def test_a_slow_tool_times_out_as_an_error(projects, listed, mcp_server):
    quick = McpGateway(McpServerPolicy(projects), connect_timeout_s=1.0, read_timeout_s=1.0)
    started = time.monotonic()
    output, error = await quick.call_tool(listed, _tool(mcp_server.url + "/mcp"), "slow", {"seconds": 20})
    assert output is None and error and time.monotonic() - started < 8


async def test_a_name_is_sent_as_host_while_the_checked_address_is_dialled(projects, gateway, mcp_server):
    url = mcp_server.url.replace("127.0.0.1", "localhost")
    project = projects.create(f"named-{time.time_ns()}", mcp_servers=[url])["id"]
    assert await gateway.call_tool(project, _tool(url + "/mcp"), "echo", {"text": "by name"}) == ("by name", None)
    assert _calls(mcp_server)[-1]["headers"]["host"] == url.removeprefix("http://")


async def test_connections_go_only_to_the_checked_addresses(mcp_server):
    """No second DNS lookup: a name that resolves nowhere still reaches the address that was checked for it."""
    import httpx2

    port = mcp_server.url.rsplit(":", 1)[1]
    target = Target(httpx2.URL(f"http://pinned.invalid:{port}/_calls"), ("127.0.0.1",))
    async with httpx2.AsyncClient(transport=PinnedTransport(target, 1 << 20)) as http:
        assert (await http.get(f"http://pinned.invalid:{port}/_calls")).status_code == 200
        with pytest.raises(httpx2.ConnectError):  # another origin is never dialled
            await http.get(f"http://pinned.invalid:{int(port) + 1}/_calls")


# -- which servers a project may reach -----------------------------------------------------------------------------

async def test_loopback_is_refused_unless_the_project_lists_it(gateway, unlisted, mcp_server):
    before = len(_calls(mcp_server))
    for url in (mcp_server.url + "/mcp", mcp_server.url.replace("127.0.0.1", "localhost") + "/mcp",
                "http://[::1]:9/mcp", "http://10.1.2.3/mcp", "http://169.254.169.254/latest"):
        with not_allowed() as refused:
            await gateway.call_tool(unlisted, _tool(url), "add", {"a": 1, "b": 1}, param="tools[3]")
        assert refused.value.param == "tools[3].server_url" and refused.value.code == NOT_ALLOWED
        with not_allowed():
            await gateway.list_tools(unlisted, _tool(url))
    assert len(_calls(mcp_server)) == before


async def test_a_list_allows_only_what_it_names(projects, gateway, mcp_server):
    other = projects.create(f"other-{time.time_ns()}", mcp_servers=["http://127.0.0.1:1/mcp"])["id"]
    with not_allowed() as refused:
        await gateway.list_tools(other, _tool(mcp_server.url + "/mcp"), param="tools[1].server_url")
    assert (refused.value.param, refused.value.code, refused.value.status) == ("tools[1].server_url", NOT_ALLOWED,
                                                                              400)
    nothing = projects.create(f"none-{time.time_ns()}", mcp_servers=[])["id"]
    with not_allowed():
        await gateway.list_tools(nothing, _tool("https://mcp.example.com/"))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/mcp", "file:///etc/passwd", "javascript:alert(1)", "/mcp",
                                 "http://user:pw@127.0.0.1/mcp", "http://[::1/mcp"])
async def test_a_url_that_is_not_plain_http_is_refused(gateway, listed, url):
    with pytest.raises(InvalidRequest) as refused:
        await gateway.call_tool(listed, _tool(url), "add", {}, param="tools[2]")
    assert refused.value.param == "tools[2].server_url" and refused.value.status == 400


async def test_an_unresolvable_host_is_an_error(gateway, unlisted):
    tool = _tool("http://no-such-host.invalid/mcp")
    output, error = await gateway.call_tool(unlisted, tool, "add", {"a": 1, "b": 2})
    assert output is None and "could not be resolved" in error
    with pytest.raises(McpServerError) as failed:
        await gateway.list_tools(unlisted, tool, param="tools[0]")
    assert failed.value.status == 424 and failed.value.param == "tools[0].server_url"


async def test_a_closed_port_is_an_error(projects, gateway):
    url = f"http://127.0.0.1:{free_port()}/mcp"
    project = projects.create(f"closed-{time.time_ns()}", mcp_servers=[url])["id"]
    output, error = await gateway.call_tool(project, _tool(url), "add", {"a": 1, "b": 2})
    assert output is None and error


async def test_redirects_are_not_followed(gateway, listed, mcp_server):
    with pytest.raises(McpServerError) as failed:
        await gateway.list_tools(listed, _tool(mcp_server.url + "/moved"))
    assert "redirect" in failed.value.message.lower()


async def test_a_public_address_is_admitted_without_a_list(projects, unlisted):
    target = await McpServerPolicy(projects).admit(unlisted, "https://93.184.216.34:8443/mcp", "tools[0].server_url")
    assert target.addresses == ("93.184.216.34",)  # checked, not connected to


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("172.16.5.4", False), ("192.168.1.1", False), ("100.64.0.1", False), ("169.254.169.254", False),
    ("224.0.0.1", False), ("240.0.0.1", False), ("0.0.0.0", False), ("255.255.255.255", False), ("::1", False),
    ("::", False), ("fc00::1", False), ("fe80::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False),
    ("2002:7f00:1::", False), ("64:ff9b::a00:1", False), ("64:ff9b::808:808", True),
    ("::ffff:8.8.8.8", True), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
])
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public


@pytest.mark.parametrize("url,prefix,under", [
    ("http://h:1/mcp", "http://h:1/mcp", True),
    ("http://h:1/mcp/x", "http://h:1/mcp", True),
    ("http://h:1/mcpx", "http://h:1/mcp", False),
    ("http://h:1/mcp/../admin", "http://h:1/mcp", False),
    ("http://h:2/mcp", "http://h:1/mcp", False),
    ("https://h:1/mcp", "http://h:1/mcp", False),
    ("http://H:80/any/path", "http://h/", True),
    ("http://h.evil.net/", "http://h", False),
    ("http://h/a/b", "http://h/a/", True),
])
def test_prefixes_match_by_origin_and_path(url, prefix, under):
    import httpx2

    assert _under(httpx2.URL(url), prefix) is under


async def test_a_changed_list_is_seen_after_the_cache_time(projects, gateway, mcp_server):
    project = projects.create(f"later-{time.time_ns()}")["id"]
    policy = McpServerPolicy(projects, ttl_s=0.3)
    with not_allowed():
        await policy.admit(project, mcp_server.url + "/mcp", "tools[0].server_url")
    projects.update(project, {"mcp_servers": [mcp_server.url]})
    with not_allowed():  # still the cached setting
        await policy.admit(project, mcp_server.url + "/mcp", "tools[0].server_url")
    await anyio.sleep(0.4)
    assert (await policy.admit(project, mcp_server.url + "/mcp", "tools[0].server_url")).addresses == ("127.0.0.1",)


# -- the request's fields -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,param", [
    ({"headers": {"Host": "elsewhere"}}, "tools[0].headers"),
    ({"headers": {"X-A": "one\r\nX-B: two"}}, "tools[0].headers"),
    ({"headers": {"Bad Name": "x"}}, "tools[0].headers"),
    ({"authorization": "tok\n"}, "tools[0].authorization"),
    ({"allowed_tools": {"names": ["add"]}}, "tools[0].allowed_tools"),
    ({"allowed_tools": {"tool_names": "add"}}, "tools[0].allowed_tools.tool_names"),
    ({"allowed_tools": {"read_only": "yes"}}, "tools[0].allowed_tools.read_only"),
])
async def test_malformed_fields_are_refused_naming_them(gateway, listed, mcp_server, fields, param):
    with pytest.raises(InvalidRequest) as refused:
        await gateway.call_tool(listed, _tool(mcp_server.url + "/mcp", **fields), "add", {}, param="tools[0]")
    assert refused.value.param == param


async def test_list_tools_checks_every_field_before_connecting(gateway, listed, mcp_server):
    tool = _tool(mcp_server.url + "/mcp", require_approval={"never": {"tool_names": "add"}})
    with pytest.raises(InvalidRequest) as refused:
        await gateway.list_tools(listed, tool, param="tools[5].server_url")
    assert refused.value.param == "tools[5].require_approval.never.tool_names"
    with pytest.raises(InvalidRequest) as refused:
        check_tool(_tool("gopher://x/"), "tools[6]")
    assert refused.value.param == "tools[6].server_url"
    check_tool(_tool(mcp_server.url + "/mcp", headers={"X-A": "b"}, allowed_tools={"read_only": True},
                     require_approval="never"), "tools[0]")


@pytest.mark.parametrize("rule,name,annotations,needed", [
    (None, "add", None, True),
    ("always", "add", None, True),
    ("never", "add", None, False),
    ({"never": {"tool_names": ["add"]}}, "add", None, False),
    ({"never": {"tool_names": ["add"]}}, "fail", None, True),
    ({"always": {"tool_names": ["fail"]}}, "fail", None, True),
    ({"always": {"tool_names": ["fail"]}}, "add", None, False),
    ({"always": {"tool_names": ["fail"]}, "never": {"tool_names": ["add"]}}, "echo", None, True),
    ({"never": {"read_only": True}}, "add", {"readOnlyHint": True}, False),
    ({"never": {"read_only": True}}, "fail", None, True),
    ({}, "add", None, True),
])
def test_approval_follows_require_approval(rule, name, annotations, needed):
    tool = _tool("https://mcp.example.com/", require_approval=rule)
    assert needs_approval(tool, name, annotations) is needed
    assert McpGateway(None).needs_approval(tool, name, annotations) is needed


def test_a_malformed_approval_rule_is_refused():
    with pytest.raises(InvalidRequest) as refused:
        needs_approval(_tool("https://mcp.example.com/", require_approval={"sometimes": {}}), "add", param="tools[4]")
    assert refused.value.param == "tools[4].require_approval"


# -- the migration -------------------------------------------------------------------------------------------------

def test_the_migration_builds_the_column_the_model_describes(database_url):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from modelworks.store.db import MIGRATIONS
    from modelworks.store.schema import Base

    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diffs if "projects" in repr(d)] == []
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
        assert "mcp_servers" not in {c["name"] for c in inspect(db.engine).get_columns("projects")}
        db.upgrade()
        service = ProjectService(db)
        made = service.create("kept", mcp_servers=["http://10.0.0.5:8000/mcp"])
        assert service.mcp_servers(made["id"]) == ["http://10.0.0.5:8000/mcp"]
        assert service.mcp_servers(service.create("plain")["id"]) is None
    finally:
        db.dispose()


# -- the admin API -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def admin(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"mcp-admin-{request.param}")
    config, drop = dict(FAKE_ONLY), None
    if request.param == "postgresql":
        from support.databases import fresh_postgres

        url, drop = fresh_postgres()
        config["database"] = {"url": url}
    proc = start_modelworks(tmp, config, API_KEY, name="mcp-admin")
    proc.database = config.get("database", {}).get("url") or f"sqlite:///{tmp / 'mcp-admin-data' / 'modelworks.db'}"
    spec = httpx.get(f"{proc.url}/admin/v1/openapi.json", timeout=60).json()
    yield proc, AdminClient(proc.url, API_KEY, spec)
    proc.stop()
    if drop:
        drop()


PROJECT = "/admin/v1/projects/{project_id}"


def test_admins_set_and_read_a_projects_mcp_servers(admin):
    _, client = admin
    made = client.call("POST", "/admin/v1/projects", json={"name": f"m-{time.time_ns()}",
                                                            "mcp_servers": ["https://mcp.example.com/"]})
    assert made.status_code == 201 and made.json()["mcp_servers"] == ["https://mcp.example.com/"]
    path = f"/admin/v1/projects/{made.json()['id']}"
    servers = ["http://127.0.0.1:9100/mcp", "https://tools.example.org"]
    assert client.call("PATCH", path, PROJECT, json={"mcp_servers": servers}).json()["mcp_servers"] == servers
    assert client.call("GET", path, PROJECT).json()["mcp_servers"] == servers
    assert client.call("PATCH", path, PROJECT, json={"rpm_limit": 5}).json()["mcp_servers"] == servers
    assert client.call("PATCH", path, PROJECT, json={"mcp_servers": []}).json()["mcp_servers"] == []
    assert client.call("PATCH", path, PROJECT, json={"mcp_servers": None}).json()["mcp_servers"] is None
    plain = client.call("POST", "/admin/v1/projects", json={"name": f"p-{time.time_ns()}"}).json()
    assert plain["mcp_servers"] is None


@pytest.mark.parametrize("value,param", [
    (["ftp://mcp.example.com/"], "mcp_servers[0]"),
    (["https://ok.example.com/", "mcp.example.com"], "mcp_servers[1]"),
    (["https://user:pw@mcp.example.com/"], "mcp_servers[0]"),
    (["https://mcp.example.com/?token=1"], "mcp_servers[0]"),
    (["https://mcp.example.com:99999/"], "mcp_servers[0]"),
    (["https://mcp.example.com/" + "a" * 2048], "mcp_servers[0]"),
    (["https://mcp.example.com/\u0000"], "mcp_servers[0]"),
    ([""], "mcp_servers[0]"),
    ([7], "mcp_servers[0]"),
    ("https://mcp.example.com/", "mcp_servers"),
    ([f"https://m{i}.example.com/" for i in range(65)], "mcp_servers"),
])
def test_bad_mcp_servers_are_refused_naming_them(admin, value, param):
    _, client = admin
    project = client.call("POST", "/admin/v1/projects", json={"name": f"b-{time.time_ns()}"}).json()
    r = client.call("PATCH", f"/admin/v1/projects/{project['id']}", PROJECT, json={"mcp_servers": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.call("POST", "/admin/v1/projects", json={"name": f"c-{time.time_ns()}", "mcp_servers": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_only_admins_change_mcp_servers(admin):
    proc, client = admin
    project = client.call("POST", "/admin/v1/projects", json={"name": f"o-{time.time_ns()}"}).json()
    key = client.call("POST", "/admin/v1/keys", json={"name": "pa", "role": "project_admin",
                                                      "project_id": project["id"]}).json()["key"]
    own = AdminClient(proc.url, key, client.spec)
    r = own.call("PATCH", f"/admin/v1/projects/{project['id']}", PROJECT, json={"mcp_servers": ["http://10.0.0.1/"]})
    assert r.status_code == 403
    assert client.call("GET", f"/admin/v1/projects/{project['id']}", PROJECT).json()["mcp_servers"] is None


async def test_a_change_in_the_admin_api_reaches_another_replicas_gateway(admin, mcp_server):
    """The gateway here plays another replica: it reads the server's store through its own ProjectService."""
    proc, client = admin
    project = client.call("POST", "/admin/v1/projects", json={"name": f"r-{time.time_ns()}"}).json()
    db = Database(proc.database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        gateway = McpGateway(McpServerPolicy(ProjectService(db), ttl_s=0.5))
        with not_allowed():
            await gateway.call_tool(project["id"], _tool(mcp_server.url + "/mcp"), "add", {"a": 1, "b": 1})
        client.call("PATCH", f"/admin/v1/projects/{project['id']}", PROJECT, json={"mcp_servers": [mcp_server.url]})
        await anyio.sleep(0.6)
        assert await gateway.call_tool(project["id"], _tool(mcp_server.url + "/mcp"), "add", {"a": 1, "b": 1}) == (
            "2", None)
    finally:
        db.dispose()
