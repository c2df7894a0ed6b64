"""The admin API after a security run, on real server processes on SQLite and on the real PostgreSQL: query and
body values out of range are 400s naming them (never 500s), non-finite numbers are refused, expiry times keep
their instant, the OpenAPI document resolves and matches the routes, projects can be archived and deleted, and a
schemathesis run finds no server error and no answer outside the document. Every answer is checked against the
admin API's own OpenAPI document, as in test_admin_api."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import hypothesis
import pytest
import schemathesis
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from conftest import API_KEY
from support.servers import start_modelworks
from test_admin_api import FAKE_ONLY, AdminClient

PLUS_5 = timezone(timedelta(hours=5))
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def _own_server(database: str, tmp_path_factory, name: str):
    """A server on its own store: a fresh SQLite file, or a fresh PostgreSQL database dropped after."""
    config = dict(FAKE_ONLY)
    drop = None
    if database == "postgresql":
        from support.databases import fresh_postgres

        url, drop = fresh_postgres()
        config["database"] = {"url": url}
    proc = start_modelworks(tmp_path_factory.mktemp(f"{name}-{database}"), config, API_KEY, name=name)
    yield proc
    proc.stop()
    if drop:
        drop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    yield from _own_server(request.param, tmp_path_factory, "hardening")


@pytest.fixture(scope="module")
def world(server):
    """Two projects, each with a project admin and a user key, and a deployment made through the API."""
    spec = httpx.get(f"{server.url}/admin/v1/openapi.json").json()
    admin = AdminClient(server.url, API_KEY, spec)
    out = {"spec": spec, "admin": admin, "url": server.url}
    for name in ("a", "b"):
        project = admin.call("POST", "/admin/v1/projects", json={"name": f"hard-{name}-{time.time_ns()}"}).json()
        keys = {role: admin.call("POST", "/admin/v1/keys", json={"name": role, "role": role,
                                                                  "project_id": project["id"]}).json()
                for role in ("project_admin", "user")}
        out[name] = {"project": project, "keys": keys,
                     "padmin": AdminClient(server.url, keys["project_admin"]["key"], spec),
                     "user": AdminClient(server.url, keys["user"]["key"], spec)}
    made = admin.call("POST", "/admin/v1/deployments", json={"name": f"api-{time.time_ns()}", "backends": ["fake"]})
    out["deployment"] = made.json()["name"]
    return out


def _refused(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def _new_project(admin: AdminClient, prefix: str) -> dict:
    made = admin.call("POST", "/admin/v1/projects", json={"name": f"{prefix}-{time.time_ns()}"})
    assert made.status_code == 201, made.text
    return made.json()


def _key(admin: AdminClient, project_id: str, role: str = "user", **fields) -> dict:
    made = admin.call("POST", "/admin/v1/keys", json={"name": role, "role": role, "project_id": project_id, **fields})
    assert made.status_code == 201, made.text
    return made.json()


# -- 1. query integers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query,param", [
    ("/admin/v1/audit?after=9223372036854775808", "after"),  # 2^63: was a 500
    ("/admin/v1/audit?after=2147483648", "after"),  # over the audit's 32-bit sequence numbers: a 500 on PostgreSQL
    ("/admin/v1/audit?after=99999999999999999999999999999", "after"),
    ("/admin/v1/audit?after=-1", "after"),
    ("/admin/v1/audit?after=1e3", "after"),
    ("/admin/v1/audit?after=%EF%BC%91", "after"),  # a full-width digit, which int() reads as 1
    ("/admin/v1/audit?after=1&after=2", "after"),
    ("/admin/v1/audit?limit=1001", "limit"),  # over the documented maximum (was quietly cut to 1000)
    ("/admin/v1/audit?limit=9223372036854775808", "limit"),
    ("/admin/v1/content-log?limit=18446744073709551616", "limit"),
    ("/admin/v1/content-log?limit=ten", "limit"),
])
def test_query_integers_are_validated(world, query, param):
    _refused(world["admin"].call("GET", query), param)


def test_query_integers_at_their_bounds_are_served(world):
    admin = world["admin"]
    assert admin.call("GET", "/admin/v1/audit?after=2147483647").json()["data"] == []
    assert admin.call("GET", "/admin/v1/audit?limit=1000").status_code == 200
    assert admin.call("GET", "/admin/v1/content-log?limit=0").json()["data"] == []


# -- 2. integer (and other) body fields the store cannot hold --------------------------------------------------------

@pytest.mark.parametrize("method,path,body,param", [
    ("POST", "/admin/v1/projects", {"name": "big-1", "monthly_token_cap": 2**63}, "monthly_token_cap"),
    ("POST", "/admin/v1/projects", {"name": "big-2", "rpm_limit": 2**31}, "rpm_limit"),  # INTEGER on PostgreSQL
    ("POST", "/admin/v1/projects", {"name": "big-3", "tpm_limit": 2**64}, "tpm_limit"),
    ("PATCH", "{project}", {"monthly_token_cap": 2**64}, "monthly_token_cap"),
    ("PATCH", "{project}", {"soft_threshold": None}, "soft_threshold"),  # a column that is never null
    ("POST", "/admin/v1/keys", {"name": "k", "rpm_limit": 2**63}, "rpm_limit"),
    ("POST", "/admin/v1/keys", {"name": "k", "tpm_limit": 2**31}, "tpm_limit"),
    ("POST", "/admin/v1/keys", {"name": "k\u0000"}, "name"),  # PostgreSQL refuses NUL in text
    ("POST", "/admin/v1/deployments", {"name": "big", "backends": ["fake"], "tpm": 2**63}, "tpm"),
    ("POST", "/admin/v1/deployments", {"name": "big", "backends": ["fake"], "rpm": 2**31}, "rpm"),
    ("POST", "/admin/v1/deployments", {"name": "big", "backends": ["fake"], "model": "m" * 201}, "model"),
    ("PATCH", "{deployment}", {"tpm": 2**64}, "tpm"),
    ("PATCH", "{deployment}", {"enabled": None}, "enabled"),
    ("PATCH", "{deployment}", {"backends": None}, "backends"),
    ("PATCH", "{deployment}", {"deployment_type": None}, "deployment_type"),
    ("PATCH", "{deployment}", {"price_input_per_1k": None}, "price_input_per_1k"),
])
def test_body_values_out_of_the_stores_range_are_refused(world, method, path, body, param):
    templates = {"{project}": "/admin/v1/projects/{project_id}", "{deployment}": "/admin/v1/deployments/{name}"}
    template = templates.get(path)
    path = {"{project}": f"/admin/v1/projects/{world['a']['project']['id']}",
            "{deployment}": f"/admin/v1/deployments/{world['deployment']}"}.get(path, path)
    _refused(world["admin"].call(method, path, template, json=body), param)


def test_largest_integers_round_trip(world):
    admin = world["admin"]
    made = admin.call("POST", "/admin/v1/projects", json={"name": f"max-{time.time_ns()}", "monthly_token_cap": 2**63 - 1,
                                                         "rpm_limit": 2**31 - 1, "tpm_limit": 2**31 - 1})
    assert made.status_code == 201, made.text
    shown = admin.call("GET", f"/admin/v1/projects/{made.json()['id']}", "/admin/v1/projects/{project_id}").json()
    assert (shown["monthly_token_cap"], shown["rpm_limit"]) == (2**63 - 1, 2**31 - 1)
    key = _key(admin, made.json()["id"], rpm_limit=2**31 - 1, tpm_limit=2**31 - 1)
    assert key["tpm_limit"] == 2**31 - 1


@pytest.mark.parametrize("path,template,param", [
    ("/admin/v1/keys/%00", "/admin/v1/keys/{key_id}", "key_id"),
    ("/admin/v1/projects/a%00b", "/admin/v1/projects/{project_id}", "project_id"),
    ("/admin/v1/deployments/%00", "/admin/v1/deployments/{name}", "name"),
    ("/admin/v1/keys?project_id=%00", None, "project_id"),
])
def test_nul_in_ids_and_filters_is_refused(world, path, template, param):
    _refused(world["admin"].call("GET", path, template), param)


# -- 3. group_by ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "group_by=" + ",".join(["day"] * 2000),
    "&".join(["group_by=day"] * 2000),
    "group_by=day,key,day",
    "group_by=day&group_by=day",
    "group_by=week",
    "group_by=" + ",".join(["x"] * 2000),
])
def test_group_by_is_validated(world, query):
    user = world["a"]["user"]  # any key may read its own project's usage
    r = user.call("GET", f"/admin/v1/usage?{query}")
    _refused(r, "group_by")
    assert len(r.json()["error"]["message"]) < 300


def test_group_by_takes_commas_or_repeats(world):
    user = world["a"]["user"]
    assert user.call("GET", "/admin/v1/usage?group_by=day&group_by=key").json()["group_by"] == ["day", "key"]
    assert user.call("GET", "/admin/v1/usage?group_by=project,deployment").json()["group_by"] == ["project",
                                                                                                  "deployment"]
    assert user.call("GET", "/admin/v1/usage").json()["group_by"] == ["day", "deployment"]
    _refused(user.call("GET", "/admin/v1/usage?format=xml"), "format")
    _refused(user.call("GET", "/admin/v1/usage?since=0001-01-01T00:00:00%2B05:00"), "since")


# -- 4. non-finite numbers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,raw,param", [
    ("POST", "/admin/v1/projects", b'{"name": "inf-1", "monthly_cost_cap": 1e999}', "monthly_cost_cap"),
    ("PATCH", "{project}", b'{"monthly_cost_cap": 1e999}', "monthly_cost_cap"),
    ("POST", "/admin/v1/deployments", b'{"name": "inf", "backends": ["fake"], "price_input_per_1k": 1e999}',
     "price_input_per_1k"),
    ("PATCH", "{deployment}", b'{"price_output_per_1k": 1e999}', "price_output_per_1k"),
])
def test_overflowing_numbers_are_refused_not_stored_as_null(world, method, path, raw, param):
    """`1e999` is valid JSON; pydantic reads it as infinity, which was stored as null: the project looked uncapped."""
    templates = {"{project}": "/admin/v1/projects/{project_id}", "{deployment}": "/admin/v1/deployments/{name}"}
    template = templates.get(path)
    path = {"{project}": f"/admin/v1/projects/{world['a']['project']['id']}",
            "{deployment}": f"/admin/v1/deployments/{world['deployment']}"}.get(path, path)
    _refused(world["admin"].call(method, path, template, content=raw,
                                 headers={"content-type": "application/json"}), param)


@pytest.mark.parametrize("token", [b"Infinity", b"-Infinity", b"NaN"])
def test_nan_and_infinity_tokens_are_refused(world, token):
    r = world["admin"].call("POST", "/admin/v1/projects", content=b'{"name": "nan", "monthly_cost_cap": ' + token + b"}",
                            headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] in (None, "monthly_cost_cap")


def _float_fields():
    """Every number field of every request model of the admin API."""
    from pydantic import BaseModel

    from modelworks.api import admin_models

    minimal = {"ProjectCreate": {"name": "x"}, "KeyCreate": {"name": "x"}, "BlocklistCreate": {"name": "x"},
               "DeploymentCreate": {"name": "x", "backends": ["a"]}, "BlocklistItem": {"value": "x"},
               "BlocklistItemsAdd": {"items": [{"value": "x"}]}}
    models = [m for m in vars(admin_models).values() if isinstance(m, type) and issubclass(m, BaseModel)
              and m.__module__ == admin_models.__name__ and not m.__name__.startswith("_")]
    for model in models:
        properties = model.model_json_schema()["properties"]
        for field, schema in properties.items():
            types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
            if "number" in types:
                yield pytest.param(model, minimal.get(model.__name__, {}), field, id=f"{model.__name__}.{field}")


@pytest.mark.parametrize("model,base,field", list(_float_fields()))
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_admin_float_field_refuses_non_finite_numbers(model, base, field, value):
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**base, field: value}, strict=False)
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


# -- 5. expiry times keep their instant --------------------------------------------------------------------------

def test_expiry_with_an_offset_is_kept_as_that_instant(world):
    admin, url = world["admin"], world["url"]
    project = world["a"]["project"]["id"]
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).astimezone(PLUS_5)
    gone = _key(admin, project, expires_at=past.isoformat())
    shown = datetime.fromisoformat(gone["expires_at"])
    assert shown.utcoffset() == timedelta(0) and shown == past
    # stored as its wall-clock time, it lived five hours too long
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"api-key": gone["key"]}).status_code == 401
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).astimezone(PLUS_5).replace(microsecond=0)
    live = _key(admin, project, expires_at=future.isoformat())
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"api-key": live["key"]}).status_code == 200
    read = admin.call("GET", f"/admin/v1/keys/{live['id']}", "/admin/v1/keys/{key_id}").json()
    assert read["expires_at"] == future.astimezone(timezone.utc).isoformat()
    naive = _key(admin, project, expires_at="2031-01-01T00:00:00")
    assert naive["expires_at"] == "2031-01-01T00:00:00+00:00"  # a time without an offset is UTC
    _refused(admin.call("POST", "/admin/v1/keys", json={"name": "x", "expires_at": "9999-12-31T23:00:00-05:00"}),
             "expires_at")


def test_the_store_keeps_expiry_in_utc(database_url):
    """On SQLite (which drops offsets) and on PostgreSQL whose session time zone is not UTC."""
    from sqlalchemy import make_url

    from modelworks.control.bootstrap import bootstrap
    from modelworks.control.keys import KeyService, key_hash
    from modelworks.control.projects import DEFAULT_PROJECT
    from modelworks.store.db import Database

    if database_url.startswith("postgresql"):
        setup = Database(database_url)
        with setup.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE \"{make_url(database_url).database}\" SET timezone TO 'Asia/Kolkata'")
        setup.dispose()
    db = Database(database_url)
    try:
        bootstrap(db, None)
        keys = KeyService(db)
        past = keys.create(DEFAULT_PROJECT, "user", "p",
                           expires_at=(datetime.now(timezone.utc) - timedelta(minutes=1)).astimezone(PLUS_5))
        assert keys.lookup(key_hash(past.key)) is None
        at = datetime(2031, 6, 1, 12, 0, tzinfo=PLUS_5)
        later = keys.create(DEFAULT_PROJECT, "user", "f", expires_at=at)
        assert keys.get(later.record["id"])["expires_at"] == "2031-06-01T07:00:00+00:00"
        assert keys.lookup(key_hash(later.key)).expires_at == at
    finally:
        db.dispose()


def test_the_store_refuses_keys_of_an_archived_project(database_url):
    """Archiving revokes in the same transaction as it marks the project; a key that slipped in meanwhile (made
    by another replica) is refused all the same, and no new one is made."""
    from sqlalchemy import text

    from modelworks.control.bootstrap import bootstrap
    from modelworks.control.keys import Conflict, KeyService, key_hash
    from modelworks.control.projects import ProjectService
    from modelworks.store.db import Database

    db = Database(database_url)
    try:
        bootstrap(db, None)
        projects, keys = ProjectService(db), KeyService(db)
        project = projects.create("to-archive")
        made = keys.create(project["id"], "user", "k")
        row, revoked = projects.archive(project["id"])
        assert (row["status"], revoked) == ("archived", 1) and row["archived_at"].endswith("+00:00")
        with db.engine.begin() as conn:  # as if it had been made by a replica racing the archive
            conn.execute(text("UPDATE api_keys SET revoked_at = NULL WHERE id = :id"), {"id": made.record["id"]})
        assert keys.lookup(key_hash(made.key)) is None
        with pytest.raises(Conflict):
            keys.create(project["id"], "user", "late")
    finally:
        db.dispose()


# -- 6. the OpenAPI document -------------------------------------------------------------------------------------

def test_every_ref_in_the_document_resolves(world):
    spec = world["spec"]
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert "#/components/schemas/BlocklistItem" in refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        target = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]


def test_every_documented_operation_is_served(world):
    """Each operation of the document answers a call without a key with 401: it is routed, not 404 or 405."""
    for path, operations in world["spec"]["paths"].items():
        concrete = path.replace("{", "").replace("}", "")
        for method in operations:
            r = httpx.request(method.upper(), world["url"] + concrete)
            assert r.status_code == 401, f"{method.upper()} {path}: {r.status_code} {r.text[:200]}"


# -- 7. archiving and deleting projects --------------------------------------------------------------------------

def test_archiving_revokes_keys_keeps_history_and_refuses_new_keys(world):
    admin, url = world["admin"], world["url"]
    project = _new_project(admin, "to-archive")
    user = _key(admin, project["id"])
    padmin = AdminClient(url, _key(admin, project["id"], "project_admin")["key"], world["spec"])
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"api-key": user["key"]}).status_code == 200
    template = "/admin/v1/projects/{project_id}/archive"
    assert padmin.call("POST", f"/admin/v1/projects/{project['id']}/archive", template).status_code == 403
    archived = admin.call("POST", f"/admin/v1/projects/{project['id']}/archive", template)
    assert archived.status_code == 200, archived.text
    body = archived.json()
    assert body["status"] == "archived" and body["archived_at"] and body["revoked_keys"] == 2
    # at once on this replica, and the audit entry is in before the answer
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"api-key": user["key"]}).status_code == 401
    entries = admin.call("GET", "/admin/v1/audit?limit=1000").json()["data"]
    assert any(e["action"] == "project.archive" and e["target"] == project["id"] for e in entries)
    keys = admin.call("GET", f"/admin/v1/keys?project_id={project['id']}").json()["data"]
    assert len(keys) == 2 and all(k["revoked_at"] for k in keys)
    refused = admin.call("POST", "/admin/v1/keys", json={"name": "late", "project_id": project["id"]})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "project_archived"
    patched = admin.call("PATCH", f"/admin/v1/projects/{project['id']}", "/admin/v1/projects/{project_id}",
                         json={"rpm_limit": 5})
    assert patched.status_code == 409
    again = admin.call("POST", f"/admin/v1/projects/{project['id']}/archive", template)
    assert again.status_code == 200 and again.json()["revoked_keys"] == 0
    listed = {p["id"]: p for p in admin.call("GET", "/admin/v1/projects").json()["data"]}
    assert listed[project["id"]]["status"] == "archived"
    only = admin.call("GET", "/admin/v1/projects?status=archived").json()["data"]
    assert project["id"] in {p["id"] for p in only} and {p["status"] for p in only} == {"archived"}
    assert project["id"] not in {p["id"] for p in admin.call("GET", "/admin/v1/projects?status=active").json()["data"]}
    _refused(admin.call("GET", "/admin/v1/projects?status=gone"), "status")
    # its usage stays readable (records reach the store within about a second), so it cannot be deleted
    deadline = time.monotonic() + 10
    while not admin.call("GET", f"/admin/v1/usage?project_id={project['id']}").json()["data"]:
        assert time.monotonic() < deadline, "the archived project's usage never showed"
        time.sleep(0.2)
    kept = admin.call("DELETE", f"/admin/v1/projects/{project['id']}", "/admin/v1/projects/{project_id}")
    assert kept.status_code == 409 and kept.json()["error"]["code"] == "project_not_empty"
    assert "archive" in kept.json()["error"]["message"]


def test_only_an_empty_project_is_deleted(world):
    admin = world["admin"]
    template = "/admin/v1/projects/{project_id}"
    project = _new_project(admin, "to-delete")
    key = _key(admin, project["id"])
    busy = admin.call("DELETE", f"/admin/v1/projects/{project['id']}", template)
    assert busy.status_code == 409 and "not revoked" in busy.json()["error"]["message"]
    admin.call("DELETE", f"/admin/v1/keys/{key['id']}", "/admin/v1/keys/{key_id}")
    _key(admin, project["id"], expires_at="2020-01-01T00:00:00Z")  # an expired key is no obstacle either
    made = admin.call("POST", "/admin/v1/blocklists", json={"name": "gone", "project_id": project["id"]})
    admin.call("POST", f"/admin/v1/blocklists/{made.json()['id']}/items", "/admin/v1/blocklists/{blocklist_id}/items",
               json={"items": [{"value": "x"}]})
    deleted = admin.call("DELETE", f"/admin/v1/projects/{project['id']}", template)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["deleted_keys"] == 2
    assert deleted.json()["deleted_blocklists"] == 1
    assert admin.call("GET", f"/admin/v1/projects/{project['id']}", template).status_code == 404
    assert admin.call("GET", f"/admin/v1/keys/{key['id']}", "/admin/v1/keys/{key_id}").status_code == 404
    entries = admin.call("GET", "/admin/v1/audit?limit=1000").json()["data"]
    assert any(e["action"] == "project.delete" and e["target"] == project["id"] for e in entries)
    assert admin.call("DELETE", f"/admin/v1/projects/{project['id']}", template).status_code == 404


def test_the_default_project_and_the_callers_own_cannot_be_ended(world):
    admin, url = world["admin"], world["url"]
    home = _new_project(admin, "admin-home")
    other_admin = AdminClient(url, _key(admin, home["id"], "admin")["key"], world["spec"])
    for client, project_id, code in ((other_admin, "proj_default", "default_project"),
                                     (other_admin, home["id"], "own_project"),
                                     (admin, "proj_default", "own_project")):
        for method, path in (("POST", f"/admin/v1/projects/{project_id}/archive"),
                             ("DELETE", f"/admin/v1/projects/{project_id}")):
            template = path.replace(project_id, "{project_id}")
            r = client.call(method, path, template)
            assert r.status_code == 409 and r.json()["error"]["code"] == code, (method, path, r.text)
    assert admin.call("GET", "/admin/v1/projects/proj_default", "/admin/v1/projects/{project_id}").json()["status"] == \
        "active"


@pytest.mark.parametrize("mine,theirs", [("a", "b"), ("b", "a")])
def test_archive_and_delete_are_isolated_and_admin_only(world, mine, theirs):
    me, other = world[mine], world[theirs]
    for client in (me["padmin"], me["user"]):
        for method, path, template in (
                ("POST", f"/admin/v1/projects/{other['project']['id']}/archive", "/admin/v1/projects/{project_id}/archive"),
                ("DELETE", f"/admin/v1/projects/{other['project']['id']}", "/admin/v1/projects/{project_id}")):
            assert client.call(method, path, template).status_code == 404
        for method, path, template in (
                ("POST", f"/admin/v1/projects/{me['project']['id']}/archive", "/admin/v1/projects/{project_id}/archive"),
                ("DELETE", f"/admin/v1/projects/{me['project']['id']}", "/admin/v1/projects/{project_id}")):
            assert client.call(method, path, template).status_code == 403
    assert world["admin"].call("GET", f"/admin/v1/projects/{me['project']['id']}",
                               "/admin/v1/projects/{project_id}").json()["status"] == "active"


def test_cli_archives_and_deletes(world):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelworks", *args, "--url", world["url"], "--api-key", API_KEY],
                              capture_output=True, text=True, timeout=60)

    first, second = _new_project(world["admin"], "cli-archive"), _new_project(world["admin"], "cli-delete")
    archived = cli("projects", "archive", first["id"])
    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout)["status"] == "archived"
    listed = cli("projects", "list", "--status", "archived")
    assert first["id"] in {p["id"] for p in json.loads(listed.stdout)["data"]}
    deleted = cli("projects", "delete", second["id"])
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True
    refused = cli("projects", "delete", "proj_default")
    assert refused.returncode == 1 and "409" in refused.stderr


# -- 8. schemathesis over the whole admin API ----------------------------------------------------------------------

FUZZ_EXAMPLES = 15  # per operation and phase; with a fixed seed and no deadline, the run is the same on any machine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_server(request, tmp_path_factory):
    """Its own server and store: the run may archive, delete and revoke whatever it finds. Its admin key lives in
    the default project, which can be neither archived nor deleted, and its id is never in the document."""
    yield from _own_server(request.param, tmp_path_factory, "fuzz")


def _admin_schema():
    """The document the server serves (test_the_served_document_is_the_built_one), loaded at import so that
    schemathesis makes one test per operation."""
    from schemathesis.config import SchemathesisConfig

    from modelworks.api.admin_openapi import document

    config = SchemathesisConfig.from_dict({
        "seed": 20261127,
        "cache": {"enabled": False},
        "generation": {"mode": "all", "max-examples": FUZZ_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_dict(document(), config=config)


fuzzed = _admin_schema()


def test_the_served_document_is_the_built_one(fuzz_server):
    from modelworks.api.admin_openapi import document

    assert httpx.get(f"{fuzz_server.url}/admin/v1/openapi.json").json() == json.loads(json.dumps(document()))


@fuzzed.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_fuzz_the_admin_api(case, fuzz_server):
    case.call_and_validate(base_url=fuzz_server.url, headers={"authorization": f"Bearer {API_KEY}"},
                           checks=[not_a_server_error, response_schema_conformance], timeout=30)


def test_the_fuzzed_servers_admin_key_still_works(fuzz_server):
    r = httpx.get(f"{fuzz_server.url}/admin/v1/projects", headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
