"""Roles within a tenant, expressed as Django groups and permissions, scoped by membership.

A user's groups say which kinds of objects they may view or change (Django's model
permissions); their memberships say in which tenants. A user can hold different roles
in different tenants: every check asks "may this user do X to objects of tenant T".
Platform admins are superusers and see everything.
"""

from __future__ import annotations

from typing import Any

from django.db import models

TENANT_ADMIN, DEVELOPER, AUDITOR, VIEWER = "tenant_admin", "developer", "auditor", "viewer"

ROLE_LABELS = {
    TENANT_ADMIN: "Tenant admin",
    DEVELOPER: "Developer",
    AUDITOR: "Auditor",
    VIEWER: "Viewer",
}

# role -> {"app_label.model": actions}. The single source for both the groups' permissions
# and the per-tenant checks.
ROLE_PERMISSIONS: dict[str, dict[str, set[str]]] = {
    TENANT_ADMIN: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view", "add", "change", "delete"},
        "tenants.quota": {"view", "add", "change", "delete"},
        "tenants.membership": {"view", "add", "change", "delete"},
        "routing.requestlog": {"view"},
        "audit.auditevent": {"view"},
        # MCP: their tenant's grants (tenant-wide ones only on self-service servers, see
        # mcp_gateway.services.grant_within_self_service), the tools they can grant, recent calls.
        "mcp.toolgrant": {"view", "add", "change", "delete"},
        "mcp.upstreamtool": {"view"},
        "mcp.toolcallevent": {"view"},
    },
    DEVELOPER: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view", "add"},
        "tenants.quota": {"view"},
        "routing.requestlog": {"view"},
    },
    AUDITOR: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view"},
        "tenants.quota": {"view"},
        "tenants.membership": {"view"},
        "routing.requestlog": {"view"},
        "audit.auditevent": {"view", "export"},
        "mcp.toolgrant": {"view"},
        "mcp.toolcallevent": {"view"},
    },
    VIEWER: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view"},
        "tenants.quota": {"view"},
        "routing.requestlog": {"view"},
    },
}


def roles_allowing(model: type[models.Model], action: str) -> set[str]:
    label = f"{model._meta.app_label}.{model._meta.model_name}"
    return {role for role, grants in ROLE_PERMISSIONS.items() if action in grants.get(label, set())}


def tenant_ids_for(user: Any, model: type[models.Model], action: str) -> set[int]:
    """The tenants in which ``user`` may ``action`` objects of ``model`` (not for superusers)."""
    from tenants.models import Membership

    roles = roles_allowing(model, action)
    if not roles or not user.is_active:
        return set()
    cache = user.__dict__.setdefault("_tenant_role_cache", {})
    key = (model, action)
    if key not in cache:
        cache[key] = set(Membership.objects.filter(user=user, role__in=roles).values_list("tenant_id", flat=True))
    return cache[key]


def groups_sync() -> None:
    """Create or update one group per role with exactly the permissions in ROLE_PERMISSIONS."""
    from django.contrib.auth.models import Group, Permission

    for role, grants in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=ROLE_LABELS[role])
        wanted = []
        for label, actions in grants.items():
            app_label, model_name = label.split(".")
            wanted += list(
                Permission.objects.filter(
                    content_type__app_label=app_label,
                    codename__in=[f"{action}_{model_name}" for action in actions],
                )
            )
        group.permissions.set(wanted)
