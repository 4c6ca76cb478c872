"""``manage.py audit_verify [--tenant SLUG_OR_ID] [--no-anchor]``: walk the hash chains and compare them
with the durable export (the anchor outside the database); report what is broken, changed or missing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from audit.durable import Anchor, anchor_read, anchored_chains
from audit.guard import guard_problems
from audit.models import AuditEvent
from audit.segment_store import segment_store
from audit.selectors import ChainReport, audit_chain_names, audit_chain_verify


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


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


class Command(BaseCommand):
    help = (
        "Verify the audit hash chains (every chain, or one tenant's) and compare them with the durable export: "
        "exit status 1 if a link is broken or an exported event was changed or removed since."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant's chain (slug or id)")
        parser.add_argument(
            "--no-anchor",
            action="store_true",
            help="Do not read the export store: check each chain against itself only (detects less)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant_id = tenant_id_of(options["tenant"]) if options["tenant"] else None
        with connection.cursor() as cursor:
            for problem in guard_problems(cursor, connection.vendor):
                self.stderr.write(f"warning: the audit guard is weakened: {problem}")
        store = None if options["no_anchor"] else segment_store()
        chains = audit_chain_names(tenant_id)
        if store is not None:
            try:
                stored = anchored_chains(store)
            except Exception as exc:
                raise CommandError(
                    f"Cannot read the audit export store ({exc}); fix it, or run with --no-anchor "
                    "to check the chains against the database alone."
                ) from exc
            if tenant_id is None:
                chains = sorted(set(chains) | set(stored))
            if not stored:
                self.stdout.write(
                    "warning: the export store holds no segments yet: every chain is checked against the database "
                    "alone (run the export: manage.py audit_export, or the beat task)"
                )
        else:
            self.stdout.write("anchor not checked (--no-anchor): each chain is checked against the database alone")
        failed = 0
        for chain in chains:
            anchor = anchor_read(store, chain) if store is not None else None
            report = audit_chain_verify(chain, anchored=anchor.links() if anchor is not None else None)
            if not self._report(chain, report, anchor):
                failed += 1
        if failed:
            raise CommandError(f"{failed} audit chain(s) broken or differing from the export.", returncode=1)
        self.stdout.write(self.style.SUCCESS("All audit chains verified."))

    def _report(self, chain: str, report: ChainReport, anchor: Anchor | None) -> bool:
        ok = report.ok and not (anchor and anchor.problems)
        if report.broken_seq is not None or report.reason:
            where = f"event id {report.broken_id}, " if report.broken_id is not None else ""
            self.stdout.write(
                f"{chain}: BROKEN at seq {report.broken_seq} ({where}{report.events} events verified before it): "
                f"{report.reason}"
            )
        if report.changed_count:
            self.stdout.write(
                f"{chain}: CHANGED since exported: {report.changed_count} events, seq "
                f"{', '.join(map(str, report.changed))}{' …' if report.changed_count > len(report.changed) else ''}"
            )
        if report.missing_count:
            self.stdout.write(
                f"{chain}: MISSING since exported: {report.missing_count} events, seq {_ranges(report.missing)}"
                f"{' …' if report.missing_count > sum(last - first + 1 for first, last in report.missing) else ''}"
            )
        if report.truncated:
            self.stdout.write(
                f"{chain}: TRUNCATED: the chain ends at seq {report.last_seq}, the export holds it to seq "
                f"{report.anchor_last_seq}"
            )
        for problem in anchor.problems if anchor else ():
            self.stdout.write(f"{chain}: ANCHOR: {problem}")
        for note in anchor.notes if anchor else ():
            self.stdout.write(f"{chain}: note: {note}")
        if ok:
            self.stdout.write(f"{chain}: ok, {report.events} events{self._reach(chain, report, anchor)}")
        return ok

    def _reach(self, chain: str, report: ChainReport, anchor: Anchor | None) -> str:
        """How far the anchor reaches: what after it only the in-database chain protects."""
        if anchor is None:
            return ""
        if not anchor.last_seq:
            return "; not exported yet: protected only by the in-database chain"
        reach = f"; anchored to seq {anchor.last_seq}"
        if anchor.exported_at:
            reach += f" (exported {anchor.exported_at})"
        after = report.last_seq - anchor.last_seq
        if after <= 0:
            return reach + ", all of it"
        reach += f"; the {after} events after it are protected only by the in-database chain"
        oldest = (
            AuditEvent.objects.filter(chain=chain, seq=anchor.last_seq + 1).values_list("created_at", flat=True).first()
        )
        if oldest is not None and timezone.now() - oldest > dt.timedelta(minutes=2 * settings.AUDIT_EXPORT_INTERVAL):
            self.stderr.write(
                f"warning: {chain}: events since {oldest:%Y-%m-%d %H:%M:%S} UTC are not exported yet "
                f"(AUDIT_EXPORT_INTERVAL is {settings.AUDIT_EXPORT_INTERVAL} min): is the beat running?"
            )
        return reach
