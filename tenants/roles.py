"""Roles within a tenant, expressed as Django groups and permissions, scoped by membership.

A user's groups say which kinds of objects they may view or change (Django's model
permissions); their memberships say in which tenants. A user can hold different roles
in different tenants: every check asks "may this user do X to objects of tenant T".
Platform admins are superusers and see everything.

Two rules narrow a role further. Some permissions hold only on the objects the user
created (``OWN_OBJECTS_ONLY``: a developer changes, revokes and rotates only their own
keys). And a key scope that reads tenant data (``SCOPE_READS``) may only be given by
someone who may see that data in the key's tenant.

Each app grants the roles its own models' permissions (``core.permissions.roles_grant`` in
its ``AppConfig.ready``); this module holds the tenants app's grants and the checks.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import models

from core.errors import PermissionDenied
from core.permissions import (
    AUDITOR,
    DEVELOPER,
    ROLE_PERMISSIONS,
    SCOPE_READS,
    TENANT_ADMIN,
    VIEWER,
)

ROLE_LABELS = {
    TENANT_ADMIN: "Tenant admin",
    DEVELOPER: "Developer",
    AUDITOR: "Auditor",
    VIEWER: "Viewer",
}

# The tenants app's own models; each other app grants on its models in its AppConfig.ready.
TENANTS_GRANTS: dict[str, dict[str, set[str]]] = {
    TENANT_ADMIN: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view", "add", "change", "delete"},
        "tenants.quota": {"view", "add", "change", "delete"},
        "tenants.membership": {"view", "add", "change", "delete"},
    },
    DEVELOPER: {
        "tenants.tenant": {"view"},
        # "change" (edit, revoke, rotate, collect a rotated secret) on their own keys only.
        "tenants.apikey": {"view", "add", "change"},
        "tenants.quota": {"view"},
    },
    AUDITOR: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view"},
        "tenants.quota": {"view"},
        "tenants.membership": {"view"},
    },
    VIEWER: {
        "tenants.tenant": {"view"},
        "tenants.apikey": {"view"},
        "tenants.quota": {"view"},
    },
}

# role -> {"app_label.model": actions} that the role holds only on objects its user created.
OWN_OBJECTS_ONLY: dict[str, dict[str, set[str]]] = {
    DEVELOPER: {"tenants.apikey": {"change"}},
}


class NotAllowed(PermissionDenied, DjangoPermissionDenied):
    """The acting person's roles do not allow this change.

    A platform error (403 ``permission_error``) and Django's PermissionDenied at once, so the
    admin answers a refusal the services make with its 403 page, never a 500.
    """

    code = "not_allowed"


def _label(model: type[models.Model]) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def roles_allowing(model: type[models.Model], action: str, *, on_any_object: bool = False) -> set[str]:
    """Roles holding ``action`` on ``model``; with ``on_any_object``, not those holding it on their own objects only."""
    label = _label(model)
    return {
        role
        for role, grants in ROLE_PERMISSIONS.items()
        if action in grants.get(label, set())
        and not (on_any_object and action in OWN_OBJECTS_ONLY.get(role, {}).get(label, set()))
    }


def tenant_ids_for(user: Any, model: type[models.Model], action: str, *, on_any_object: bool = False) -> set[int]:
    """The tenants in which ``user`` may ``action`` objects of ``model`` (not for superusers).

    Includes the tenants where the role allows it only on the user's own objects, unless
    ``on_any_object``; ``may`` answers for one object.
    """
    from tenants.models import Membership

    roles = roles_allowing(model, action, on_any_object=on_any_object)
    if not roles or not user.is_active:
        return set()
    cache = user.__dict__.setdefault("_tenant_role_cache", {})
    key = (model, action, on_any_object)
    if key not in cache:
        cache[key] = set(Membership.objects.filter(user=user, role__in=roles).values_list("tenant_id", flat=True))
    return cache[key]


def is_platform_admin(user: Any) -> bool:
    """None is the system (config-as-code, the scheduler, management commands): it acts as a platform admin."""
    return user is None or bool(user.is_active and user.is_superuser)


def may(user: Any, model: type[models.Model], action: str, *, tenant_id: int | None, created_by_id: Any = None) -> bool:
    """May ``user`` (None: the system) ``action`` an object of ``model`` in ``tenant_id``, made by ``created_by_id``?"""
    if is_platform_admin(user):
        return True
    if tenant_id is None:
        return False
    if tenant_id in tenant_ids_for(user, model, action, on_any_object=True):
        return True
    return created_by_id is not None and created_by_id == user.pk and tenant_id in tenant_ids_for(user, model, action)


def scopes_grantable(user: Any, tenant_id: int | None) -> tuple[str, ...]:
    """The key scopes ``user`` (None: the system) may give a key of ``tenant_id``, in KEY_SCOPES order."""
    from tenants.models import KEY_SCOPES

    if is_platform_admin(user):
        return KEY_SCOPES
    return tuple(
        scope
        for scope in KEY_SCOPES
        if scope not in SCOPE_READS
        or tenant_id in tenant_ids_for(user, apps.get_model(SCOPE_READS[scope][0]), SCOPE_READS[scope][1])
    )


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
