"""Guard version 2: chain heads only move forward, neither audit table can be truncated, and on
PostgreSQL every guard trigger fires under any session_replication_role (ENABLE ALWAYS)."""

from django.db import migrations

from audit import guard


def guard_install(apps, schema_editor):
    guard.guard_install(schema_editor.connection.cursor(), schema_editor.connection.vendor, versions=(2,))


def guard_remove(apps, schema_editor):
    guard.guard_remove(schema_editor.connection.cursor(), schema_editor.connection.vendor, versions=(2,))


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_hash_chain"),
    ]

    operations = [
        migrations.RunPython(guard_install, guard_remove),
    ]
