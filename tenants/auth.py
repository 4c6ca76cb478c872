"""API key authentication for the hot path: cached in process, invalidated across processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, models
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import AuditEntry, audit_denial_record
from core import registry
from core.breaker import database_breaker
from core.epoch import SharedEpoch
from core.errors import AuthenticationFailed, PermissionDenied, PlatformError, ServiceUnavailable
from core.hot_reads import db_read
from tenants.quota import MICROS, QuotaRule
from tenants.request_input import credential_header

logger = logging.getLogger(__name__)


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

    Entries are fresh for ``KEY_CACHE_TTL`` seconds; after that a known key is served as it
    is while one reload runs in the background (``KEY_CACHE_TTL=0``: every lookup reads
    through). A change to keys, quotas or tenants is published on the shared ``apikey``
    epoch with what it touched (secret hashes, a tenant), and every process drops just those
    entries within ``KEY_REVOCATION_POLL`` seconds. Database reads run on the hot-path read
    threads, one per key at a time. A request waits at most ``DB_READ_WAIT`` for a key this
    process cannot serve; when the database does not answer, entries up to
    ``KEY_CACHE_STALE_TTL`` old keep serving (a valid key must not start failing) and unseen
    keys get 503, never 401.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Task[KeyContext | None]] = {}
        self._generation = 0  # moves with every change, so a load that raced one is not kept
        self.epoch = SharedEpoch("apikey")

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    def forget(self, tokens: Iterable[str]) -> None:
        """Drop the entries a change names: ``h:<secret hash>``, ``t:<tenant id>``; ``*`` (or anything else) all."""
        self._generation += 1
        tenants = set()
        for token in tokens:
            kind, _, value = token.partition(":")
            if kind == "h":
                self._entries.pop(value, None)
            elif kind == "t" and value.isdigit():
                tenants.add(int(value))
            else:
                self._entries.clear()
                return
        if tenants:
            for secret_hash, entry in list(self._entries.items()):
                if entry.context is not None and entry.context.tenant_id in tenants:
                    self._entries.pop(secret_hash, None)

    async def lookup(self, secret_hash: str) -> KeyContext | None:
        changes = await self.epoch.changes()
        if changes:
            self.forget(changes)
        now = time.monotonic()
        entry = self._entries.get(secret_hash)
        ttl = settings.KEY_CACHE_TTL
        if entry is not None:
            age = now - entry.fetched_at
            if age < ttl:
                return entry.context
            if entry.context is not None and ttl > 0 and age < settings.KEY_CACHE_STALE_TTL:
                # A change reaches this cache through the epoch, not the TTL: serve, and reload behind.
                self._loader(secret_hash, start=database_breaker.allow)
                return entry.context
        task = self._loader(secret_hash, start=database_breaker.allow)
        if task is None:  # the database is known to be away: no waiting
            return self._stale(entry, now)
        try:
            return await asyncio.wait_for(asyncio.shield(task), settings.DB_READ_WAIT)
        except TimeoutError:
            database_breaker.failure(f"no answer within {settings.DB_READ_WAIT:g} s")
        except DatabaseError as exc:
            logger.warning("key lookup failed: database unavailable (%s)", exc)
        return self._stale(entry, now)

    def _loader(self, secret_hash: str, *, start: Callable[[], bool]) -> asyncio.Task[KeyContext | None] | None:
        """The load of this key in flight, or a new one if ``start()`` allows; None otherwise."""
        task = self._loading.get(secret_hash)
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return task
        if not start():
            return None
        task = self._loading[secret_hash] = asyncio.ensure_future(self._load(secret_hash))
        task.add_done_callback(_retrieve)
        return task

    async def _load(self, secret_hash: str) -> KeyContext | None:
        generation = self._generation
        try:
            context = await _key_fetch(secret_hash)
        finally:
            if self._loading.get(secret_hash) is asyncio.current_task():
                del self._loading[secret_hash]
        if generation == self._generation:
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


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed background reload is logged where it is awaited, or not at all


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


async def _key_fetch(secret_hash: str) -> KeyContext | None:
    return await asyncio.wrap_future(db_read(_key_fetch_sync, secret_hash))


key_cache = KeyCache()
registry.register("tenants.key_cache", reset=key_cache.clear)


def key_cache_invalidate(*, secret_hashes: Iterable[str] = (), tenant_ids: Iterable[int] = ()) -> None:
    """Tell every process to drop the cached lookups a committed change touched (neither given: all of them).

    ``secret_hashes``: the keys changed (created, edited, revoked, rotated, deleted, or given a
    quota); ``tenant_ids``: tenants whose every key changed (the tenant itself, its quotas).
    """
    tokens = [f"h:{value}" for value in secret_hashes] + [f"t:{value}" for value in tenant_ids]
    key_cache.epoch.bump(*tokens)


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
