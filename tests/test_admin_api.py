"""The admin API on real server processes, on SQLite and on the real PostgreSQL: tenant isolation in both
directions on every endpoint, roles, revocation, and the audit trail. Every answer is checked against the
admin API's own OpenAPI document (`/admin/v1/openapi.json`)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import API_KEY
from support.servers import start_modelworks
from support.waiting import wait_until

FAKE_ONLY = {"backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}}}


class AdminClient:
    """Calls the admin API with one key and checks each answer against the published document."""

    def __init__(self, url: str, key: str, spec: dict) -> None:
        self.http = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        self.spec = spec
        self.registry = Registry().with_resource("urn:admin", Resource(contents=spec, specification=DRAFT202012))

    def call(self, method: str, path: str, template: str | None = None, **kwargs) -> httpx.Response:
        r = self.http.request(method, path, **kwargs)
        op = self.spec["paths"][template or path.split("?")[0]][method.lower()]
        responses = op["responses"]
        schema = (responses.get(str(r.status_code)) or responses.get("default"))["content"]
        schema = next(iter(schema.values()))["schema"]
        if r.headers["content-type"].startswith("application/json"):
            body = r.json()
            errors = list(Draft202012Validator({"$ref": "urn:admin#/paths/" + _escape(template or path.split("?")[0])
                                                + f"/{method.lower()}/responses/" + (str(r.status_code) if str(
                                                    r.status_code) in responses else "default")
                                                + "/content/application~1json/schema"},
                                               registry=self.registry).iter_errors(body))
            assert not errors, f"{method} {path} [{r.status_code}]: {[e.message for e in errors]}"
        return r


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def admin_server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"admin-{request.param}")
    config = dict(FAKE_ONLY)
    drop = None
    if request.param == "postgresql":
        from support.databases import fresh_postgres

        url, drop = fresh_postgres()
        config["database"] = {"url": url}
    proc = start_modelworks(tmp, config, API_KEY, name="admin")
    proc.database = config.get("database") or {"url": f"sqlite:///{tmp / 'admin-data' / 'modelworks.db'}"}
    proc.tmp = tmp
    yield proc
    proc.stop()
    if drop:
        drop()


@pytest.fixture(scope="module")
def world(admin_server):
    """Two projects, each with a project admin and a user key, made by the admin."""
    spec = httpx.get(f"{admin_server.url}/admin/v1/openapi.json", timeout=60).json()
    admin = AdminClient(admin_server.url, API_KEY, spec)
    out = {"spec": spec, "admin": admin, "url": admin_server.url}
    for name in ("a", "b"):
        project = admin.call("POST", "/admin/v1/projects", json={"name": f"team-{name}-{time.time_ns()}"}).json()
        keys = {}
        for role in ("project_admin", "user"):
            made = admin.call("POST", "/admin/v1/keys", json={"name": f"{name}-{role}", "role": role,
                                                              "project_id": project["id"]})
            assert made.status_code == 201
            keys[role] = made.json()
        out[name] = {"project": project, "keys": keys,
                     "padmin": AdminClient(admin_server.url, keys["project_admin"]["key"], spec),
                     "user": AdminClient(admin_server.url, keys["user"]["key"], spec)}
    return out


@pytest.mark.parametrize("mine,theirs", [("a", "b"), ("b", "a")])
def test_tenant_isolation_on_every_endpoint(world, mine, theirs):
    me, other = world[mine], world[theirs]
    other_project = other["project"]["id"]
    other_key = other["keys"]["user"]["id"]
    for client in (me["padmin"], me["user"]):
        assert client.call("GET", f"/admin/v1/usage?project_id={other_project}").status_code == 404
        own_usage = client.call("GET", "/admin/v1/usage?group_by=project").json()["data"]
        assert {r["project_id"] for r in own_usage} <= {me["project"]["id"]}
        assert client.call("GET", f"/admin/v1/projects/{other_project}", "/admin/v1/projects/{project_id}").status_code == 404
        assert client.call("PATCH", f"/admin/v1/projects/{other_project}", "/admin/v1/projects/{project_id}",
                           json={"rpm_limit": 5}).status_code == 404
        assert client.call("GET", f"/admin/v1/keys/{other_key}", "/admin/v1/keys/{key_id}").status_code == 404
        assert client.call("DELETE", f"/admin/v1/keys/{other_key}", "/admin/v1/keys/{key_id}").status_code == 404
        projects = client.call("GET", "/admin/v1/projects").json()["data"]
        assert [p["id"] for p in projects] == [me["project"]["id"]]
    padmin = me["padmin"]
    assert padmin.call("GET", f"/admin/v1/keys?project_id={other_project}").status_code == 404
    assert padmin.call("POST", "/admin/v1/keys", json={"name": "x", "project_id": other_project}).status_code == 404
    keys = padmin.call("GET", "/admin/v1/keys").json()["data"]
    assert {k["project_id"] for k in keys} == {me["project"]["id"]}
    audit = padmin.call("GET", "/admin/v1/audit").json()["data"]
    assert audit and {e["project_id"] for e in audit} == {me["project"]["id"]}


def test_roles(world):
    a = world["a"]
    user, padmin = a["user"], a["padmin"]
    assert user.call("GET", "/admin/v1/keys").status_code == 403
    assert user.call("POST", "/admin/v1/keys", json={"name": "x"}).status_code == 403
    assert user.call("GET", "/admin/v1/audit").status_code == 403
    assert user.call("POST", "/admin/v1/projects", json={"name": "nope"}).status_code == 403
    assert padmin.call("POST", "/admin/v1/projects", json={"name": "nope"}).status_code == 403
    assert padmin.call("POST", "/admin/v1/keys", json={"name": "x", "role": "admin"}).status_code == 403
    assert padmin.call("PATCH", f"/admin/v1/projects/{a['project']['id']}", "/admin/v1/projects/{project_id}",
                       json={"rpm_limit": 5}).status_code == 403
    assert padmin.call("GET", "/admin/v1/audit/verify").status_code == 403
    own = user.call("GET", f"/admin/v1/keys/{a['keys']['user']['id']}", "/admin/v1/keys/{key_id}")
    assert own.status_code == 200 and "key" not in own.json()
    made = padmin.call("POST", "/admin/v1/keys", json={"name": "ci", "role": "user"})
    assert made.status_code == 201 and made.json()["project_id"] == a["project"]["id"]
    assert made.json()["key"].startswith("mw-")


@pytest.mark.parametrize("body,param", [
    ({"name": "", "role": "user"}, "name"),
    ({"name": "x", "role": "emperor"}, "role"),
    ({"name": "x", "expires_at": 12}, "expires_at"),
    ({"name": "x", "rpm_limit": "many"}, "rpm_limit"),
    ({"name": "x", "colour": "blue"}, "colour"),
])
def test_bad_admin_input_names_the_field(world, body, param):
    r = world["admin"].call("POST", "/admin/v1/keys", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_revocation_and_expiry(world):
    admin = world["admin"]
    project = world["a"]["project"]["id"]
    made = admin.call("POST", "/admin/v1/keys", json={"name": "temp", "project_id": project}).json()
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {made['key']}"}
    url = world["url"]
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=headers, timeout=60).status_code == 200
    revoked = admin.call("DELETE", f"/admin/v1/keys/{made['id']}", "/admin/v1/keys/{key_id}").json()
    assert revoked["revoked_at"] is not None
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=headers, timeout=60).status_code == 401
    past = admin.call("POST", "/admin/v1/keys", json={"name": "old", "project_id": project,
                                                      "expires_at": "2020-01-01T00:00:00Z"}).json()
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, headers={"api-key": past["key"]}, timeout=60)
    assert r.status_code == 401


def test_audit_records_actions_and_failed_logins_without_secrets(world):
    admin = world["admin"]
    httpx.get(f"{world['url']}/v1/models", headers={"authorization": "Bearer mw-not-a-real-key-0000000000"},
              timeout=60)
    # the 401 waits for its entry (up to 5 s); a store slower than that on a busy machine is waited for here
    entries = wait_until(lambda: admin.call("GET", "/admin/v1/audit?limit=1000").json()["data"],
                         lambda rows: any(e["action"] == "auth.failed" for e in rows), what="the auth.failed entry")
    actions = {e["action"] for e in entries}
    assert {"project.create", "key.create", "auth.failed"} <= actions
    exported = admin.http.get("/admin/v1/audit/export")
    assert exported.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert len(lines) >= len(entries)
    for secret in [world[p]["keys"][r]["key"] for p in ("a", "b") for r in ("user", "project_admin")] + [API_KEY]:
        assert secret not in exported.text
    assert "mw-not-a-real-key" not in exported.text
    verdict = admin.call("GET", "/admin/v1/audit/verify").json()
    assert verdict["ok"] and verdict["entries"] >= len(lines)  # failed logins may land meanwhile


def test_revocation_reaches_another_replica_within_5_seconds(admin_server, world):
    """A second server process on the same database (PostgreSQL, or the same SQLite file)."""
    config = {**FAKE_ONLY, "database": admin_server.database}
    second = start_modelworks(admin_server.tmp, config, API_KEY, name="replica-2")
    try:
        made = world["admin"].call("POST", "/admin/v1/keys", json={"name": "shared"}).json()
        chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"api-key": made["key"]}
        first = httpx.post(f"{second.url}/v1/chat/completions", json=chat, headers=headers, timeout=60)
        assert first.status_code == 200
        world["admin"].call("DELETE", f"/admin/v1/keys/{made['id']}", "/admin/v1/keys/{key_id}")
        revoked_at = time.monotonic()

        def answered() -> int:
            # the key cache (4 s) is checked when a call arrives: judge a call by when it was sent, not answered
            sent = time.monotonic()
            status = httpx.post(f"{second.url}/v1/chat/completions", json=chat, headers=headers,
                                timeout=60).status_code
            assert status in (200, 401), status
            assert status == 401 or sent - revoked_at < 5, "the other replica still accepts the revoked key"
            return status

        wait_until(answered, lambda status: status == 401, interval=0.1, what="the revoked key refused")
    finally:
        second.stop()


def test_cli_over_the_admin_api(world, tmp_path):
    import subprocess
    import sys

    def cli(*args: str, key: str = API_KEY) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelworks", *args, "--url", world["url"], "--api-key", key],
                              capture_output=True, text=True, timeout=60)

    made = cli("projects", "create", f"cli-{time.time_ns()}", "--monthly-token-cap", "5000")
    assert made.returncode == 0, made.stderr
    project = json.loads(made.stdout)
    key = cli("keys", "create", "--project", project["id"], "--name", "cli-key", "--role", "project_admin")
    assert key.returncode == 0 and "shown this once" in key.stderr
    created = json.loads(key.stdout)
    listed = cli("keys", "list", key=created["key"])
    assert [k["id"] for k in json.loads(listed.stdout)["data"]] == [created["id"]]
    assert cli("keys", "revoke", created["id"]).returncode == 0
    assert cli("keys", "list", key=created["key"]).returncode == 1  # revoked: 401
    verify = cli("audit", "verify")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]
    export = cli("audit", "export")
    assert all(json.loads(line)["hash"] for line in export.stdout.splitlines())
    denied = cli("projects", "create", "nope", key=world["a"]["keys"]["user"]["key"])
    assert denied.returncode == 1 and "403" in denied.stderr


def test_a_project_is_named_by_its_name_as_by_its_id(world, tmp_path):
    """As a new user does it: `projects create team-x`, then `keys create --project team-x` (no --name), and every
    other place that takes a project takes its name too."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelworks", *args, "--url", world["url"], "--api-key", API_KEY],
                              capture_output=True, text=True, timeout=60)

    name = f"team-{time.time_ns()}"
    made = cli("projects", "create", name)
    assert made.returncode == 0, made.stderr
    project = json.loads(made.stdout)
    key = cli("keys", "create", "--project", name)
    assert key.returncode == 0, key.stderr
    created = json.loads(key.stdout)
    assert created["project_id"] == project["id"] and created["name"] == created["id"]  # unnamed: its id
    listed = json.loads(cli("keys", "list", "--project", name).stdout)["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert json.loads(cli("projects", "show", name).stdout)["id"] == project["id"]
    admin = world["admin"]
    usage = admin.call("GET", f"/admin/v1/usage?project_id={name}")
    assert usage.status_code == 200 and "budget" in usage.json()
    patched = admin.call("PATCH", f"/admin/v1/projects/{name}", "/admin/v1/projects/{project_id}",
                         json={"monthly_token_cap": 1000})
    assert patched.json()["id"] == project["id"] and patched.json()["monthly_token_cap"] == 1000
    missing = cli("keys", "create", "--project", f"{name}-nope")
    assert missing.returncode == 1 and f"No project '{name}-nope'" in missing.stderr
    # another project's name is as invisible to a project admin as its id
    other = world["a"]["padmin"].call("GET", f"/admin/v1/projects/{name}", "/admin/v1/projects/{project_id}")
    assert other.status_code == 404 and name in other.json()["error"]["message"]


def test_every_deployment_has_a_quota(world):
    """As on Azure: a deployment made without a TPM gets the default one, and its answers carry the rate-limit
    headers."""
    admin = world["admin"]
    name = f"no-tpm-{time.time_ns()}"
    made = admin.call("POST", "/admin/v1/deployments", json={"name": name, "backends": ["fake"]})
    assert made.status_code == 201, made.text
    assert made.json()["tpm"] == 1_000_000 and made.json()["rpm_effective"] == 6_000
    config_row = admin.call("GET", "/admin/v1/deployments/fake", "/admin/v1/deployments/{name}").json()
    assert config_row["tpm"] == 1_000_000  # from the config file, without a tpm
    answer = httpx.post(f"{world['url']}/v1/chat/completions", headers={"api-key": API_KEY}, timeout=60,
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert answer.headers["x-ratelimit-limit-requests"] == "6000"
    admin.call("DELETE", f"/admin/v1/deployments/{name}", "/admin/v1/deployments/{name}")


def test_deployments_take_effect_without_restart(world, admin_server):
    admin = world["admin"]
    chat = {"model": "", "messages": [{"role": "user", "content": "hi"}]}
    url = world["url"]
    name = f"made-live-{time.time_ns()}"
    config_row = admin.call("GET", "/admin/v1/deployments/fake", "/admin/v1/deployments/{name}").json()
    assert config_row["source"] == "config"
    made = admin.call("POST", "/admin/v1/deployments", json={"name": name, "backends": ["fake"], "tpm": 10000,
                                                            "price_input_per_1k": 0.5, "data_zone": "EU"})
    assert made.status_code == 201 and made.json()["rpm_effective"] == 60
    headers = {"api-key": API_KEY}
    served = httpx.post(f"{url}/v1/chat/completions", json={**chat, "model": name}, headers=headers, timeout=60)
    assert served.status_code == 200
    assert name in {m["id"] for m in httpx.get(f"{url}/v1/models", headers=headers, timeout=60).json()["data"]}
    off = admin.call("PATCH", f"/admin/v1/deployments/{name}", "/admin/v1/deployments/{name}", json={"enabled": False})
    assert off.json()["enabled"] is False
    gone = httpx.post(f"{url}/v1/chat/completions", json={**chat, "model": name}, headers=headers, timeout=60)
    assert gone.status_code == 404
    assert admin.call("DELETE", f"/admin/v1/deployments/{name}", "/admin/v1/deployments/{name}").status_code == 200
    assert admin.call("GET", f"/admin/v1/deployments/{name}", "/admin/v1/deployments/{name}").status_code == 404


def test_deployment_rules(world):
    admin, user = world["admin"], world["a"]["padmin"]
    assert user.call("GET", "/admin/v1/deployments").status_code == 200
    assert user.call("POST", "/admin/v1/deployments", json={"name": "x", "backends": ["fake"]}).status_code == 403
    bad = admin.call("POST", "/admin/v1/deployments", json={"name": "x", "backends": ["nowhere"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "backends"
    kind = admin.call("POST", "/admin/v1/deployments", json={"name": "x", "backends": ["fake"], "deployment_type": "Fast"})
    assert kind.status_code == 400 and kind.json()["error"]["param"] == "deployment_type"
    policy = admin.call("POST", "/admin/v1/deployments", json={"name": "x", "backends": ["fake"],
                                                              "content_filter_policy": "nonexistent"})
    assert policy.status_code == 400 and policy.json()["error"]["param"] == "content_filter_policy"
    locked = admin.call("PATCH", "/admin/v1/deployments/fake", "/admin/v1/deployments/{name}", json={"tpm": 5})
    assert locked.status_code == 400 and locked.json()["error"]["code"] == "managed_by_config"


def test_a_deployment_made_on_one_replica_serves_on_another(admin_server, world):
    config = {**FAKE_ONLY, "database": admin_server.database}
    second = start_modelworks(admin_server.tmp, config, API_KEY, name="replica-3")
    try:
        name = f"shared-{time.time_ns()}"
        world["admin"].call("POST", "/admin/v1/deployments", json={"name": name, "backends": ["fake"]})
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
        # the catalog is polled every 2 s by a timer that a busy machine may run late: wait on the answer
        wait_until(lambda: httpx.post(f"{second.url}/v1/chat/completions", json=body, headers={"api-key": API_KEY},
                                      timeout=60).status_code, lambda status: status == 200, interval=0.1,
                   what="the new deployment served by the other replica")
    finally:
        second.stop()
