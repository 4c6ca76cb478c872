"""Operations endpoints: ``/readyz`` (is this process fit for traffic) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse

from observability import metrics

logger = logging.getLogger(__name__)


class Lifecycle:
    """Process-wide state the server runner changes: ``draining`` turns readiness off at once."""

    draining = False


class _Readiness:
    """The checks behind ``/readyz``, cached for ``READYZ_CACHE_SECONDS`` so a probe every second is cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._result: tuple[bool, dict[str, str]] = (False, {})
        self._migrated = False

    def reset(self) -> None:
        with self._lock:
            self._at = 0.0
            self._migrated = False

    def check(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= settings.READYZ_CACHE_SECONDS:
                self._result = self._run()
                self._at = time.monotonic()
            return self._result

    def _run(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        checks["database"] = self._database()
        if checks["database"] == "ok":
            checks["migrations"] = self._migrations()
        if settings.REDIS_URL:
            checks["redis"] = self._redis()
        return all(value == "ok" for value in checks.values()), checks

    @staticmethod
    def _database() -> str:
        connection = connections[DEFAULT_DB_ALIAS]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as exc:
            # Drop the broken connection so the next probe reconnects instead of reusing it.
            connection.close()
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    def _migrations(self) -> str:
        if self._migrated:  # once applied they stay applied for this process's code
            return "ok"
        try:
            executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except Exception as exc:
            connections[DEFAULT_DB_ALIAS].close()
            return f"unknown: {type(exc).__name__}"
        if pending:
            return f"{len(pending)} pending"
        self._migrated = True
        return "ok"

    @staticmethod
    def _redis() -> str:
        from django.core.cache import cache

        try:
            client: Any = cache._cache.get_client(write=False)  # type: ignore[attr-defined]
            client.ping()
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"


readiness = _Readiness()


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database answers, migrations are applied and Redis (if configured) answers."""
    if Lifecycle.draining:
        return JsonResponse({"status": "draining", "checks": {}}, status=503)
    ready, checks = readiness.check()
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


def _metrics_error(message: str, status: int, code: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}, status=status
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; needs ``Authorization: Bearer <METRICS_TOKEN>`` unless ``METRICS_PUBLIC``."""
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, secret = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(secret.strip().encode(), token.encode()):
            response = _metrics_error("Scraping /metrics needs the bearer token METRICS_TOKEN.", 401, "invalid_token")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not settings.METRICS_PUBLIC:
        return _metrics_error(
            "/metrics is off: set METRICS_TOKEN (scrapers send it as a bearer token), METRICS_PUBLIC=true, "
            "or METRICS_PORT for a separate port.",
            403,
            "metrics_disabled",
        )
    return HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
