"""A tools/call that fails on the platform's side (the quota store away, fail closed) is audited with that error."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from core.errors import ServiceUnavailable
from mcp_gateway import methods
from tenants.models import Tenant
from tests.keys import Issued
from tests.mcp_gateway.inprocess import modern_call

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_call_refused_by_an_unreachable_quota_store_is_audited_with_the_reason(
    catalog: dict[str, Any],
    owner: Tenant,
    owner_key: Issued,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def store_away(rules: Any) -> None:
        raise ServiceUnavailable("The quota store is unreachable.")

    monkeypatch.setattr(methods, "tool_call_quota_reserve", store_away)
    answer = await modern_call(owner_key.secret, "tools/call", {"name": "mine.echo", "arguments": {"text": "x"}})

    assert answer.json()["error"]["data"] == {"type": "service_unavailable", "code": "service_unavailable"}
    await deferred_audit.flush()
    event = await AuditEvent.objects.aget(action="mcp.tool_call", tenant_id=owner.pk)
    assert event.outcome == AuditEvent.Outcome.FAILURE
    assert event.details["error"] == "service_unavailable" and event.details["server"] == "mine"
