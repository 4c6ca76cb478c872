"""App config for model deployments, the chat API and usage records."""

from __future__ import annotations

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from core.permissions import AUDITOR, DEVELOPER, TENANT_ADMIN, VIEWER, roles_grant

        # Every role reads its tenants' request log.
        roles_grant({role: {"routing.requestlog": {"view"}} for role in (TENANT_ADMIN, DEVELOPER, AUDITOR, VIEWER)})

        from routing.quota_reconcile import quota_reconcile_after_outage
        from tenants import quota

        quota.after_outage.append(quota_reconcile_after_outage)
