"""Admin for tenants, members, API keys and the tenant-scoped audit trail; importing it registers them."""

from tenants.admin import audit_events, keys, tenancy  # noqa: F401
