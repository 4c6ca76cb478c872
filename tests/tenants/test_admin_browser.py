"""The key lifecycle once in a real headless Chromium, as a person clicks through the admin."""

from __future__ import annotations

import shutil

import openai
import pytest
from django.contrib.auth.models import User

from tenants.models import ApiKey

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (./run test installs it as root)"),
]


@pytest.fixture
def page(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous code all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def test_a_person_creates_uses_and_revokes_a_key_in_the_browser(page, server, deployment_factory, tmp_path):
    deployment_factory()
    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")

    page.goto(f"{server.url}/admin/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "correct horse battery staple")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Tenants, keys, models and the audit trail")
    stylesheet = page.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor")
    assert stylesheet not in ("", "rgba(0, 0, 0, 0)"), "the admin's CSS did not load"

    page.goto(f"{server.url}/admin/tenants/tenant/add/")
    page.locator("#id_name").press_sequentially("Search team")  # typed, so prepopulation runs
    assert page.input_value("#id_slug") == "search-team"  # prepopulated from the name
    page.click("input[name=_save]")
    page.wait_for_selector("text=was added successfully")

    page.goto(f"{server.url}/admin/tenants/apikey/add/")
    page.fill("#id_name", "backend")
    page.click(".field-tenant .select2-selection")  # the tenant picker searches as you type
    page.fill(".select2-search__field", "search")
    page.click(".select2-results__option:has-text('search-team')")
    page.click("input[name=_save]")
    page.wait_for_selector("text=shown only this once")
    secret = page.input_value("#api-key-secret")
    # Copy says what happened: copied, or refused by the browser (the secret is then selected).
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click(".copy-secret")
    page.wait_for_function("document.querySelector('.copy-status').textContent.length > 0")
    assert page.inner_text(".copy-status") == "Copied to the clipboard."
    assert page.evaluate("navigator.clipboard.readText()") == secret
    page.evaluate("Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined})")
    page.click(".copy-secret")
    page.wait_for_function("document.querySelector('.copy-status').textContent.startsWith('Your browser')")
    assert page.evaluate("document.activeElement.id") == "api-key-secret"
    selected = page.evaluate("[document.activeElement.selectionStart, document.activeElement.selectionEnd]")
    assert selected == [0, len(secret)]
    page.screenshot(path=str(tmp_path / "key-created.png"), full_page=True)
    assert secret.startswith("sk-")

    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    hello = [{"role": "user", "content": "hi"}]
    assert api.chat.completions.create(model="gpt-4o-mini", messages=hello).choices

    page.goto(f"{server.url}/admin/tenants/tenant/")
    page.click("text=charts")
    page.wait_for_selector("svg.usage-chart")
    for _ in range(50):  # the usage writer flushes every 50 ms in the test server
        if page.inner_text("#total-requests") == "1":
            break
        page.wait_for_timeout(100)
        page.reload()
    assert page.inner_text("#total-requests") == "1"
    assert page.locator("svg.usage-chart").count() == 4
    page.screenshot(path=str(tmp_path / "usage.png"), full_page=True)

    page.goto(f"{server.url}/admin/tenants/apikey/")
    key = ApiKey.objects.get(name="backend")
    page.check(f"input[name=_selected_action][value='{key.pk}']")
    page.select_option("select[name=action]", "revoke_keys")
    page.click("button[name=index]")
    page.wait_for_selector("#revocable")  # asked first, with the keys named
    assert "backend" in page.inner_text("#revocable")
    page.screenshot(path=str(tmp_path / "revoke.png"), full_page=True)
    page.click("#confirm-revoke")
    page.wait_for_selector("text=Revoked 1 API key(s).")
    assert page.is_visible("text=Revoked")

    with pytest.raises(openai.AuthenticationError):
        api.chat.completions.create(model="gpt-4o-mini", messages=hello)


def test_a_tenant_admin_in_the_browser_sees_only_their_tenant(page, server, owner, outsider, key_factory, tmp_path):
    from tenants import services
    from tenants.models import Membership

    own, foreign = key_factory(owner, "own key"), key_factory(outsider, "foreign key")
    user = User.objects.create_user("tina", password="correct horse battery staple")
    services.membership_save(membership=Membership(user=user, tenant=owner, role="tenant_admin"), actor="test")

    page.goto(f"{server.url}/admin/")
    page.fill("#id_username", "tina")
    page.fill("#id_password", "correct horse battery staple")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Tenants, keys, models and the audit trail")
    assert not page.is_visible("text=Model deployments"), "deployments are for platform admins"

    page.goto(f"{server.url}/admin/tenants/apikey/")
    listing = page.inner_text("#result_list")
    assert own.key.prefix in listing and foreign.key.prefix not in listing

    response = page.goto(f"{server.url}/admin/tenants/apikey/{foreign.key.pk}/change/")
    assert response is not None and response.status == 403
    assert foreign.key.prefix not in page.content()
    assert page.is_visible("text=tenant you are not a member of")
    page.screenshot(path=str(tmp_path / "forbidden.png"))
