"""Shared by the credential tests: the secret params the issue names, and raw reads of what the database holds."""

from __future__ import annotations

from typing import Any

from django.db import connection

from audit.models import AuditEvent
from routing.models import ModelDeployment

# The credentials the issue names, and secret-looking headers (as "extra_headers.<name>").
NAMED = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "vertex_credentials",
    "client_secret",
    "azure_ad_token",
    "azure_client_secret",
    "extra_headers.api-key",
    "extra_headers.Authorization",
]


def params_with(name: str, value: str) -> dict[str, Any]:
    if name.startswith("extra_headers."):
        return {"extra_headers": {name.split(".", 1)[1]: value, "X-Team": "search"}}
    return {name: value}


def lookup(params: dict[str, Any], name: str) -> Any:
    if name.startswith("extra_headers."):
        return params["extra_headers"][name.split(".", 1)[1]]
    return params[name]


def raw_table(table: str) -> str:
    """Every column of every row as the database holds it (no field decrypts anything)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
        return " ".join(str(value) for row in cursor.fetchall() for value in row)


def raw_deployments() -> str:
    return raw_table(ModelDeployment._meta.db_table)


def raw_audit() -> str:
    return raw_table(AuditEvent._meta.db_table)
