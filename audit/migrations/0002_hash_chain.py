"""Hash-chain the audit record: link existing events, then make the table append-only."""

import django.utils.timezone
from django.db import migrations, models

from audit import guard
from audit.chain import GENESIS_HASH, chain_for, event_hash, timestamp


def link_existing(apps, schema_editor):
    """Chain the events written before this migration, in id order, one chain per tenant."""
    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditChainHead = apps.get_model("audit", "AuditChainHead")
    ip_field = AuditEvent._meta.get_field("ip")
    heads: dict[str, tuple[int, str]] = {}
    batch = []
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        chain = chain_for(event.tenant_id)
        seq, prev = heads.get(chain, (0, GENESIS_HASH))
        event.chain, event.seq, event.prev_hash = chain, seq + 1, prev
        event.ip = ip_field.get_prep_value(event.ip) or None
        fields = {
            "chain": chain,
            "seq": event.seq,
            "prev_hash": prev,
            "created_at": timestamp(event.created_at),
            "actor": event.actor,
            "tenant_id": event.tenant_id,
            "action": event.action,
            "target": event.target,
            "outcome": event.outcome,
            "ip": event.ip,
            "details": event.details,
        }
        event.hash = event_hash(fields)
        heads[chain] = (event.seq, event.hash)
        batch.append(event)
        if len(batch) >= 2000:
            AuditEvent.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "hash", "ip"])
            batch = []
    if batch:
        AuditEvent.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "hash", "ip"])
    AuditChainHead.objects.bulk_create(
        [AuditChainHead(chain=chain, seq=seq, hash=digest) for chain, (seq, digest) in heads.items()]
    )


def guard_install(apps, schema_editor):
    guard.guard_install(schema_editor.connection.cursor(), schema_editor.connection.vendor, versions=(1,))


def guard_remove(apps, schema_editor):
    guard.guard_remove(schema_editor.connection.cursor(), schema_editor.connection.vendor, versions=(1,))


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("chain", models.CharField(max_length=40, primary_key=True, serialize=False)),
                ("seq", models.BigIntegerField(default=0)),
                ("hash", models.CharField(default="0000000000000000000000000000000000000000000000000000000000000000", max_length=64)),
            ],
        ),
        migrations.CreateModel(
            name="AuditExportCheckpoint",
            fields=[
                ("chain", models.CharField(max_length=40, primary_key=True, serialize=False)),
                ("last_seq", models.BigIntegerField(default=0)),
                ("last_hash", models.CharField(default="0000000000000000000000000000000000000000000000000000000000000000", max_length=64)),
                ("last_created_at", models.DateTimeField(blank=True, null=True)),
                ("segment", models.CharField(blank=True, help_text="Name of the last segment written", max_length=300)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.AlterModelOptions(
            name="auditevent",
            options={"ordering": ["-created_at", "-id"], "permissions": [("export_auditevent", "Can export audit events")]},
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="created_at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain",
            field=models.CharField(default="", editable=False, help_text="platform or tenant:<id>", max_length=40),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="seq",
            field=models.BigIntegerField(default=0, editable=False, help_text="Position in the chain, from 1, without gaps"),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(default="", editable=False, help_text="SHA-256 of the canonical JSON", max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(link_existing, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("chain", "seq"), name="audit_chain_seq_unique"),
        ),
        migrations.RunPython(guard_install, guard_remove),
    ]
