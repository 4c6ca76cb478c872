"""Deferred audit entries carry a key so a retried write never appends them twice (a plain column and index: no table rebuild, so SQLite keeps its guard triggers)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_guard_heads_truncate"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="entry_key",
            field=models.CharField(blank=True, editable=False, max_length=32, null=True),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["entry_key"], name="audit_entry_key_idx"),
        ),
    ]
