"""App config for tenants, API keys and key authentication."""

from __future__ import annotations

from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        from core.permissions import roles_grant
        from tenants.roles import TENANTS_GRANTS

        roles_grant(TENANTS_GRANTS)
