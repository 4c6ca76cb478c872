"""Operations endpoints: ``/readyz`` (is this process fit for traffic) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.breaker import CircuitBreaker, database_breaker, redis_breaker, redis_options
from core.hot_reads import db_read_wait
from observability import metrics
from routing.selectors import deployment_cache

logger = logging.getLogger(__name__)


class Lifecycle:
    """Process-wide state the server runner changes: ``draining`` turns readiness off at once."""

    draining = False


class _Readiness:
    """The checks behind ``/readyz``, cached for ``READYZ_CACHE_SECONDS`` so a probe every second is cheap.

    Each store is ``ok``, ``degraded`` (unreachable, but this process serves from its caches:
    known keys, deployments, local routing state) or ``down`` (unreachable with nothing to
    serve from). Ready while no store is down. The probes run off the event loop's shared
    thread and are bounded like any read of the hot path; while a store's breaker is open
    they are its background trials, so an idle process also sees the store come back.
    """

    def __init__(self) -> None:
        self._at = 0.0
        self._result: tuple[bool, dict[str, Any]] = (False, {})
        self._migrated = False
        self._redis: Any = None
        self._redis_loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        self._at = 0.0
        self._migrated = False

    async def check(self) -> tuple[bool, dict[str, Any]]:
        if time.monotonic() - self._at >= settings.READYZ_CACHE_SECONDS:
            self._result = await self._run()
            self._at = time.monotonic()
        return self._result

    async def _run(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, str] = {}
        stores: dict[str, dict[str, Any]] = {}
        await self._database_probe()
        stores["database"] = _store_state(database_breaker, can_serve=deployment_cache.loaded)
        checks["database"] = _summary(stores["database"])
        if database_breaker.closed:
            checks["migrations"] = await self._migrations()
        if settings.REDIS_URL:
            await self._redis_probe()
            # Without Redis a process still serves: routing on its own state, quotas per QUOTA_FAIL_MODE.
            stores["redis"] = _store_state(redis_breaker, can_serve=True)
            checks["redis"] = _summary(stores["redis"])
        ready = all(value == "ok" or value.startswith("degraded") for value in checks.values())
        return ready, {"checks": checks, "stores": stores}

    @staticmethod
    async def _database_probe() -> None:
        if not database_breaker.allow():
            return
        try:
            await db_read_wait(_select_one)
        except Exception as exc:  # the breaker has it; the summary reports it
            logger.debug("readiness: database probe failed: %s", exc)

    async def _migrations(self) -> str:
        if self._migrated:  # once applied they stay applied for this process's code
            return "ok"
        try:
            pending = await db_read_wait(_migrations_pending)
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"
        if pending:
            return f"{pending} pending"
        self._migrated = True
        return "ok"

    async def _redis_probe(self) -> None:
        if not redis_breaker.allow():
            return
        loop = asyncio.get_running_loop()
        try:
            if self._redis is None or self._redis_loop is not loop:
                import redis.asyncio as redis

                self._redis, self._redis_loop = redis.Redis.from_url(settings.REDIS_URL, **redis_options()), loop
            await self._redis.ping()
        except Exception as exc:
            redis_breaker.failure(exc)
            return
        redis_breaker.success()


def _select_one() -> None:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _migrations_pending() -> int:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def _store_state(breaker: CircuitBreaker, *, can_serve: bool) -> dict[str, Any]:
    state = breaker.describe()
    if state["state"] == "closed":
        return {"state": "ok"}
    return {**state, "state": "degraded" if can_serve else "down"}


def _summary(store: dict[str, Any]) -> str:
    if store["state"] == "ok":
        return "ok"
    if store["state"] == "degraded":
        return f"degraded since {store['since']} ({store['reason']})"
    return f"down ({store['reason']})"


readiness = _Readiness()


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 while every store is ok or degraded (served from caches) and migrations are applied."""
    if Lifecycle.draining:
        return JsonResponse({"status": "draining", "checks": {}}, status=503)
    ready, report = await readiness.check()
    degraded = any(value != "ok" for value in report["checks"].values())
    status = ("degraded" if degraded else "ok") if ready else "unavailable"
    return JsonResponse({"status": status, **report}, status=200 if ready else 503)


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
