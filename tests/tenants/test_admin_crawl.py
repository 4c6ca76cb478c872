"""Every admin URL, as every kind of user, with hostile object ids: the answer is always a page, never a 500."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client, RequestFactory

from tenants import services
from tenants.models import Membership

# Not numbers, not integers, NUL, negative, beyond 64 bits, empty.
HOSTILE_IDS = ["abc", "1.5", "%00", "-1", "99999999999999999999", ""]
# Besides search, page and ordering, a changelist takes its list filters' parameters from the URL.
LIST_PARAMETERS = ("q", "p", "o")
PARAMETER = re.compile(r"<(?:[^>:]+:)?[^>]+>")
# Routes that change the session rather than show a page.
SKIPPED_ROUTES = {"logout/"}
ROLES = ["superuser", "tenant_admin", "developer", "auditor"]


def filter_parameters(model_admin: admin.ModelAdmin) -> list[str]:
    """The query parameters of a changelist's list filters: a field's name and its exact lookup, or a filter's own."""
    names = []
    for entry in model_admin.list_filter:
        if isinstance(entry, str | tuple | list):
            field = entry if isinstance(entry, str) else entry[0]
            names += [field, f"{field}__exact", f"{field}__id__exact", f"{field}__isnull"]
        else:
            names.append(entry.parameter_name)
    return names


def routes() -> Iterator[tuple[str, str, list[str]]]:
    """(label, route, parameters) of every admin URL: each ModelAdmin's (custom ones too), then the site's."""
    for model, model_admin in admin.site._registry.items():
        prefix = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for pattern in model_admin.get_urls():
            label = f"{model._meta.label}:{pattern.name}"
            yield label, prefix + str(pattern.pattern), filter_parameters(model_admin)
    for pattern in admin.site.get_urls():
        route = str(pattern.pattern)
        if hasattr(pattern, "url_patterns") or route.startswith("^") or route in SKIPPED_ROUTES:
            continue
        yield f"site:{pattern.name}", "/admin/" + route, []


def urls() -> Iterator[tuple[str, str]]:
    seen = set()
    for label, route, parameters in routes():
        if PARAMETER.search(route):
            candidates = [PARAMETER.sub(bad, route) + f"?days={bad}" for bad in HOSTILE_IDS]
            candidates += [PARAMETER.sub(bad, route) for bad in HOSTILE_IDS]
        elif label.endswith("_export"):
            candidates = [f"{route}?format=csv&tenant={bad}&since={bad}" for bad in HOSTILE_IDS]
        elif label.endswith("_changelist"):
            # Search, page, ordering and the list filters' parameters are in the URL too.
            names = (*LIST_PARAMETERS, *parameters)
            candidates = [route, *(f"{route}?{name}={bad}" for name in names for bad in HOSTILE_IDS)]
        else:
            candidates = [route]
        for url in candidates:
            if url not in seen:
                seen.add(url)
                yield label, url


@pytest.fixture
def clients(owner, outsider, key_factory) -> dict[str, Client]:
    key_factory(owner, "a key")
    users = {"superuser": User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")}
    for role in ROLES[1:]:
        users[role] = User.objects.create_user(role, password="pw-for-tests-only")
        services.membership_save(membership=Membership(user=users[role], tenant=owner, role=role), actor="test")
    clients = {}
    for role, user in users.items():
        clients[role] = Client(raise_request_exception=False)
        clients[role].force_login(user)
    return clients


def is_a_page(response) -> bool:
    if response.status_code >= 500:
        return False
    if response.status_code in (301, 302, 303, 307, 308, 304):
        return True
    return response["Content-Type"].split(";")[0] in (
        "text/html",
        "text/javascript",  # the admin's translation catalogue
        "application/json",  # autocomplete
        "application/zip",  # exports
    )


def action_posts(superuser: User) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Each changelist's actions, run on a hostile selection (the ids come from the form, so from anyone)."""
    request = RequestFactory().get("/admin/")
    request.user = superuser
    for model, model_admin in admin.site._registry.items():
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for name in model_admin.get_actions(request):
            for bad in HOSTILE_IDS:
                yield f"{model._meta.label}:{name}", url, {"action": name, "_selected_action": bad}


@pytest.mark.parametrize("role", ROLES)
def test_every_admin_url_with_hostile_ids_answers_with_a_page(clients, role):
    client = clients[role]
    failures = []
    crawled = 0
    # A changelist the role may not view refuses before it reads a parameter (the admin checks
    # the permission first): once its bare URL is refused, its parameter variants are skipped.
    refused: set[str] = set()
    for label, url in urls():
        if label in refused:
            continue
        methods = ["get", "post"] if url.endswith(("/change/", "/delete/", "/collect/", "/password/")) else ["get"]
        for method in methods:
            response = getattr(client, method)(url)
            crawled += 1
            if not is_a_page(response):
                failures.append(f"{method.upper()} {url} ({label}) -> {response.status_code}")
            elif label.endswith("_changelist") and response.status_code == 403:
                refused.add(label)
    for label, url, data in action_posts(User.objects.get(username="root")):
        response = client.post(url, data)
        crawled += 1
        if not is_a_page(response):
            failures.append(f"POST {url} {data} ({label}) -> {response.status_code}")
    assert crawled > (300 if role == "superuser" else 100)
    assert not failures, "\n".join(failures)


def test_a_value_no_field_can_hold_is_answered_with_a_readable_400_page(clients, owner):
    client = clients["tenant_admin"]
    too_large = client.get("/admin/tenants/apikey/", {"tenant": "9" * 30})
    assert too_large.status_code == 400 and "is too large for any id or field here" in too_large.content.decode()
    nul = client.get("/admin/tenants/apikey/", {"q": "\x00"})
    assert nul.status_code == 400 and "NUL character" in nul.content.decode()
    selection = client.post("/admin/tenants/apikey/", {"action": "revoke_keys", "_selected_action": "abc"})
    assert selection.status_code == 400 and "is not the id of any API key" in selection.content.decode()
    assert client.get(f"/admin/tenants/tenant/{owner.pk}/change/").status_code == 200
