"""`loadconfig`'s mcp_servers section: servers, encrypted credentials and grants, idempotent and all-or-nothing."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from mcp_gateway.models import ToolGrant, UpstreamServer
from tests import live
from tests.mcp_gateway.servers import UPSTREAM_TOKEN

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = """
tenants:
  - slug: agents
    api_keys:
      - name: ci
mcp_servers:
  - name: demo
    url: {url}
    transport: streamable_http
    credential: os.environ/DEMO_MCP_CREDENTIAL
    grants:
      - tenant: agents
        tools: [echo, add]
      - tenant: agents
        key: ci
        tools: [echo]
"""


def load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("loadconfig", str(path), stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_MCP_CREDENTIAL", f"Bearer {UPSTREAM_TOKEN}")


def test_mcp_servers_load_discover_tools_and_reload_without_changes(
    tmp_path: Path, mcp_upstream_http: live.Server, allow_loopback: None, credential: None
) -> None:
    load(tmp_path, CONFIG.format(url=mcp_upstream_http.url))

    server = UpstreamServer.objects.get(name="demo")
    assert server.health == UpstreamServer.Health.HEALTHY, server.last_error
    assert server.credential == f"Bearer {UPSTREAM_TOKEN}"
    assert sorted(server.tools.values_list("name", flat=True)) == ["add", "delete_everything", "echo", "fail"]
    grants = {(g.api_key.name if g.api_key else None, g.tool) for g in ToolGrant.objects.select_related("api_key")}
    assert grants == {(None, "echo"), (None, "add"), ("ci", "echo")}
    events = AuditEvent.objects.count()

    load(tmp_path, CONFIG.format(url=mcp_upstream_http.url))
    assert AuditEvent.objects.count() == events
    narrower = CONFIG.format(url=mcp_upstream_http.url).replace("tools: [echo, add]", "tools: [echo]")
    load(tmp_path, narrower)
    assert set(ToolGrant.objects.filter(api_key=None).values_list("tool", flat=True)) == {"echo"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - name: bad\n    url: http://169.254.169.254/mcp\n", "SSRF allow-list"),
        ("  - name: bad\n    url: http://127.0.0.1:1/mcp\n    transport: pigeon\n", "transport"),
        ("  - name: bad\n    url: http://127.0.0.1:1/mcp\n    transport: stdio\n", "command must be"),
        ("  - name: bad\n    url: http://127.0.0.1:1/mcp\n    grants:\n      - tenant: nobody\n", "no tenant 'nobody'"),
        ("  - name: Bad Name\n    url: http://127.0.0.1:1/mcp\n", "valid name"),
        ("  - name: bad\n    url: http://127.0.0.1:1/mcp\n    colour: red\n", "unknown field"),
    ],
)
def test_a_bad_mcp_server_entry_is_refused_and_nothing_is_applied(
    tmp_path: Path, allow_loopback: None, entry: str, message: str
) -> None:
    text = "tenants:\n  - slug: agents\nmcp_servers:\n" + entry
    with pytest.raises(CommandError, match=message):
        load(tmp_path, text)
    assert not UpstreamServer.objects.exists()
    assert not AuditEvent.objects.filter(action="tenant.create").exists()


def test_a_self_service_server_without_a_grants_list_keeps_the_grants_tenants_made(
    tmp_path: Path, mcp_upstream_http: live.Server, allow_loopback: None, credential: None
) -> None:
    load(tmp_path, CONFIG.format(url=mcp_upstream_http.url))
    assert ToolGrant.objects.count() == 3
    without_grants = CONFIG.format(url=mcp_upstream_http.url).split("    grants:")[0]
    load(tmp_path, without_grants + "    tenant_self_service: true\n")
    assert UpstreamServer.objects.get(name="demo").tenant_self_service
    assert ToolGrant.objects.count() == 3
