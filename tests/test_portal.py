"""The portal without a browser, on a real server process: sessions, the cookie, CSRF and Origin checks, the
Content-Security-Policy, and what each role is shown. (The flows in a real browser are in test_portal_browser.)"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from conftest import API_KEY
from support.servers import start_modelworks

CONFIG = {"backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}},
          "portal": {"idle_minutes": 0.05}}  # 3 s idle timeout: the test of it waits it out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("portal"), CONFIG, API_KEY, name="portal")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keys(server):
    """A project with a project-admin key and a user key, made through the admin API."""
    admin = httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=30)
    project = admin.post("/admin/v1/projects", json={"name": f"portal-{time.time_ns()}"}).json()
    out = {"admin": API_KEY, "project": project}
    for role in ("project_admin", "user"):
        made = admin.post("/admin/v1/keys", json={"role": role, "project_id": project["id"], "name": f"p-{role}"})
        out[role] = made.json()["key"]
        out[f"{role}_id"] = made.json()["id"]
    return out


class Browser:
    """An HTTP client that behaves as a browser on the portal's pages: keeps cookies, sends the page's Origin,
    and reads the CSRF token from the page it is on."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
        self.csrf = ""

    def get(self, path: str) -> httpx.Response:
        r = self.http.get(path)
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', r.text)
        if found:
            self.csrf = found.group(1)
        return r

    def post(self, path: str, data: dict | None = None, origin: str | None = "own", csrf: bool = True,
             **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if origin is not None:
            headers["origin"] = self.url if origin == "own" else origin
        form = dict(data or {})
        if csrf and self.csrf:
            form.setdefault("csrf", self.csrf)
        if path == "/portal/keys":  # the key form's one-time token
            form.setdefault("once", f"{time.time_ns()}")
        return self.http.post(path, data=form, headers=headers, **kwargs)

    def sign_in(self, key: str) -> httpx.Response:
        return self.post("/portal/sign-in", {"key": key})


def _cookie_header(r: httpx.Response) -> str:
    return r.headers.get("set-cookie", "")


def test_a_key_becomes_a_session_the_browser_cannot_read(server, keys):
    b = Browser(server.url)
    page = b.get("/portal")
    assert page.status_code == 303 and page.headers["location"].startswith("/portal/sign-in")
    form = b.get("/portal/sign-in")
    assert form.status_code == 200 and 'name="key"' in form.text
    signed = b.sign_in(keys["admin"])
    assert signed.status_code == 303 and signed.headers["location"] == "/portal"
    cookie = _cookie_header(signed)
    session_id = re.match(r"mw_portal=([^;]+)", cookie).group(1)
    assert len(session_id) >= 40 and API_KEY not in cookie
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/portal"} <= flags
    assert "secure" not in flags  # plain HTTP here; over TLS the cookie is Secure and __Host- (unit-tested below)
    overview = b.get("/portal")
    assert overview.status_code == 200
    assert API_KEY not in overview.text and keys["admin"] not in overview.text
    assert f"{server.url}/v1" in overview.text  # the OpenAI-style base URL
    assert "AzureOpenAI" in overview.text and "curl" in overview.text
    # the session is not a key: the APIs still take keys only
    assert b.http.get("/admin/v1/projects").status_code == 401
    assert b.http.post("/v1/chat/completions", json={"model": "fake", "messages": []}).status_code == 401


def test_a_wrong_key_is_refused_and_not_echoed(server):
    b = Browser(server.url)
    b.get("/portal/sign-in")
    refused = b.sign_in("mw-not-a-real-key-0123456789")
    assert refused.status_code == 401 and "unknown, revoked or expired" in refused.text
    assert "mw-not-a-real-key" not in refused.text and "set-cookie" not in refused.headers


def test_sign_out_ends_the_session_on_the_server(server, keys):
    b = Browser(server.url)
    b.sign_in(keys["user"])
    old_cookie = dict(b.http.cookies)
    b.get("/portal")
    out = b.post("/portal/sign-out")
    assert out.status_code == 303 and "Max-Age=0" in _cookie_header(out)
    # the old cookie, replayed, no longer works: the session was revoked in the store, not only forgotten
    replay = httpx.get(f"{server.url}/portal", cookies=old_cookie, timeout=30)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/portal/sign-in")


def test_changes_need_the_csrf_token_and_the_own_origin(server, keys):
    b = Browser(server.url)
    b.sign_in(keys["admin"])
    b.get("/portal")
    assert b.csrf
    no_token = b.post("/portal/sign-out", csrf=False)
    assert no_token.status_code == 403 and "security token" in no_token.text
    wrong_token = b.post("/portal/sign-out", {"csrf": "x" * 43})
    assert wrong_token.status_code == 403
    other_site = b.post("/portal/sign-out", origin="https://evil.example")
    assert other_site.status_code == 403 and "another origin" in other_site.text
    no_origin = b.post("/portal/sign-out", origin=None)
    assert no_origin.status_code == 403
    # a sign-in from another site's page is refused too (login CSRF)
    assert Browser(server.url).post("/portal/sign-in", {"key": API_KEY}, origin="https://evil.example").status_code == 403
    referer_only = b.post("/portal/sign-out", origin=None, headers={"referer": f"{server.url}/portal"})
    assert referer_only.status_code == 303  # a browser that sends only a Referer from this origin


def test_every_answer_carries_a_strict_content_security_policy(server, keys):
    b = Browser(server.url)
    answers = [b.get("/portal/sign-in"), b.sign_in(keys["admin"]), b.get("/portal"), b.get("/portal/nowhere"),
               b.get("/portal/static/portal.css"), b.get("/portal/static/portal.js")]
    for r in answers:
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    page = b.get("/portal").text
    assert "<script>" not in page and " style=" not in page and "onclick" not in page  # nothing inline
    assert answers[4].headers["content-type"].startswith("text/css")


def test_roles_shape_what_is_shown(server, keys):
    admin, padmin, user = Browser(server.url), Browser(server.url), Browser(server.url)
    admin.sign_in(keys["admin"])
    padmin.sign_in(keys["project_admin"])
    user.sign_in(keys["user"])
    assert 'href="/portal/deployments"' in admin.get("/portal").text
    assert 'href="/portal/deployments"' in padmin.get("/portal").text
    user_page = user.get("/portal").text
    assert 'href="/portal/deployments"' not in user_page and "your key" in user_page
    assert "your project" in padmin.get("/portal").text and "all projects" in admin.get("/portal").text


def test_todays_figures_are_the_callers_own(server, keys):
    user = Browser(server.url)
    user.sign_in(keys["user"])
    before = _today(user.get("/portal").text)
    for _ in range(3):
        r = httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": keys["user"]}, timeout=30,
                       json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": API_KEY}, timeout=30,  # another key's
               json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    deadline = time.monotonic() + 30
    while _today(user.get("/portal").text)[0] < before[0] + 3:  # usage reaches the store in batches (1 s)
        assert time.monotonic() < deadline, "the user's calls never showed on the overview"
        time.sleep(0.3)
    assert _today(user.get("/portal").text)[0] == before[0] + 3


def _today(page: str) -> tuple[int, int, int]:
    values = [int(re.search(rf'id="today-{name}">([\d,]+)<', page).group(1).replace(",", ""))
              for name in ("requests", "tokens", "errors")]
    return tuple(values)


def test_a_session_ends_when_idle_or_when_its_key_is_revoked(server, keys):
    admin = httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=30)
    made = admin.post("/admin/v1/keys", json={"role": "user", "project_id": keys["project"]["id"]}).json()
    b = Browser(server.url)
    b.sign_in(made["key"])
    assert b.get("/portal").status_code == 200
    admin.delete(f"/admin/v1/keys/{made['id']}")
    assert b.get("/portal").status_code == 303  # the key's revocation ends its sessions at once
    idle = Browser(server.url)
    idle.sign_in(keys["user"])
    assert idle.get("/portal").status_code == 200
    time.sleep(3.5)  # past the 3-second idle timeout of this server
    assert idle.get("/portal").status_code == 303


def test_sign_in_goes_back_only_to_portal_pages(server, keys):
    for target, expected in (("/portal/deployments", "/portal/deployments"), ("https://evil.example/x", "/portal"),
                             ("//evil.example/portal", "/portal"), ("/admin/v1/keys", "/portal"),
                             ("/portal\\@evil.example", "/portal")):
        r = Browser(server.url).post("/portal/sign-in", {"key": API_KEY, "next": target})
        assert r.headers["location"] == expected, target


def test_static_files_stay_in_their_folder(server):
    for path in ("/portal/static/../web.py", "/portal/static/%2e%2e/web.py", "/portal/static/../../settings.py"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404


def test_the_cookie_over_tls_is_secure_and_host_only():
    from modelworks.api.request import Request
    from modelworks.portal import security

    request = Request({"type": "http", "scheme": "https", "headers": [(b"host", b"ai.example")], "path": "/portal",
                       "method": "GET"}, None, {})
    cookie = security.set_cookie(request, "abc", 60)
    assert cookie.startswith("__Host-mw_portal=abc;") and "Secure" in cookie and "Path=/;" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert security.own_origin(request) == "https://ai.example"


def test_admins_manage_deployments_from_the_portal(server, keys):
    b = Browser(server.url)
    b.sign_in(keys["admin"])
    listing = b.get("/portal/deployments")
    assert listing.status_code == 200 and 'id="create-deployment"' in listing.text
    assert "1,000,000 / 6,000" in listing.text  # the config's `fake`: the default quota, RPM derived
    name = f"made-{time.time_ns()}"
    bad = b.post("/portal/deployments", {"name": name, "backends": "fake", "tpm": "1500"})
    assert bad.status_code == 400 and "steps of 1,000" in bad.text and f'value="{name}"' in bad.text
    unknown = b.post("/portal/deployments", {"name": name, "backends": "nowhere"})
    assert unknown.status_code == 400 and "Unknown backend" in unknown.text
    made = b.post("/portal/deployments", {"name": name, "backends": "fake", "tpm": "12000", "enabled": "on"})
    assert made.status_code == 303, made.text
    page = b.get(f"/portal/deployments/{name}")
    assert page.status_code == 200 and 'id="edit-deployment"' in page.text
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    served = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={"api-key": API_KEY}, timeout=30)
    assert served.status_code == 200 and served.headers["x-ratelimit-limit-requests"] == "72"  # 12,000 TPM
    assert "12,000 / 72" in b.get("/portal/deployments").text
    edited = b.post(f"/portal/deployments/{name}", {"backends": "fake", "tpm": "24000", "enabled": "on",
                                                    "deployment_type": "GlobalStandard"})
    assert edited.status_code == 303
    assert "24,000 / 144" in b.get("/portal/deployments").text
    b.get(f"/portal/deployments/{name}")
    assert b.post(f"/portal/deployments/{name}/enabled", {"enabled": "false"}).status_code == 303
    off = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={"api-key": API_KEY}, timeout=30)
    assert off.status_code == 404
    wrong = b.post(f"/portal/deployments/{name}/delete", {"confirm": "something else"})
    assert wrong.status_code == 400
    assert b.post(f"/portal/deployments/{name}/delete", {"confirm": name}).status_code == 303
    assert b.get(f"/portal/deployments/{name}").status_code == 404
    audit = httpx.get(f"{server.url}/admin/v1/audit?limit=1000", headers={"api-key": API_KEY}, timeout=30).json()
    actions = [(e["action"], e["detail"].get("via")) for e in audit["data"] if e["target"] == name]
    assert actions == [("deployment.create", "portal"), ("deployment.update", "portal"),
                       ("deployment.update", "portal"), ("deployment.delete", "portal")]


def test_only_admins_change_deployments(server, keys):
    padmin, user = Browser(server.url), Browser(server.url)
    padmin.sign_in(keys["project_admin"])
    user.sign_in(keys["user"])
    page = padmin.get("/portal/deployments")
    assert page.status_code == 200 and 'id="create-deployment"' not in page.text
    refused = padmin.post("/portal/deployments", {"name": "sneaky", "backends": "fake"})
    assert refused.status_code == 403
    assert user.get("/portal/deployments").status_code == 403
    config_row = Browser(server.url)
    config_row.sign_in(keys["admin"])
    assert 'id="edit-deployment"' not in config_row.get("/portal/deployments/fake").text  # from the config file


def test_vendored_files_match_their_manifest_and_scripts_stay_small():
    """Nothing is fetched from a CDN: any third-party file is vendored with its version and SHA-256, checked here;
    and all the portal's script, gzipped, stays under 150 KB."""
    import gzip
    import hashlib
    import json
    from pathlib import Path

    import modelworks.portal

    static = Path(modelworks.portal.__file__).parent / "static"
    manifest = json.loads((static / "vendor" / "MANIFEST.json").read_text())
    listed = {entry["file"]: entry for entry in manifest["files"]}
    present = {p.name for p in (static / "vendor").iterdir() if p.name != "MANIFEST.json"}
    assert present == set(listed), f"vendored files not in the manifest, or listed and missing: {present ^ set(listed)}"
    for name, entry in listed.items():
        assert {"library", "version", "license", "source", "sha256"} <= set(entry), name
        assert hashlib.sha256((static / "vendor" / name).read_bytes()).hexdigest() == entry["sha256"], name
    scripts = [p for p in static.rglob("*.js")]
    gzipped = sum(len(gzip.compress(p.read_bytes(), 9)) for p in scripts)
    assert scripts and gzipped < 150 * 1024, f"{gzipped} bytes of script, gzipped"


def test_keys_are_made_shown_once_and_revoked_from_the_portal(server, keys):
    b = Browser(server.url)
    b.sign_in(keys["project_admin"])
    page = b.get("/portal/keys")
    assert page.status_code == 200 and keys["project"]["name"] in page.text
    assert 'value="admin"' not in page.text  # a project admin cannot make admin keys
    made = b.post("/portal/keys", {"name": "from-the-portal", "role": "user", "expires": "2099-01-31"})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    secret = re.search(r'<code id="new-key">(mw-[^<]+)</code>', made.text).group(1)
    ok = httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": secret}, timeout=30,
                    json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200
    again = b.get("/portal/keys")
    assert secret not in again.text and "from-the-portal" in again.text  # shown once
    key_id = re.search(r'id="key-(key_\w+)">\s*<td><code>' + re.escape(secret[:10]), again.text).group(1)
    assert "2099-01-31" in again.text
    assert b.post(f"/portal/keys/{key_id}/revoke").status_code == 303
    gone = httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": secret}, timeout=30,
                      json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert gone.status_code == 401
    sneaky = b.post("/portal/keys", {"role": "admin"})
    assert sneaky.status_code == 403
    other = b.post("/portal/keys", {"role": "user", "project_id": "proj_default"})
    assert other.status_code == 400 and "No project" in other.text  # another project is not there for them
    assert b.post("/portal/projects", {"name": "nope"}).status_code == 403


def test_admins_see_projects_with_budgets_and_spend(server, keys):
    b = Browser(server.url)
    b.sign_in(keys["admin"])
    name = f"budget-{time.time_ns()}"
    b.get("/portal/keys")
    assert b.post("/portal/projects", {"name": name, "monthly_token_cap": "1,000"}).status_code == 303
    page = b.get("/portal/keys")
    assert name in page.text and "1,000" in page.text
    project_id = re.search(rf"{name} <span class=\"hint\">(proj_\w+)</span>", page.text).group(1)
    made = b.post("/portal/keys", {"role": "user", "project_id": project_id})
    secret = re.search(r'<code id="new-key">(mw-[^<]+)</code>', made.text).group(1)
    for _ in range(2):
        httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": secret}, timeout=30,
                   json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    deadline = time.monotonic() + 30
    while True:  # usage reaches the store within a second or so
        row = re.search(rf'id="project-{project_id}">(.*?)</tr>', b.get("/portal/keys").text, re.S).group(1)
        if "<meter" in row and not re.search(r'<td class="num">0</td>', row):
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    b.get("/portal/keys")
    assert b.post(f"/portal/projects/{project_id}", {"monthly_token_cap": "", "monthly_cost_cap": "5"}).status_code == 303
    row = re.search(rf'id="project-{project_id}">(.*?)</tr>', b.get("/portal/keys").text, re.S).group(1)
    assert "5.00" in row and "none" in row  # the token cap removed, a cost cap set


def test_usage_shows_the_callers_calls_as_charts_table_and_csv(server, keys):
    for key in (keys["user"], keys["user"], API_KEY):
        httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": key}, timeout=30,
                   json={"model": "fake", "messages": [{"role": "user", "content": "count me"}]})
    user = Browser(server.url)
    user.sign_in(keys["user"])
    deadline = time.monotonic() + 30
    while "fake" not in user.get("/portal/usage").text:
        assert time.monotonic() < deadline, "the calls never showed"
        time.sleep(0.3)
    page = user.get("/portal/usage")
    assert page.status_code == 200 and 'id="chart-tokens-svg"' in page.text and "<rect" in page.text
    table = re.search(r'<table id="usage-table">(.*?)</table>', page.text, re.S).group(1)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert today in table and "fake" in table
    assert "your key" in page.text and 'value="project"' not in page.text  # a user groups by deployment only
    assert user.get("/portal/usage?group=project").status_code == 400
    assert user.get("/portal/usage?since=2026-13-01").status_code == 400
    csv = user.get(f"/portal/usage.csv?since={today}&until={today}")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("day,deployment,requests") and any(line.startswith(f"{today},fake,") for line in lines)
    mine = sum(int(line.split(",")[2]) for line in lines[1:])
    admin = Browser(server.url)
    admin.sign_in(API_KEY)
    everyone = admin.get(f"/portal/usage.csv?since={today}&until={today}").text.strip().splitlines()
    assert sum(int(line.split(",")[2]) for line in everyone[1:]) > mine  # the user saw only their key's calls
    by_key = admin.get("/portal/usage?group=key")
    assert by_key.status_code == 200 and keys["user_id"] in by_key.text


def test_the_audit_trail_pages_filters_verifies_and_exports(server, keys):
    admin = Browser(server.url)
    admin.sign_in(API_KEY)
    page = admin.get("/portal/audit")
    assert page.status_code == 200 and "project.create" in page.text
    only_keys = admin.get("/portal/audit?action=key.")
    actions = re.findall(r"<td>([a-z_.]+)</td>\s*<td><span class=\"badge", only_keys.text)
    assert actions and all(a.startswith("key.") for a in actions)
    denied = admin.get("/portal/audit?outcome=denied")
    assert denied.status_code == 200
    assert admin.get("/portal/audit?outcome=maybe").status_code == 400
    assert admin.get("/portal/audit?action=%3Cscript%3E").status_code == 400
    for _ in range(3):  # at least one more page than fits on one
        httpx.post(f"{server.url}/admin/v1/projects", headers={"api-key": API_KEY}, timeout=30,
                   json={"name": f"fill-{time.time_ns()}"})
    seqs = [int(s) for s in re.findall(r'<td class="num">(\d+)</td><td>\d{4}-', admin.get("/portal/audit").text)]
    assert seqs == sorted(seqs, reverse=True)
    if len(seqs) == 50:
        older = re.search(r'href="([^"]+)" rel="next"', admin.get("/portal/audit").text).group(1)
        older_seqs = [int(s) for s in re.findall(r'<td class="num">(\d+)</td><td>\d{4}-',
                                                 admin.get(older.replace("&amp;", "&")).text)]
        assert older_seqs and max(older_seqs) < min(seqs)
    verified = admin.post("/portal/audit/verify")
    assert verified.status_code == 200 and "chain intact" in verified.text
    export = admin.get("/portal/audit.jsonl")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert all(line.startswith('{"seq":') for line in export.text.splitlines())
    padmin = Browser(server.url)
    padmin.sign_in(keys["project_admin"])
    theirs = padmin.get("/portal/audit")
    assert theirs.status_code == 200
    projects = set(re.findall(r"<td>(proj_\w+)</td>", theirs.text))
    assert projects <= {keys["project"]["id"]}
    assert padmin.get("/portal/audit.jsonl").status_code == 403
    padmin.get("/portal/audit")
    assert padmin.post("/portal/audit/verify").status_code == 403
    user = Browser(server.url)
    user.sign_in(keys["user"])
    assert user.get("/portal/audit").status_code == 403


def test_content_filters_and_blocklists_from_the_portal(server, keys):
    padmin = Browser(server.url)
    padmin.sign_in(keys["project_admin"])
    page = padmin.get("/portal/filters")
    assert page.status_code == 200 and "Policy <code>default</code>" in page.text
    assert "medium and up: block" in page.text and "<code>fake</code>" in page.text  # fake uses the default policy
    made = padmin.post("/portal/blocklists", {"name": "competitors", "description": "rivals"})
    assert made.status_code == 303
    blocklist_id = made.headers["location"].split("#")[1]
    assert padmin.post(f"/portal/blocklists/{blocklist_id}/items", {"value": "Contoso", "kind": "term"}).status_code == 303
    bad = padmin.post(f"/portal/blocklists/{blocklist_id}/items", {"value": "(unclosed", "kind": "regex"})
    assert bad.status_code == 400 and 'id="form-error"' in bad.text  # refused as by the admin API
    page = padmin.get("/portal/filters").text
    assert "<code>Contoso</code>" in page
    listed = httpx.get(f"{server.url}/admin/v1/blocklists/{blocklist_id}/items",
                       headers={"api-key": keys["project_admin"]}, timeout=30).json()["data"]
    assert [i["value"] for i in listed] == ["Contoso"]
    item_id = listed[0]["id"]
    assert padmin.post(f"/portal/blocklists/{blocklist_id}/items/{item_id}/remove").status_code == 303
    assert "<code>Contoso</code>" not in padmin.get("/portal/filters").text
    other = Browser(server.url)
    other.sign_in(keys["user"])
    assert other.get("/portal/filters").status_code == 403
    assert padmin.post(f"/portal/blocklists/{blocklist_id}/delete").status_code == 303
    assert padmin.post(f"/portal/blocklists/{blocklist_id}/delete").status_code == 404


def test_the_playground_calls_as_the_session_through_the_same_policies(server, keys, specs):
    user = Browser(server.url)
    user.sign_in(keys["user"])
    page = user.get("/portal/playground")
    assert page.status_code == 200 and "<option>fake</option>" in page.text
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    api = "/portal/api/chat/completions"
    no_token = user.http.post(api, json=body, headers={"origin": server.url})
    assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "csrf_failed"
    elsewhere = user.http.post(api, json=body, headers={"origin": "https://evil.example", "x-csrf-token": user.csrf})
    assert elsewhere.status_code == 403
    key_only = httpx.post(server.url + api, json=body, headers={"api-key": API_KEY, "origin": server.url}, timeout=30)
    assert key_only.status_code == 401  # the playground takes sessions, the API keys
    ok = user.http.post(api, json=body, headers={"origin": server.url, "x-csrf-token": user.csrf})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    specs.check("/v1/chat/completions", 200, ok.json())  # the API's answer, as the spec describes it
    streamed = user.http.post(api, json={**body, "stream": True, "stream_options": {"include_usage": True}},
                              headers={"origin": server.url, "x-csrf-token": user.csrf})
    events = specs.check_sse("/v1/chat/completions", streamed.content)
    assert events and events[-1]["usage"]["completion_tokens"] > 0
    assert ok.headers["x-ratelimit-limit-tokens"] == "1000000"  # the deployment's quota applies
    assert "default-src 'none'" in ok.headers["content-security-policy"]
    bad = user.http.post(api, json={"model": "fake", "messages": []}, headers={"origin": server.url,
                                                                               "x-csrf-token": user.csrf})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    specs.check("/v1/chat/completions", 400, bad.json())
    def served_to_the_key() -> int:
        usage = httpx.get(f"{server.url}/admin/v1/usage?group_by=key", headers={"api-key": API_KEY}, timeout=30)
        return sum(r["requests"] for r in usage.json()["data"] if r["key_id"] == keys["user_id"])

    time.sleep(1.5)  # what came before is stored (usage is written in batches every second)
    before = served_to_the_key()
    assert user.http.post(api, json=body, headers={"origin": server.url, "x-csrf-token": user.csrf}).status_code == 200
    deadline = time.monotonic() + 30
    while served_to_the_key() < before + 1:  # metered under the session's key, as an API call with it would be
        assert time.monotonic() < deadline, "the playground's call was not metered to the session's key"
        time.sleep(0.3)


def test_bad_values_are_400s_never_500s(server, keys):
    admin = Browser(server.url)
    admin.sign_in(API_KEY)
    for path in ("/portal/audit?before=%C2%B2", "/portal/audit?before=9999999999", "/portal/usage?page=%C2%B2",
                 "/portal/usage?until=0001-01-05", "/portal/usage?since=9999-12-31&until=9999-12-31",
                 "/portal/deployments/%00", "/portal/static/%00"):
        assert admin.get(path).status_code in (400, 404), path
    admin.get("/portal/filters")
    made = admin.post("/portal/blocklists", {"name": "x", "project_id": "proj_" + "0" * 30})
    assert made.status_code == 400 and "No project" in made.text
    target = Browser(server.url).post("/portal/sign-in", {"key": API_KEY, "next": "/portal%0d%0aX: y"})
    assert target.status_code == 303 and target.headers["location"] == "/portal"
    stale = Browser(server.url)
    stale.sign_in(API_KEY)  # a second sign-in from a tab left open: no CSRF token on that form, its Origin checked
    assert stale.post("/portal/sign-in", {"key": API_KEY}, csrf=False).status_code == 303
    refused = Browser(server.url).post("/portal/sign-in", {"key": "mw-wrong-key-0123456789"})
    assert refused.status_code == 401
    audit = httpx.get(f"{server.url}/admin/v1/audit?limit=1000", headers={"api-key": API_KEY}, timeout=30).json()
    assert any(e["action"] == "auth.failed" and e["detail"].get("operation") == "portal.sign_in"
               for e in audit["data"])


def test_behind_a_tls_proxy_the_public_origin_decides(tmp_path):
    config = {**CONFIG, "portal": {"public_origin": "https://ai.example.com"}}
    proc = start_modelworks(tmp_path, config, API_KEY, name="portal-tls")
    try:
        http = httpx.Client(base_url=proc.url, timeout=30)
        signed = http.post("/portal/sign-in", data={"key": API_KEY}, headers={"origin": "https://ai.example.com"})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("__Host-mw_portal=") and "Secure" in cookie and "Path=/;" in cookie
        own = http.post("/portal/sign-in", data={"key": API_KEY}, headers={"origin": proc.url})
        assert own.status_code == 403  # the proxy's origin is the portal's, not the server's own address
    finally:
        proc.stop()
