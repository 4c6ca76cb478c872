"""Local (stdio) upstreams: only operator-named commands, a minimal environment, limits, federation."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from mcp_gateway import services
from mcp_gateway.models import UpstreamServer
from mcp_gateway.upstream import LAUNCHER
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import STDIO_COMMANDS
from tests.mcp_gateway.streaming import rpc

pytestmark = pytest.mark.django_db(transaction=True)

STDIO_TOKEN = "stdio-secret-456"


@pytest.fixture
def stdio_commands(settings: Any) -> None:
    settings.MCP_STDIO_COMMANDS = {name: tuple(argv) for name, argv in STDIO_COMMANDS.items()}
    settings.MCP_STDIO_MEMORY_MB = 768


@pytest.fixture
def local(stdio_commands: None) -> UpstreamServer:
    server = services.server_save(
        server=UpstreamServer(
            name="local",
            transport=UpstreamServer.Transport.STDIO,
            command="local",
            credential_header="UPSTREAM_TOKEN",
            credential=STDIO_TOKEN,
        ),
        actor="test",
    )
    return services.server_refresh(server=server, actor="test")


def call(gateway: live.Server, key: Issued, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    response = rpc(f"{gateway.url}/mcp", key.secret, "tools/call", {"name": tool, "arguments": arguments or {}})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]


def test_a_stdio_upstream_is_discovered_and_called_through_the_gateway_without_the_gateways_secrets(
    gateway: live.Server, local: UpstreamServer, grant: Callable[..., Any], owner: Tenant, owner_key: Issued
) -> None:
    assert local.health == UpstreamServer.Health.HEALTHY, local.last_error
    assert {tool.name for tool in local.tools.all()} == {"echo", "environment", "limits"}
    grant(owner, local)

    assert call(gateway, owner_key, "local.echo", {"text": "over stdio"}) == {"result": "over stdio"}

    seen = call(gateway, owner_key, "local.environment")
    # The gateway's own configuration never reaches the tool process.
    for secret in ("SECRET_KEY", "DATABASE_URL", "FERNET_KEYS", "REDIS_URL", "MCP_STDIO_COMMANDS"):
        assert secret not in seen["names"]
    assert seen["token"] == STDIO_TOKEN  # the stored credential, in the variable the admin named
    home = Path(seen["home"])
    assert home.name == "local" and home.parent.name == "mcp-stdio"
    assert seen["cwd"] == str(home)
    assert home.stat().st_mode & 0o077 == 0


def test_a_stdio_upstream_runs_under_the_launchers_limits(
    gateway: live.Server, local: UpstreamServer, grant: Callable[..., Any], owner: Tenant, owner_key: Issued
) -> None:
    grant(owner, local, "limits")
    limits = call(gateway, owner_key, "local.limits")
    assert limits["core"] == [0, 0]
    assert limits["address_space"] == [768 * 1024 * 1024] * 2  # MCP_STDIO_MEMORY_MB of the gateway_env
    assert limits["open_files"] == [256, 256]
    assert limits["umask"] == 0o077


def test_only_the_operators_commands_can_be_chosen(stdio_commands: None) -> None:
    def save(**fields: Any) -> None:
        services.server_save(server=UpstreamServer(name="x", **fields), actor="test")

    with pytest.raises(ValidationError) as unknown:
        save(transport="stdio", command="rm-rf")
    assert "MCP_STDIO_COMMANDS: local" in str(unknown.value.message_dict["command"])
    with pytest.raises(ValidationError) as with_url:
        save(transport="stdio", command="local", url="http://127.0.0.1:1/mcp")
    assert "url" in with_url.value.message_dict
    with pytest.raises(ValidationError) as bad_variable:
        save(transport="stdio", command="local", credential="x", credential_header="Authorization")
    assert "credential_header" in bad_variable.value.message_dict
    with pytest.raises(ValidationError) as no_url:
        save(transport="streamable_http")
    assert "url" in no_url.value.message_dict
    with pytest.raises(ValidationError) as http_command:
        save(transport="streamable_http", url="https://tools.example.com/mcp", command="local")
    assert "command" in http_command.value.message_dict
    assert not UpstreamServer.objects.exists()


def test_loadconfig_registers_a_stdio_server_and_refuses_a_url_on_one(stdio_commands: None, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mcp_servers:\n  - name: local\n    transport: stdio\n    command: local\n")
    call_command("loadconfig", str(path), stdout=StringIO(), stderr=StringIO())
    server = UpstreamServer.objects.get(name="local")
    assert (server.transport, server.command, server.url) == ("stdio", "local", "")
    assert {tool.name for tool in server.tools.all()} == {"echo", "environment", "limits"}

    path.write_text("mcp_servers:\n  - name: other\n    transport: stdio\n    command: nope\n")
    with pytest.raises(CommandError, match="MCP_STDIO_COMMANDS"):
        call_command("loadconfig", str(path), stdout=StringIO(), stderr=StringIO())
    assert not UpstreamServer.objects.filter(name="other").exists()


def test_the_launcher_caps_memory_and_refuses_to_run_nothing() -> None:
    hog = "bytearray(512 * 1024 * 1024)"
    capped = subprocess.run(
        [sys.executable, "-I", str(LAUNCHER), "--memory-mb", "256", "--", sys.executable, "-c", hog],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert capped.returncode != 0 and "MemoryError" in capped.stderr
    free = subprocess.run(
        [sys.executable, "-I", str(LAUNCHER), "--memory-mb", "0", "--", sys.executable, "-c", hog],
        capture_output=True,
        timeout=60,
    )
    assert free.returncode == 0
    nothing = subprocess.run([sys.executable, "-I", str(LAUNCHER), "--"], capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "no command" in nothing.stderr
    missing = subprocess.run(
        [sys.executable, "-I", str(LAUNCHER), "--", "/nonexistent/tool"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 127 and "cannot start" in missing.stderr
