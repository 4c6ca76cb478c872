"""The role table: which model permissions each tenant role holds, filled by each app for its own models.

The roles are the tenant's (``tenants.roles`` checks them per tenant); the permissions are
each app's. An app names what each role may do with its models in its ``AppConfig.ready``
(``roles_grant``), so no app spells another's permissions, and a lower app (audit) grants
without importing the tenants app above it.
"""

from __future__ import annotations

TENANT_ADMIN, DEVELOPER, AUDITOR, VIEWER = "tenant_admin", "developer", "auditor", "viewer"
ROLES = (TENANT_ADMIN, DEVELOPER, AUDITOR, VIEWER)

# role -> {"app_label.model": actions}: the single source for both the groups' permissions
# and the per-tenant checks.
ROLE_PERMISSIONS: dict[str, dict[str, set[str]]] = {role: {} for role in ROLES}

# Key scopes that read a tenant's data -> the permission that data needs in the admin. Only
# who may see the data may give a key the scope: otherwise a key would be a way around the role.
SCOPE_READS: dict[str, tuple[str, str]] = {}


def roles_grant(grants: dict[str, dict[str, set[str]]]) -> None:
    """Give roles actions on models: ``{role: {"app_label.model": {"view", ...}}}`` (idempotent)."""
    for role, models in grants.items():
        if role not in ROLE_PERMISSIONS:
            raise ValueError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
        for label, actions in models.items():
            ROLE_PERMISSIONS[role].setdefault(label, set()).update(actions)


def scope_reads(scope: str, label: str, action: str) -> None:
    """Key scope ``scope`` reads the data behind ``action`` on ``label``: only who may do that may grant it."""
    SCOPE_READS[scope] = (label, action)
