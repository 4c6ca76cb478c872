"""Production behind a TLS proxy: `check --deploy` is clean for the recommended environment, pages redirect
to HTTPS (probes do not), HSTS is sent and the session and CSRF cookies are Secure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User

from tests import live

# The production environment docs/security.md recommends, with its placeholders filled in.
RECOMMENDED = {
    "DATABASE_URL": "postgres://gateway:change-me@db.internal:5432/gateway",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "SECRET_KEY": "k" * 10 + "0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP",
    "FERNET_KEYS": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "gateway.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://gateway.example.com",
    "BEHIND_TLS_PROXY": "true",
    "HSTS_PRELOAD": "false",
}


def check_deploy(tmp_path: Path, **settings: str | None) -> subprocess.CompletedProcess[str]:
    """``manage.py check --deploy`` in the recommended environment, with ``settings`` changed (None: unset)."""
    env = {"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path / "var"), **RECOMMENDED, **settings}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=live.ROOT,
        env={name: value for name, value in env.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_for_the_recommended_production_environment(tmp_path):
    result = check_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_a_stated_preload_decision_check_deploy_reminds_of_it(tmp_path):
    result = check_deploy(tmp_path, HSTS_PRELOAD=None)
    assert result.returncode != 0 and "security.W021" in result.stdout + result.stderr


@pytest.fixture
def tls_server(transactional_db, tmp_path):
    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")
    with live.daphne_server(tmp_path, BEHIND_TLS_PROXY="true") as server:
        yield server


def test_behind_a_tls_proxy_pages_go_https_with_hsts_and_secure_cookies_and_probes_stay_plain(tls_server):
    plain = {"X-Forwarded-Proto": "http"}
    secure = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=tls_server.url, timeout=30) as http:
        redirect = http.get("/admin/login/", headers=plain)
        assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://")
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert http.get(probe, headers=plain).status_code != 301, probe
        page = http.get("/admin/login/", headers=secure)
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        cookie = re.search(r"csrftoken=([^;]+);.*Secure", page.headers["set-cookie"])
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert cookie and token
        # The client's jar keeps a Secure cookie off this plain loopback hop; the proxy's client sent it over TLS.
        login = http.post(
            "/admin/login/",
            headers={
                **secure,
                "Origin": tls_server.url.replace("http://", "https://"),
                "Cookie": f"csrftoken={cookie.group(1)}",
            },
            data={
                "username": "alice",
                "password": "correct horse battery staple",
                "csrfmiddlewaretoken": token.group(1),
                "next": "/admin/",
            },
        )
        assert login.status_code == 302, login.text[:500]
        session = [c for c in login.headers.get_list("set-cookie") if c.startswith("sessionid=")]
        assert session and "Secure" in session[0] and "HttpOnly" in session[0]
