"""``/healthz`` and ``/readyz``: readiness follows the database, Redis and migrations; drain turns it off."""

from __future__ import annotations

import time

import httpx
import pytest
from django.conf import settings
from django.db import connection

from llm_platform.ops import Lifecycle, readiness
from tests import live
from tests.live import served


@pytest.fixture(autouse=True)
def fresh_readiness():
    readiness.reset()
    yield
    readiness.reset()
    Lifecycle.draining = False


@pytest.mark.django_db
def test_readyz_reports_each_check_and_healthz_stays_trivial(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["migrations"] == "ok"
    assert ("redis" in checks) == bool(settings.REDIS_URL)
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_false_while_draining(client):
    Lifecycle.draining = True
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "draining"


@pytest.mark.django_db
def test_readyz_is_false_while_migrations_are_pending(client, monkeypatch):
    from django.db.migrations.executor import MigrationExecutor

    monkeypatch.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [("routing", "0099_future")])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "1 pending"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (DATABASE_URL) to cut its connection")
def test_readyz_goes_false_when_the_database_becomes_unreachable(session_tmp, transactional_db):
    db = connection.settings_dict
    proxy = live.TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    url = live.test_database_url().replace(f":{db.get('PORT') or 5432}/", f":{proxy.port}/")
    with served(session_tmp, DATABASE_URL=url, READYZ_CACHE_SECONDS="0", DB_CONNECT_TIMEOUT="1") as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        proxy.cut()
        started = time.monotonic()
        response = httpx.get(f"{server.url}/readyz", timeout=10)
        assert response.status_code == 503, (url, response.text)
        # Nothing was ever loaded here, so there is nothing to serve from: down, not degraded.
        assert response.json()["checks"]["database"].startswith("down")
        assert response.json()["stores"]["database"]["state"] == "down"
        assert time.monotonic() - started < 5, "a probe must answer quickly even when the database is gone"
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200, (
            "liveness does not follow the database"
        )
