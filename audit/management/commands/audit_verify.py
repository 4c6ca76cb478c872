"""``manage.py audit_verify [--tenant SLUG_OR_ID]``: walk the hash chains, report the first broken link."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from audit.guard import guard_present
from audit.selectors import audit_chain_names, audit_chain_verify


def tenant_id_of(value: str) -> int:
    """A tenant id, or a slug looked up by name so the audit app imports no tenant code."""
    if value.isdigit():
        return int(value)
    if not apps.is_installed("tenants"):
        raise CommandError(f"'{value}' is not a tenant id.")
    tenant = apps.get_model("tenants", "Tenant").objects.filter(slug=value).values_list("pk", flat=True).first()
    if tenant is None:
        raise CommandError(f"No tenant has the slug or id '{value}'.")
    return int(tenant)


class Command(BaseCommand):
    help = "Verify the audit hash chains (every chain, or one tenant's); exit status 1 if a link is broken."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant's chain (slug or id)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant_id = tenant_id_of(options["tenant"]) if options["tenant"] else None
        with connection.cursor() as cursor:
            if not guard_present(cursor, connection.vendor):
                self.stderr.write("warning: the append-only trigger on audit_auditevent is missing or disabled")
        broken = 0
        for chain in audit_chain_names(tenant_id):
            report = audit_chain_verify(chain)
            if report.ok:
                self.stdout.write(f"{chain}: ok, {report.events} events")
                continue
            broken += 1
            where = f"event id {report.broken_id}, " if report.broken_id is not None else ""
            self.stdout.write(
                f"{chain}: BROKEN at seq {report.broken_seq} ({where}{report.events} events verified before it): "
                f"{report.reason}"
            )
        if broken:
            raise CommandError(f"{broken} audit chain(s) broken.", returncode=1)
        self.stdout.write(self.style.SUCCESS("All audit chains verified."))
