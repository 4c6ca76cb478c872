"""API key authentication for the hot path: cached in process, invalidated across processes."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, models
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import AuditEntry, audit_denial_record
from tenants.epoch import SharedEpoch
from tenants.errors import AuthenticationFailed, PermissionDenied, PlatformError, ServiceUnavailable
from tenants.quota import MICROS, QuotaRule
from tenants.request_input import credential_header

logger = logging.getLogger(__name__)

DB_RETRY_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What the hot path needs to know about an authenticated key (no ORM objects)."""

    key_id: int
    prefix: str
    tenant_id: int
    tenant_slug: str
    tenant_active: bool
    allowed_models: frozenset[str]
    expires_at: dt.datetime | None
    revoked: bool
    quotas: tuple[QuotaRule, ...] = ()
    scopes: frozenset[str] = frozenset()
    trace_content: bool = False  # the tenant lets prompt and completion text into its spans

    def allows_model(self, model_name: str) -> bool:
        return not self.allowed_models or model_name in self.allowed_models

    def require_scope(self, scope: str, *, explicit: bool = False) -> None:
        """Refuse (audited) unless the key has ``scope``; an empty list allows all but ``explicit`` scopes."""
        if (explicit or self.scopes) and scope not in self.scopes:
            granted = ", ".join(sorted(self.scopes)) or "all but audit"
            raise self.denied(
                f"This API key may not call the '{scope}' endpoints (its scopes: {granted}).",
                code="scope_not_allowed",
                target=f"scope:{scope}",
            )

    def denied(self, message: str, *, code: str, target: str, param: str | None = None) -> PermissionDenied:
        """An authorisation refusal for this key, audited off the hot path (bounded); the caller raises it."""
        audit_denial_record(
            AuditEntry(
                actor=f"key:{self.prefix}",
                action="authz.denied",
                target=target,
                tenant_id=self.tenant_id,
                outcome=AuditEvent.Outcome.DENIED,
                details={"reason": code, "message": message},
            )
        )
        return PermissionDenied(message, code=code, param=param)


@dataclass(slots=True)
class _Entry:
    context: KeyContext | None  # None: no such key (negative cache)
    fetched_at: float


class KeyCache:
    """In-process cache of key lookups, keyed by the secret's SHA-256.

    Entries are fresh for ``KEY_CACHE_TTL`` seconds. Any change to keys or tenants bumps a
    shared epoch (in the Django cache, i.e. Redis when configured); each process reads the
    epoch at most every ``KEY_REVOCATION_POLL`` seconds and drops its entries when it
    moved, so a revocation reaches every process within about that long. When the
    database cannot be reached, entries up to ``KEY_CACHE_STALE_TTL`` old keep serving
    (a valid key must not start failing) and unseen keys get 503, never 401.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.epoch = SharedEpoch("apikey")
        # After a failed lookup the database is not tried again for a moment, so an outage
        # costs one connect timeout per DB_RETRY_INTERVAL, not one per request.
        self._db_down_until = 0.0

    def clear(self) -> None:
        self._entries.clear()

    async def lookup(self, secret_hash: str) -> KeyContext | None:
        if await self.epoch.moved():
            self._entries.clear()
        now = time.monotonic()
        entry = self._entries.get(secret_hash)
        if entry is not None and now - entry.fetched_at < settings.KEY_CACHE_TTL:
            return entry.context
        if now < self._db_down_until:
            return self._stale(entry, now)
        try:
            context = await _key_fetch(secret_hash)
        except DatabaseError as exc:
            logger.warning("key lookup failed: database unavailable (%s)", exc)
            self._db_down_until = time.monotonic() + DB_RETRY_INTERVAL
            return self._stale(entry, now)
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[secret_hash] = _Entry(context, time.monotonic())
        return context

    @staticmethod
    def _stale(entry: _Entry | None, now: float) -> KeyContext:
        if entry is not None and entry.context is not None and now - entry.fetched_at < settings.KEY_CACHE_STALE_TTL:
            return entry.context
        raise ServiceUnavailable(
            "The platform cannot verify API keys right now (database unavailable); retry shortly.",
            code="auth_backend_unavailable",
        )


def quota_rules(quotas: Iterable[Any], tenant_slug: str) -> tuple[QuotaRule, ...]:
    """Hot-path rules from Quota rows (with ``api_key`` selected) of one tenant."""
    rules = []
    for quota in quotas:
        if quota.api_key_id:
            scope, label = f"key:{quota.api_key_id}", f"API key {quota.api_key.prefix}…"
        else:
            scope, label = f"tenant:{quota.tenant_id}", f"tenant {tenant_slug}"
        rules.append(
            QuotaRule(
                scope=scope,
                label=label,
                model=quota.model,
                rpm=quota.rpm_limit,
                tpm=quota.tpm_limit,
                input_tpm=quota.input_tpm_limit,
                output_tpm=quota.output_tpm_limit,
                parallel=quota.max_parallel_requests,
                budget_micros=None if quota.max_budget is None else int(quota.max_budget * MICROS),
                budget_duration=quota.budget_duration,
                tool_rpm=quota.tool_rpm_limit,
            )
        )
    return tuple(rules)


def _key_fetch_sync(secret_hash: str) -> KeyContext | None:
    from tenants.models import ApiKey, Quota

    close_old_connections()
    row = (
        ApiKey.objects.filter(secret_hash=secret_hash)
        .values(
            "id",
            "prefix",
            "tenant_id",
            "tenant__slug",
            "tenant__is_active",
            "tenant__trace_content",
            "allowed_models",
            "scopes",
            "expires_at",
            "revoked_at",
        )
        .first()
    )
    if row is None:
        return None
    return KeyContext(
        key_id=row["id"],
        prefix=row["prefix"],
        tenant_id=row["tenant_id"],
        tenant_slug=row["tenant__slug"],
        tenant_active=row["tenant__is_active"],
        allowed_models=frozenset(row["allowed_models"] or ()),
        scopes=frozenset(row["scopes"] or ()),
        expires_at=row["expires_at"],
        revoked=row["revoked_at"] is not None,
        trace_content=row["tenant__trace_content"],
        quotas=quota_rules(
            Quota.objects.filter(models.Q(tenant_id=row["tenant_id"]) | models.Q(api_key_id=row["id"]))
            .select_related("api_key")
            .order_by("id"),
            row["tenant__slug"],
        ),
    )


_key_fetch = sync_to_async(_key_fetch_sync, thread_sensitive=True)

key_cache = KeyCache()


def key_cache_invalidate() -> None:
    """Tell every process to drop cached key lookups (call after a key or tenant change commits)."""
    key_cache.clear()
    key_cache.epoch.bump()


def bearer_secret(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            code="missing_api_key",
        )
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationFailed(
            "The Authorization header must be 'Bearer <key>'.", code="invalid_authorization_header"
        )
    return secret


def key_mask(secret: str) -> str:
    return f"{secret[:8]}…{secret[-4:]}" if len(secret) > 16 else "****"


def secret_hash_of(secret: str) -> str:
    """SHA-256 of a presented secret (any text: a lone surrogate is hashed as is, not an error)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_check(context: KeyContext | None, secret: str) -> KeyContext:
    """The context of a usable key, or the error the client should see."""
    if context is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {key_mask(secret)}.")
    if context.revoked:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    if context.expires_at is not None and context.expires_at <= timezone.now():
        raise AuthenticationFailed("This API key has expired.", code="api_key_expired")
    if not context.tenant_active:
        raise PermissionDenied(
            f"Tenant '{context.tenant_slug}' is inactive; its keys are refused.", code="tenant_inactive"
        )
    return context


async def key_authenticate(secret: str, secret_hash: str) -> KeyContext:
    """Return the key's context, or raise the error the client should see."""
    return key_check(await key_cache.lookup(secret_hash), secret)


async def key_authenticate_header(authorization: str | None, *, ip: str | None, endpoint: str) -> KeyContext:
    """Authenticate an ``Authorization`` header; a refusal is audited (off the hot path, bounded) and raised.

    A refused key the platform knows (revoked, expired, of an inactive tenant) is audited
    in its tenant's chain under its own prefix, so the tenant's auditors see attempts with
    their dead keys; an unknown one in the platform chain under what was presented.
    """
    secret = ""
    context: KeyContext | None = None
    try:
        secret = bearer_secret(authorization)
        context = await key_cache.lookup(secret_hash_of(secret))
        return key_check(context, secret)
    except (AuthenticationFailed, PermissionDenied) as exc:
        if context is not None:
            actor, tenant_id = f"key:{context.prefix}", context.tenant_id
        else:
            actor, tenant_id = (f"key:{secret[:12]}" if secret else "anonymous"), None
        _refusal_record(exc, actor=actor, tenant_id=tenant_id, ip=ip, endpoint=endpoint)
        raise


async def key_authenticate_request(
    headers: Iterable[tuple[bytes, bytes]], *, ip: str | None, endpoint: str
) -> KeyContext:
    """Authenticate a request by its raw (ASGI) headers: what every front door calls.

    Exactly one ``Authorization`` header: two are refused (never resolved to the first or
    the last, which would bill whoever the sender did not mean) and audited like any refusal.
    """
    try:
        authorization = authorization_read(headers)
    except AuthenticationFailed as exc:
        _refusal_record(exc, actor="anonymous", tenant_id=None, ip=ip, endpoint=endpoint)
        raise
    return await key_authenticate_header(authorization, ip=ip, endpoint=endpoint)


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def authorization_read(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's one Authorization header (two are refused), made safe to record.

    Control characters become U+FFFD: such a credential still fails, and its failure is
    still audited, but no NUL reaches the audit row written for it.
    """
    authorization = credential_header(headers)
    if authorization and _CONTROL_CHARACTERS.search(authorization):
        authorization = _CONTROL_CHARACTERS.sub("\ufffd", authorization)
    return authorization or None


def _refusal_record(exc: PlatformError, *, actor: str, tenant_id: int | None, ip: str | None, endpoint: str) -> None:
    audit_denial_record(
        AuditEntry(
            actor=actor,
            action="auth.failure",
            target=f"api:{endpoint}",
            tenant_id=tenant_id,
            outcome=AuditEvent.Outcome.DENIED,
            ip=ip,
            details={"reason": exc.code, "message": exc.message},
        )
    )
