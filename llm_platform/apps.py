"""App config for the project package, which hosts cross-app management commands."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_sync(**kwargs: Any) -> None:
    from tenants.roles import groups_sync

    groups_sync()


def _var_dirs_make() -> None:
    """VAR_DIR (0700, the SQLite database's home) and the filesystem broker's folders, before first use."""
    from django.conf import settings

    from llm_platform.private_files import private_dir
    from llm_platform.settings_values import broker_folders_make

    private_dir(settings.VAR_DIR)
    if settings.CELERY_BROKER_URL == "filesystem://":
        broker_folders_make(settings.CELERY_BROKER_TRANSPORT_OPTIONS)


def _periodic_tasks_seed(**kwargs: Any) -> None:
    from llm_platform.jobs import periodic_tasks_seed

    periodic_tasks_seed()


class LlmPlatformConfig(AppConfig):
    name = "llm_platform"
    verbose_name = "Platform"

    def ready(self) -> None:
        # Every process (web, worker, beat, manage.py) sets Django up before it opens the
        # database or the broker, and the settings themselves create nothing.
        _var_dirs_make()
        # post_migrate fires once per app with models, in INSTALLED_APPS order, and each app's
        # permissions are made on its own turn. This app comes after every app the role table
        # grants (tests/tenants/test_roles.py checks the groups), so one sync on its turn sees
        # them all; syncing on every app's turn cost ten needless syncs per migrate and flush.
        post_migrate.connect(_roles_sync, sender=self, dispatch_uid="llm_platform.roles_sync")
        # The periodic jobs appear in the admin (Periodic tasks) as soon as the database exists.
        post_migrate.connect(_periodic_tasks_seed, sender=self, dispatch_uid="llm_platform.periodic_tasks_seed")
        from audit.selectors import audit_export_lag_seconds
        from observability import metrics

        metrics.gauge_callback(
            "llmp_audit_export_lag_seconds",
            "Seconds since the newest audit event not yet in a durable export segment (0 when caught up).",
            audit_export_lag_seconds,
        )
