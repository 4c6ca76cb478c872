"""Admin login throttling: lockout by username and address, a backoff that grows, shared by processes, audited."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import httpx
import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEvent
from llm_platform.login_throttle import cooloff_after
from tests import live

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(transactional_db) -> User:
    return User.objects.create_superuser("alice", "alice@example.com", PASSWORD)


def attempt(client: Client, password: str, username: str = "alice"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_forty_wrong_passwords_then_the_right_one_is_refused_with_a_lockout_page(alice):
    client = Client()
    answers = [attempt(client, f"guess-{n}").status_code for n in range(40)]
    assert answers[:4] == [200] * 4  # the login form again, with its error
    assert set(answers[5:]) == {429}
    right = attempt(client, PASSWORD)
    assert right.status_code == 429 and not logged_in(client)
    page = right.content.decode()
    assert "Too many failed logins" in page and "15 minutes" in page and 'id="header"' in page
    assert int(right["Retry-After"]) > 800


def test_a_lockout_holds_one_username_from_one_address_only(alice):
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for n in range(5):
        attempt(attacker, f"guess-{n}")
    assert attempt(attacker, PASSWORD).status_code == 429
    admin = Client(REMOTE_ADDR="198.51.100.4")
    assert attempt(admin, PASSWORD).status_code == 302 and logged_in(admin)
    # The attacker's address may still try (and fail at) other usernames: the lock is per pair.
    assert attempt(attacker, "nope", username="bob").status_code == 200


def test_failures_lockouts_and_logins_are_audited_with_username_and_address_never_the_password(alice):
    attacker, admin = Client(REMOTE_ADDR="203.0.113.9"), Client(REMOTE_ADDR="198.51.100.4")
    for n in range(7):
        attempt(attacker, f"secret-guess-{n}")
    attempt(admin, PASSWORD)
    failures = AuditEvent.objects.filter(action="login.failure").order_by("id")
    assert failures.count() == 7
    assert {(e.chain, e.ip, e.target, e.details["username"]) for e in failures} == {
        ("platform", "203.0.113.9", "user:alice", "alice")
    }
    assert [e.details["reason"] for e in failures] == ["invalid_credentials"] * 5 + ["locked_out"] * 2
    lockout = AuditEvent.objects.get(action="login.lockout")
    assert (lockout.ip, lockout.outcome, lockout.details["failures"]) == ("203.0.113.9", "denied", 5)
    assert lockout.details["cooloff_seconds"] == 900
    success = AuditEvent.objects.get(action="login.success")
    assert (success.actor, success.ip, success.chain) == ("user:alice", "198.51.100.4", "platform")
    everything = " ".join(str(event.details) for event in AuditEvent.objects.all())
    assert "secret-guess" not in everything and PASSWORD not in everything


def expire_lockout(username: str = "alice") -> None:
    """What the cool-off's passing does: the last failure is older than any cool-off."""
    AccessAttempt.objects.filter(username=username).update(
        attempt_time=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # long past
    )


def lockout_seconds(client: Client) -> int:
    for n in range(5):
        attempt(client, f"guess-{n}")
    response = attempt(client, PASSWORD)
    assert response.status_code == 429
    return AuditEvent.objects.filter(action="login.lockout").order_by("-id")[0].details["cooloff_seconds"]


def test_each_repeated_lockout_doubles_the_cool_off_and_a_lockout_ends_after_it(alice):
    client = Client(REMOTE_ADDR="203.0.113.9")
    assert lockout_seconds(client) == 900
    expire_lockout()
    assert attempt(client, "still wrong").status_code == 200  # counting starts again after the cool-off
    assert lockout_seconds(client) == 1800
    expire_lockout()
    assert lockout_seconds(client) == 3600
    expire_lockout()
    assert attempt(client, PASSWORD).status_code == 302 and logged_in(client)
    assert not AccessAttempt.objects.exists()  # a good login clears the count


def test_a_longer_lockout_is_not_ended_by_someone_elses_shorter_one(alice):
    """Axes cleans up attempts by the current request's cool-off; with per-client cool-offs that must not
    delete a longer lockout that is still running."""
    repeat = Client(REMOTE_ADDR="203.0.113.9")
    lockout_seconds(repeat)
    expire_lockout()
    assert lockout_seconds(repeat) == 1800
    # 20 minutes later (past the 15-minute base, within the 30-minute lockout), someone else fails once.
    AccessAttempt.objects.filter(ip_address="203.0.113.9").update(
        attempt_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    )
    attempt(Client(REMOTE_ADDR="192.0.2.1"), "wrong", username="bob")
    assert attempt(repeat, PASSWORD).status_code == 429


def test_the_backoff_resets_after_a_quiet_day_and_stops_at_the_cap(settings):
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    minutes = dt.timedelta(minutes=1)
    assert cooloff_after([base]) == 15 * minutes
    assert cooloff_after([base, base + 20 * minutes]) == 30 * minutes
    assert cooloff_after([base, base + 20 * minutes, base + dt.timedelta(days=3)]) == 15 * minutes
    streak = [base + dt.timedelta(days=day) for day in range(12)]
    assert cooloff_after(streak) == dt.timedelta(days=1)
    settings.ADMIN_LOGIN_COOLOFF_MAX = 3600
    assert cooloff_after(streak) == dt.timedelta(hours=1)


def test_the_test_clients_login_and_force_login_still_work(alice):
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    assert client.get("/admin/").status_code == 200
    assert not client.login(username="alice", password="wrong")
    other = Client()
    other.force_login(alice)
    assert other.get("/admin/").status_code == 200
    # No HTTP login happened: nothing to count and nothing to audit.
    assert not AccessFailureLog.objects.exists() and not AuditEvent.objects.filter(action__startswith="login.").exists()


class Browser:
    """One person's cookies against one server, posting the admin's login form as a browser does."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)

    def login(self, password: str) -> httpx.Response:
        form = self.http.get(LOGIN)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text[:500]
        return self.http.post(
            LOGIN,
            data={"username": "alice", "password": password, "csrfmiddlewaretoken": token.group(1), "next": "/admin/"},
        )


@pytest.fixture
def two_servers(alice, tmp_path) -> Iterator[tuple[live.Server, live.Server]]:
    with live.daphne_server(tmp_path) as first, live.daphne_server(tmp_path) as second:
        yield first, second


def test_two_server_processes_share_the_failure_count(two_servers):
    first, second = (Browser(server.url) for server in two_servers)
    answers = []
    for n in range(5):
        answers.append((first if n % 2 == 0 else second).login(f"guess-{n}").status_code)
    assert answers == [200, 200, 200, 200, 429]  # the fifth failure locks, whichever process counts it
    for browser in (first, second):
        refused = browser.login(PASSWORD)
        assert refused.status_code == 429 and "Too many failed logins" in refused.text
    assert AuditEvent.objects.filter(action="login.lockout", ip="127.0.0.1").count() == 1
