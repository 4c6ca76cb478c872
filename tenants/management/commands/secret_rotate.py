"""Run secret rotation now (the same pass the scheduled job makes), or report what is still due."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tenants.rotation import api_keys_rotation_due, secret_rotate, secrets_pending


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored credential with the first key of FERNET_KEYS, rotate API keys past their "
        "maximum age (new secrets are held for a tenant admin to collect once in the admin) and revoke "
        "rotated keys whose grace period is over. --check only reports."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--check", action="store_true", help="Report what is due; exit 1 if anything is.")

    def handle(self, *args: Any, check: bool, **options: Any) -> None:
        if check:
            pending = secrets_pending()
            due = api_keys_rotation_due().count()
            for label, count in pending.items():
                self.stdout.write(f"{label}: {count} value(s) not under the first key")
            self.stdout.write(f"API keys due for rotation: {due}")
            if any(pending.values()) or due:
                raise CommandError("rotation is due; run `manage.py secret_rotate`")
            self.stdout.write("nothing due: every credential is under the first key, so older keys can be removed")
            return
        report = secret_rotate(actor="system:manage.py secret_rotate")
        self.stdout.write(report.summary())
        if report.failed:
            raise CommandError(f"some keys failed to rotate: {', '.join(report.failed)}")
