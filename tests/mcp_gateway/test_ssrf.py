"""Upstream URLs may not point at loopback, link-local, metadata or private addresses unless allowed."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from mcp_gateway import services
from mcp_gateway.models import SsrfAllowEntry, UpstreamServer
from mcp_gateway.ssrf import SsrfBlocked, url_check

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8000/mcp", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://10.1.2.3/mcp", "10.1.2.3"),
        ("http://[::1]/mcp", "::1"),
        ("http://internal.example/mcp", "192.168.0.7"),
        ("http://mapped.example/mcp", "::ffff:127.0.0.1"),
        ("http://cgnat.example/mcp", "100.100.100.200"),
    ],
)
def test_private_and_metadata_addresses_are_refused(url: str, address: str) -> None:
    with pytest.raises(SsrfBlocked):
        url_check(url, [], [address])


def test_public_addresses_pass_and_the_allow_list_admits_hosts_and_cidrs() -> None:
    url_check("https://tools.example.com/mcp", [], ["93.184.216.34"])
    url_check("http://10.1.2.3/mcp", ["10.0.0.0/8"], ["10.1.2.3"])
    url_check("http://tools.internal/mcp", ["tools.internal"], ["10.9.9.9"])
    with pytest.raises(SsrfBlocked):
        url_check("file:///etc/passwd", [], [])


def test_server_save_refuses_loopback_until_an_admin_allows_it(settings: object) -> None:
    settings.SSRF_ALLOWLIST = []  # type: ignore[attr-defined]
    server = UpstreamServer(name="local", url="http://127.0.0.1:9/mcp", credential="Bearer s3cret-upstream")
    with pytest.raises(ValidationError, match="SSRF allow-list"):
        services.server_save(server=server, actor="test")
    services.allow_entry_save(entry=SsrfAllowEntry(value="127.0.0.0/8"), actor="test")
    services.server_save(server=server, actor="test")

    with connection.cursor() as cursor:
        cursor.execute("SELECT credential FROM mcp_upstreamserver WHERE name = 'local'")
        stored = cursor.fetchone()[0]
    assert "s3cret-upstream" not in stored
    assert UpstreamServer.objects.get(name="local").credential == "Bearer s3cret-upstream"
