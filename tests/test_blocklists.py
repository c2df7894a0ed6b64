"""Custom blocklists: managed per project through the admin API (isolated both ways, audited without their
terms), applied to the caller's project by the policies that name them, changes effective within seconds."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import API_KEY
from support.servers import start_modelworks
from test_admin_api import AdminClient

CONFIG = {
    "backends": {"fake": {"type": "fake", "reply": "We compare well with Fabrikam."}},
    "content_filters": {"with-lists": {"blocklists": ["competitors"], "completion": {"blocklists": "annotate"}}},
    "deployments": {"guarded": {"backend": "fake", "content_filter": "with-lists"}},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("blocklists"), CONFIG, API_KEY, name="blocklists")
    spec = httpx.get(f"{proc.url}/admin/v1/openapi.json", timeout=60).json()
    admin = AdminClient(proc.url, API_KEY, spec)
    out = {"url": proc.url, "admin": admin}
    for name in ("a", "b"):
        project = admin.call("POST", "/admin/v1/projects", json={"name": f"bl-{name}-{time.time_ns()}"}).json()
        keys = {role: admin.call("POST", "/admin/v1/keys", json={"name": role, "role": role,
                                                                  "project_id": project["id"]}).json()
                for role in ("project_admin", "user")}
        out[name] = {"project": project, "keys": keys,
                     "padmin": AdminClient(proc.url, keys["project_admin"]["key"], spec),
                     "user": AdminClient(proc.url, keys["user"]["key"], spec)}
    yield out
    proc.stop()


def _chat(url: str, key: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"api-key": key}, timeout=60,
                      json={"model": "guarded", "messages": [{"role": "user", "content": text}]})


def test_a_projects_list_blocks_its_prompts_only(world):
    a, b = world["a"], world["b"]
    made = a["padmin"].call("POST", "/admin/v1/blocklists", json={"name": "competitors"})
    assert made.status_code == 201
    blocklist = made.json()
    added = a["padmin"].call("POST", f"/admin/v1/blocklists/{blocklist['id']}/items",
                             "/admin/v1/blocklists/{blocklist_id}/items",
                             json={"items": [{"value": "Contoso"}, {"kind": "regex", "value": r"\bFabrik\w+"}]})
    assert added.status_code == 201 and len(added.json()["data"]) == 2
    refused = _chat(world["url"], a["keys"]["user"]["key"], "Is contoso cheaper?")
    assert refused.status_code == 400
    result = refused.json()["error"]["innererror"]["content_filter_result"]
    assert result["custom_blocklists"] == {"filtered": True, "details": [{"filtered": True, "id": "competitors"}]}
    served = _chat(world["url"], a["keys"]["user"]["key"], "Tell me about Rome")
    assert served.status_code == 200  # the completion names Fabrikam: annotated, not blocked, by this policy
    choice = served.json()["choices"][0]
    assert choice["content_filter_results"]["custom_blocklists"]["details"] == [{"filtered": False, "id": "competitors"}]
    other = _chat(world["url"], b["keys"]["user"]["key"], "Is contoso cheaper?")
    assert other.status_code == 200, "project b has no such list"
    # a removed term stops blocking within the cache time: a project's lists are read again at most 5 s after they
    # were last read (before the removal), so a call *sent* 6 s after the removal was answered must not be blocked,
    # however long its answer takes. Calls sent earlier may be either.
    term = next(i for i in a["padmin"].call("GET", f"/admin/v1/blocklists/{blocklist['id']}/items",
                                            "/admin/v1/blocklists/{blocklist_id}/items").json()["data"]
                if i["value"] == "Contoso")
    assert a["padmin"].call("DELETE", f"/admin/v1/blocklists/{blocklist['id']}/items/{term['id']}",
                            "/admin/v1/blocklists/{blocklist_id}/items/{item_id}").status_code == 200
    removed_at = time.monotonic()
    while True:
        sent = time.monotonic()
        status = _chat(world["url"], a["keys"]["user"]["key"], "Is contoso cheaper?").status_code
        if status == 200:
            break
        assert status == 400
        assert sent - removed_at < 6, f"a call sent {sent - removed_at:.1f}s after the removal was still blocked"
        time.sleep(0.5)


@pytest.mark.parametrize("mine,theirs", [("a", "b"), ("b", "a")])
def test_blocklists_are_isolated_both_ways(world, mine, theirs):
    theirs_list = world[theirs]["padmin"].call("POST", "/admin/v1/blocklists",
                                               json={"name": f"private-{mine}"}).json()
    me = world[mine]
    for client in (me["padmin"], me["user"]):
        path = f"/admin/v1/blocklists/{theirs_list['id']}"
        expected = 404 if client is me["padmin"] else 403
        assert client.call("GET", path, "/admin/v1/blocklists/{blocklist_id}").status_code == expected
        assert client.call("DELETE", path, "/admin/v1/blocklists/{blocklist_id}").status_code == expected
        assert client.call("GET", path + "/items", "/admin/v1/blocklists/{blocklist_id}/items").status_code == expected
        assert client.call("POST", path + "/items", "/admin/v1/blocklists/{blocklist_id}/items",
                           json={"items": [{"value": "x"}]}).status_code == expected
    padmin = me["padmin"]
    assert padmin.call("GET", f"/admin/v1/blocklists?project_id={world[theirs]['project']['id']}").status_code == 404
    assert padmin.call("POST", "/admin/v1/blocklists", json={"name": "x", "project_id": world[theirs]["project"]["id"]}
                       ).status_code == 404
    listed = padmin.call("GET", "/admin/v1/blocklists").json()["data"]
    assert {b["project_id"] for b in listed} <= {me["project"]["id"]}
    everything = world["admin"].call("GET", "/admin/v1/blocklists").json()["data"]
    assert theirs_list["id"] in {b["id"] for b in everything}


def test_bad_items_are_refused_and_the_audit_keeps_no_terms(world):
    padmin = world["a"]["padmin"]
    made = padmin.call("POST", "/admin/v1/blocklists", json={"name": "checks"}).json()
    path, template = f"/admin/v1/blocklists/{made['id']}/items", "/admin/v1/blocklists/{blocklist_id}/items"
    bad = padmin.call("POST", path, template, json={"items": [{"value": "ok"}, {"kind": "regex", "value": "(open"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "items[1].value"
    assert padmin.call("POST", path, template, json={"items": []}).status_code == 400
    assert padmin.call("POST", "/admin/v1/blocklists", json={"name": "checks"}).status_code == 400  # taken
    item = padmin.call("POST", path, template, json={"items": [{"value": "Project Nightingale"}]}).json()["data"][0]
    assert padmin.call("DELETE", f"{path}/{item['id']}", template + "/{item_id}").status_code == 200
    audit = world["admin"].call("GET", "/admin/v1/audit?limit=1000").json()["data"]
    actions = [e for e in audit if e["action"].startswith("blocklist.")]
    assert {"blocklist.create", "blocklist.items.add", "blocklist.items.remove"} <= {e["action"] for e in actions}
    assert "Nightingale" not in str(audit)


def test_the_store_on_both_databases(database_url):
    from modelworks.control.blocklists import BlocklistService
    from modelworks.control.projects import DEFAULT_PROJECT, ProjectService
    from modelworks.store.db import Database

    db = Database(database_url)
    try:
        db.upgrade()
        ProjectService(db).ensure_default()
        service = BlocklistService(db)
        before = service.version(DEFAULT_PROJECT)
        made = service.create(DEFAULT_PROJECT, "words", "test list")
        service.add_items(made["id"], [{"kind": "term", "value": "alpha"}, {"kind": "regex", "value": r"b\d+"}])
        assert service.for_project(DEFAULT_PROJECT)["words"] == (["alpha"], [r"b\d+"])
        assert service.get(made["id"])["items"] == 2 and service.version(DEFAULT_PROJECT) != before
        assert [b["items"] for b in service.list(DEFAULT_PROJECT) if b["id"] == made["id"]] == [2]
        service.delete(made["id"])
        assert "words" not in service.for_project(DEFAULT_PROJECT)
    finally:
        db.dispose()


def test_cli_manages_blocklists(world):
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelworks", *args, "--url", world["url"],
                               "--api-key", world["a"]["keys"]["project_admin"]["key"]],
                              capture_output=True, text=True, timeout=60)

    made = cli("blocklists", "create", "from-cli", "--description", "made by the CLI")
    assert made.returncode == 0, made.stderr
    blocklist = json.loads(made.stdout)
    added = cli("blocklists", "add", blocklist["id"], "--term", "Woodgrove", "--regex", r"WG-\d+")
    assert added.returncode == 0, added.stderr
    items = json.loads(cli("blocklists", "items", blocklist["id"]).stdout)["data"]
    assert sorted(i["value"] for i in items) == ["WG-\\d+", "Woodgrove"]
    assert cli("blocklists", "remove", blocklist["id"], items[0]["id"]).returncode == 0
    assert json.loads(cli("blocklists", "show", blocklist["id"]).stdout)["items"] == 1
    assert cli("blocklists", "delete", blocklist["id"]).returncode == 0
    assert cli("blocklists", "show", blocklist["id"]).returncode == 1
