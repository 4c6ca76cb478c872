"""A name that exists but is not granted answers exactly like one that does not exist: names cannot be probed."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from tenants.models import Tenant
from tests.keys import Issued
from tests.mcp_gateway.inprocess import Answer, modern_call

pytestmark = pytest.mark.django_db(transaction=True)

CALL_ACTIONS = ("mcp.tool_call", "mcp.prompt_get", "mcp.resource_read")


def _shape(answer: Answer, name: str) -> tuple[int, Any]:
    """The answer with the probed name taken out: what must not differ between the two."""
    body = answer.json()
    error = body["error"]
    error["message"] = error["message"].replace(name, "<name>")
    if "uri" in error.get("data", {}):
        error["data"]["uri"] = error["data"]["uri"].replace(name, "<name>")
    return answer.status, body


async def _audits(tenant: Tenant) -> list[tuple[str, str, str, dict[str, Any]]]:
    await deferred_audit.flush()
    rows = []
    async for event in AuditEvent.objects.filter(tenant_id=tenant.pk, action__in=CALL_ACTIONS).order_by("id"):
        details = {k: v for k, v in event.details.items() if k != "duration_ms"}
        rows.append((event.action, event.target.split(":", 1)[0], event.outcome, details))
    return rows


@pytest.mark.parametrize(
    ("method", "param", "existing", "missing", "path"),
    [
        ("tools/call", "name", "theirs.drop_tables", "nowhere.drop_tables", "/mcp"),
        ("tools/call", "name", "mine.add", "mine.subtract", "/mcp"),  # a server granted in part
        ("tools/call", "name", "mine.add", "mine.subtract", "/mcp/safe"),  # outside the virtual server
        ("prompts/get", "name", "theirs.brief", "nowhere.brief", "/mcp"),
        ("prompts/get", "name", "mine.brief", "nowhere.brief", "/mcp/safe"),
        ("resources/read", "uri", "memo://theirs/notes", "memo://nowhere/notes", "/mcp"),
        ("resources/read", "uri", "memo://mine/notes", "memo://nowhere/notes", "/mcp/safe"),
    ],
)
async def test_an_existing_but_ungranted_name_answers_like_a_missing_one_and_both_are_audited(
    catalog: dict[str, Any],
    owner: Tenant,
    owner_key: Issued,
    method: str,
    param: str,
    existing: str,
    missing: str,
    path: str,
) -> None:
    answers = []
    for name in (existing, missing):
        params: dict[str, Any] = {param: name}
        if method != "resources/read":
            params["arguments"] = {}
        answers.append(_shape(await modern_call(owner_key.secret, method, params, path=path), name))

    assert answers[0] == answers[1]
    status, body = answers[0]
    assert status == 200 and body["error"]["code"] == -32602
    assert body["error"]["data"]["code"].endswith("_not_granted")
    # Both attempts are on the tenant's record, alike but for the name.
    first, second = await _audits(owner)
    assert first == second
    assert first[2] == AuditEvent.Outcome.DENIED
    assert "server" not in first[3] and "tool" not in first[3]


async def test_a_granted_tool_on_the_same_server_still_answers(catalog: dict[str, Any], owner_key: Issued) -> None:
    # Reaching the upstream is what happens once the name is granted: here it is unreachable, an upstream error.
    answer = await modern_call(owner_key.secret, "tools/call", {"name": "mine.echo", "arguments": {"text": "x"}})
    assert answer.json()["error"]["code"] == -32002
