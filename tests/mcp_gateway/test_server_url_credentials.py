"""An upstream MCP server's URL never carries a credential: it is stored and audited in clear."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from mcp_gateway import services
from mcp_gateway.models import UpstreamServer

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2@tools.example.com/mcp",
        "https://tools.example.com/mcp?api_key=hunter2",
        "https://tools.example.com/mcp?access_token=hunter2&x=1",
        "https://tools.example.com/mcp?sig=hunter2",
    ],
)
def test_a_url_carrying_a_credential_is_refused_before_it_is_stored_or_audited(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        services.server_save(server=UpstreamServer(name="tools", url=url), actor="test")
    assert "credential" in str(caught.value.message_dict["url"])
    assert "hunter2" not in str(caught.value)
    assert not UpstreamServer.objects.exists()
    assert not AuditEvent.objects.filter(details__icontains="hunter2").exists()


def test_a_plain_url_with_ordinary_query_parameters_is_accepted() -> None:
    server = UpstreamServer(name="tools", url="https://tools.example.com/mcp?region=eu&version=2")
    server.clean()
