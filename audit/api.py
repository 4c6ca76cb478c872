"""The audit record over the API: ``GET /v1/audit/events`` for keys with the ``audit`` scope, by cursor."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import ValidationError

from audit.models import AuditEvent
from audit.selectors import EventFilters, event_rows
from audit.services import AuditEntry, audit_record_deferred

router = Router(tags=["audit"])


class AuditEventOut(Schema):
    id: int
    chain: str
    seq: int
    prev_hash: str
    hash: str
    created_at: str
    actor: str
    tenant_id: int | None
    action: str
    target: str
    outcome: str
    ip: str | None
    details: dict[str, Any]


class AuditEventPage(Schema):
    object: str = "list"
    data: list[AuditEventOut]
    has_more: bool
    next_cursor: str | None = None


def _bad(param: str, message: str) -> ValidationError:
    return ValidationError([{"loc": ("query", param), "msg": message}])


def _utc(name: str, value: dt.datetime | None) -> dt.datetime | None:
    """``value`` in UTC, or a 400 when it has no timezone or its UTC time is outside what can be stored."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise _bad(name, f"'{name}' needs a timezone, e.g. 2026-01-31T00:00:00Z.")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC, 9999-12-31T23:00-02:00 in year 10000
        raise _bad(name, f"'{name}' is outside the supported range (years 1 to 9999 in UTC).") from None


def cursor_encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> int:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _bad("cursor", "The cursor is not one this API returned; pass next_cursor unchanged.") from exc
    if not isinstance(after, int) or after < 0:
        raise _bad("cursor", "The cursor is not one this API returned; pass next_cursor unchanged.")
    return after


def _page(tenant_id: int, filters: EventFilters, after: int, limit: int) -> list[dict[str, Any]]:
    queryset = filters.apply(AuditEvent.objects.filter(tenant_id=tenant_id))
    rows = []
    for row in event_rows(queryset, chunk_size=limit + 1, after_id=after):
        rows.append(row)
        if len(rows) > limit:
            break
    return rows


@router.get("/events", response=AuditEventPage, summary="The key's tenant's audit events, oldest first, by cursor")
async def audit_events_list(
    request: HttpRequest,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: str = "",
    action: str = "",
    outcome: Literal["success", "failure", "denied"] | None = None,
    cursor: str | None = None,
    limit: int = Query(100, ge=1, le=1000),  # type: ignore[type-arg]
) -> AuditEventPage:
    key = request.auth  # type: ignore[attr-defined]
    key.require_scope("audit", explicit=True)
    since, until = _utc("since", since), _utc("until", until)
    if since and until and since >= until:
        raise _bad("since", "'since' must be before 'until'.")
    after = cursor_decode(cursor) if cursor else 0
    filters = EventFilters(since=since, until=until, actor=actor, action=action, outcome=outcome or "")
    rows = await sync_to_async(_page, thread_sensitive=True)(key.tenant_id, filters, after, limit)
    if not cursor:
        # Reading the trail is itself audited, once per listing rather than once per page.
        audit_record_deferred(
            AuditEntry(
                actor=f"key:{key.prefix}",
                action="audit.read",
                target="api:audit.events",
                tenant_id=key.tenant_id,
                ip=request.META.get("REMOTE_ADDR"),
                details={"filters": filters.describe()},
            )
        )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return AuditEventPage(
        data=[AuditEventOut(**row) for row in rows],
        has_more=has_more,
        # Always a cursor after the last row, so a client can also poll for newer events.
        next_cursor=cursor_encode(rows[-1]["id"]) if rows else cursor,
    )
