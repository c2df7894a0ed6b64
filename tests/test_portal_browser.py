"""The portal in a real browser: Playwright driving Debian's chromium against a real server process on loopback.

Every request that would leave loopback is blocked and fails the test (the portal fetches nothing from the
internet). axe-core (4.12, bundled with axe-playwright-python) checks every screen for serious or critical
violations, in the light and the dark theme. A failing test leaves a screenshot in test-artifacts/portal/, and
the main screens are saved there on every run (README's screenshots come from them).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import API_KEY
from support.servers import start_modelworks

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "portal"
CONFIG = {
    "backends": {"fake": {"type": "fake"},
                 "slow": {"type": "fake", "chunk_delay_s": 0.08, "reply": " ".join(["word"] * 24)}},
    "deployments": {"fake": {"backend": "fake"}, "slow": {"backend": "slow"},
                    "guarded": {"backend": "fake", "content_filter": "strict"}},
    "content_filters": {"strict": {"blocklists": ["banned"]}},  # the admin's project's blocklist of that name
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SCREENS = ("/portal", "/portal/playground", "/portal/deployments", "/portal/keys", "/portal/usage", "/portal/filters",
           "/portal/audit")

playwright_api = pytest.importorskip("playwright.sync_api")


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MODELWORKS_REQUIRE_SERVICES"):
            pytest.fail("chromium is not installed (make test installs it with apt-get)")
        pytest.skip("chromium is not installed (make test installs it with apt-get)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("portal-browser"), CONFIG, API_KEY, name="portal-browser")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chromium():
    executable = _chromium()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium, request):
    """`open_page(**context_options)`: a page in a fresh browser context whose requests may not leave loopback;
    a failing test leaves a screenshot of each page it opened."""
    pages, leaks = [], []

    def guard(route):
        host = urlsplit(route.request.url).hostname or ""
        if host in LOOPBACK:
            route.continue_()
        else:
            leaks.append(route.request.url)
            route.abort()

    def make(**options):
        context = chromium.new_context(**{"viewport": {"width": 1280, "height": 800}, **options})
        context.route("**/*", guard)
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error"
                and "the server responded with a status of" not in msg.text else None)  # a 4xx page is a page
        page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and r.request.resource_type not in ("document", "fetch") else None)  # an API
        # error answered to the playground's fetch is shown on the page (the tests check it there)
        pages.append(page)
        return page

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for i, page in enumerate(pages):
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}-{i}.png"), full_page=True)
            except Exception:  # noqa: BLE001 - a page that is gone leaves no picture
                pass
        page.context.close()
    assert not leaks, f"requests tried to leave loopback: {leaks}"
    for page in pages:
        assert not page.errors, f"script errors or CSP violations on the page: {page.errors}"


def sign_in(page, url: str, key: str = API_KEY) -> None:
    page.goto(f"{url}/portal")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/portal")


def check_accessibility(page, what: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    serious = [(v["id"], v["impact"], len(v["nodes"])) for v in results.response["violations"]
               if v["impact"] in ("serious", "critical")]
    assert not serious, f"{what}: accessibility violations {serious}"


def snapshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_sign_in_create_a_deployment_and_sign_out(server, open_page):
    page = open_page()
    page.goto(f"{server.url}/portal")
    assert page.url.startswith(f"{server.url}/portal/sign-in")
    check_accessibility(page, "sign-in")
    snapshot(page, "sign-in")
    sign_in(page, server.url)
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert page.locator("#openai-base").text_content() == f"{server.url}/v1"
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["mw_portal"] and cookies[0]["httpOnly"]
    assert page.evaluate("document.cookie") == ""  # scripts see no cookie at all
    assert API_KEY not in page.content()
    check_accessibility(page, "overview")
    snapshot(page, "overview")

    page.get_by_role("link", name="Deployments").click()
    page.wait_for_url(f"{server.url}/portal/deployments")
    check_accessibility(page, "deployments")
    name = f"web-{time.time_ns()}"
    page.get_by_label("Name", exact=True).fill(name)
    page.locator("#f-backends").fill("fake")
    page.get_by_label("Tokens per minute (TPM)").fill("30000")
    assert "= 180" in page.locator("#f-rpm-derived").text_content()  # derived as the page is filled
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(re.compile(r".*/portal/deployments\?made="))
    row = page.locator("#deployments tr", has_text=name)
    assert "30,000 / 180" in row.text_content()
    snapshot(page, "deployments")
    answer = httpx.post(f"{server.url}/v1/chat/completions", headers={"api-key": API_KEY}, timeout=30,
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200  # it serves at once
    row.get_by_role("link", name=name).click()
    check_accessibility(page, "deployment")
    page.get_by_role("button", name=f"Disable {name}").click()
    assert page.get_by_role("button", name=f"Enable {name}").is_visible()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/portal/sign-in"))
    page.goto(f"{server.url}/portal/deployments")
    assert "/portal/sign-in" in page.url  # the session is gone


def test_the_keyboard_alone_signs_in_and_moves_between_screens(server, open_page):
    page = open_page()
    page.goto(f"{server.url}/portal/sign-in")
    assert page.evaluate("document.activeElement.id") == "key"  # the key field has the focus at once
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/portal")
    page.keyboard.press("Tab")  # the skip link comes first, and takes the focus to the content
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.evaluate("document.activeElement.blur()")
    for _ in range(20):  # Tab to the Deployments link, then follow it with Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "/portal/deployments":
            break
    else:
        pytest.fail("the Deployments link cannot be reached with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/portal/deployments")


def test_the_dark_theme_and_a_phone_screen(server, open_page):
    page = open_page(color_scheme="dark")
    sign_in(page, server.url)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert _luminance(background) < 0.1, background
    snapshot(page, "overview-dark")
    for path in SCREENS:  # every screen, in the dark theme (the light one is checked in the flows)
        page.goto(server.url + path)
        check_accessibility(page, f"{path} (dark)")
    phone = open_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    sign_in(phone, server.url)
    for path in SCREENS:
        phone.goto(server.url + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    snapshot(phone, "overview-phone")


def _luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_create_a_key_and_see_its_secret_once(server, open_page):
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, server.url)
    page.get_by_role("link", name="Keys and projects").click()
    page.wait_for_url(f"{server.url}/portal/keys")
    check_accessibility(page, "keys and projects")
    page.get_by_label("Name").first.fill("browser-made")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").text_content()
    assert secret.startswith("mw-")
    page.locator(".created").get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    check_accessibility(page, "key created")
    snapshot(page, "keys")
    page.reload()  # sends the form again: it acts once
    assert "This form was sent already" in page.locator("#form-error").text_content()
    assert page.locator("#new-key").count() == 0
    page.goto(f"{server.url}/portal/keys")
    assert page.locator("#new-key").count() == 0 and secret not in page.content()
    assert "browser-made" in page.locator("#keys").text_content()
    page.get_by_role("button", name="Revoke browser-made").click()
    page.wait_for_url(re.compile(r".*/portal/keys\?revoked="))
    assert "revoked" in page.locator("#keys tr", has_text="browser-made").text_content()


def test_the_usage_chart_and_table_show_the_calls_just_made(server, open_page):
    name = f"counted-{time.time_ns()}"
    admin = httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=30)
    admin.post("/admin/v1/deployments", json={"name": name, "backends": ["fake"]})
    for _ in range(3):
        assert admin.post("/v1/chat/completions", json={"model": name, "messages": [
            {"role": "user", "content": "hi"}]}).status_code == 200
    page = open_page()
    sign_in(page, server.url)
    page.get_by_role("link", name="Usage").click()
    deadline = time.monotonic() + 30
    while name not in page.locator("#usage-table").text_content():  # usage reaches the store within a second
        assert time.monotonic() < deadline, "the calls never showed in the table"
        page.reload()
    row = page.locator("#usage-table tr", has_text=name)
    assert row.locator("td").nth(2).text_content() == "3"
    assert page.locator("#chart-requests-svg rect title", has_text=name).count() == 1
    check_accessibility(page, "usage")
    snapshot(page, "usage")
    page.get_by_label("Stacked by").select_option("key")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*group=key"))
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.endswith("-by-key.csv")


def test_verify_the_audit_chain(server, open_page):
    page = open_page()
    sign_in(page, server.url)
    page.get_by_role("link", name="Audit").click()
    page.wait_for_url(f"{server.url}/portal/audit")
    check_accessibility(page, "audit")
    page.get_by_role("button", name="Verify chain").click()
    assert "chain intact" in page.locator("#verdict").text_content()
    snapshot(page, "audit")
    page.get_by_label("Action").fill("deployment.")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*action=deployment\."))
    actions = page.locator("#audit tbody tr td:nth-child(3)").all_text_contents()
    assert all(a.startswith("deployment.") for a in actions)


def test_content_filters_screen(server, open_page):
    page = open_page()
    sign_in(page, server.url)
    page.get_by_role("link", name="Content filters").click()
    page.wait_for_url(f"{server.url}/portal/filters")
    page.get_by_label("Name", exact=True).fill(f"words-{time.time_ns()}")
    page.get_by_role("button", name="Create blocklist").click()
    section = page.locator("section", has=page.get_by_role("button", name=re.compile("Delete the blocklist words-")))
    section.get_by_role("textbox").fill("Fabrikam")
    section.get_by_role("button", name="Add").click()
    assert page.locator("ul.items code", has_text="Fabrikam").count() == 1
    check_accessibility(page, "content filters")
    snapshot(page, "filters")


def test_the_playground_streams_an_answer_token_by_token(server, open_page):
    page = open_page()
    sign_in(page, server.url)
    page.get_by_role("link", name="Playground").click()
    page.wait_for_url(f"{server.url}/portal/playground")
    check_accessibility(page, "playground")
    page.get_by_label("Deployment").select_option("slow")
    page.get_by_label("Message", exact=True).fill("Say **something**")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("#pg-messages li.assistant .content")
    seen = set()
    deadline = time.monotonic() + 30
    while not page.locator("#pg-messages li.assistant .stats span").count():
        seen.add(answer.get_attribute("data-chunks"))
        assert time.monotonic() < deadline, "the answer never finished"
        time.sleep(0.02)
    assert len(seen - {None}) >= 5, f"tokens did not arrive one by one: {sorted(seen - {None})}"
    stats = page.locator("#pg-messages li.assistant .stats").text_content()
    assert "first token" in stats and "tokens/s" in stats and "finish: stop" in stats and "tokens in" in stats
    assert answer.text_content().strip().startswith("word word")
    assert page.locator("#pg-messages li.user strong", has_text="something").count() == 1  # Markdown, rendered
    snapshot(page, "playground")
    page.get_by_role("button", name="View code").click()
    assert "chat.completions.create" in page.locator("#pg-code-python").text_content()
    assert '"model": "slow"' in page.locator("#pg-code-curl").text_content()
    page.get_by_role("button", name="Close").click()
    # Stop: an answer cut short says so
    page.get_by_label("Message", exact=True).fill("Again, slowly")
    page.get_by_role("button", name="Send").click()
    second = page.locator("#pg-messages li.assistant").nth(1)
    deadline = time.monotonic() + 30
    while int(second.locator(".content").get_attribute("data-chunks") or 0) < 2:  # (the CSP forbids eval:
        assert time.monotonic() < deadline  # Playwright's wait_for_function cannot run here)
        time.sleep(0.02)
    page.get_by_role("button", name="Stop").click()
    second.locator(".stats span").first.wait_for()
    assert "finish: stopped" in second.locator(".stats").text_content()


def test_a_prompt_blocked_by_a_filter_shows_its_annotation(server, open_page):
    admin = httpx.Client(base_url=server.url, headers={"api-key": API_KEY}, timeout=30)
    lists = admin.get("/admin/v1/blocklists").json()["data"]
    if not any(b["name"] == "banned" for b in lists):
        made = admin.post("/admin/v1/blocklists", json={"name": "banned"}).json()
        admin.post(f"/admin/v1/blocklists/{made['id']}/items", json={"items": [{"kind": "term", "value": "Fabrikam"}]})
    page = open_page()
    sign_in(page, server.url)
    page.goto(f"{server.url}/portal/playground")
    page.get_by_label("Deployment").select_option("guarded")
    page.get_by_label("Message", exact=True).fill("Tell me about Fabrikam")
    page.get_by_role("button", name="Send").click()
    error = page.locator("#pg-messages li.assistant.error")
    error.locator(".annotations .badge").first.wait_for()
    assert "content management policy" in error.text_content()
    assert error.locator(".badge.bad[data-category='custom_blocklists']").count() == 1
    assert "finish: content_filter" in error.locator(".stats").text_content()
    snapshot(page, "playground-filtered")
