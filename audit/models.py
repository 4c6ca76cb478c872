"""The audit record: who did what to which object, when, from where, and how it ended."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from audit.chain import GENESIS_HASH, timestamp


class AuditEvent(models.Model):
    """One event in the platform's audit trail, a link in a SHA-256 hash chain.

    The record takes plain values — an actor string, a tenant id, a target label — so it
    depends on no other app and survives the deletion of what it describes. ``details``
    holds the structured context, for changes a ``before``/``after`` pair of field values.

    Append-only: the admin offers neither edit nor delete and the database refuses
    UPDATE and DELETE (triggers installed by migration). Each tenant has its own chain,
    platform-wide events share the ``platform`` chain; ``seq`` numbers a chain without
    gaps and ``hash`` is the SHA-256 of the event's canonical JSON, which includes the
    previous event's hash (``audit.chain``). Altering, removing or inserting an event
    breaks every later link, which ``manage.py audit_verify`` reports.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        DENIED = "denied", "Denied"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:USERNAME, key:PREFIX or system")
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    target = models.CharField(max_length=300, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    chain = models.CharField(max_length=40, editable=False, help_text="platform, or tenant:ID")
    seq = models.BigIntegerField(editable=False, help_text="Position in the chain, from 1, without gaps")
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False, help_text="SHA-256 of the canonical JSON")
    # Not hashed: it only lets a retried write recognise events it already appended.
    entry_key = models.CharField(max_length=32, null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant_id", "created_at"], name="audit_tenant_time_idx"),
            # A Meta index, not db_index: on SQLite a field index makes adding or removing the
            # column rebuild the table, which the guard's triggers do not survive.
            models.Index(fields=["entry_key"], name="audit_entry_key_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        permissions = [("export_auditevent", "Can export audit events")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target} ({self.outcome})"

    def chained_fields(self) -> dict[str, Any]:
        """The event as the chain sees it: the hashed fields plus ``hash`` (see ``audit.chain``)."""
        return {
            "chain": self.chain,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "created_at": timestamp(self.created_at),
            "actor": self.actor,
            "tenant_id": self.tenant_id,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "ip": self.ip or None,
            "details": self.details,
            "hash": self.hash,
        }


class AuditChainHead(models.Model):
    """The last link of each chain; writers lock its row so a chain never forks."""

    chain = models.CharField(max_length=40, primary_key=True)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"{self.chain} @ {self.seq}"


class AuditExportCheckpoint(models.Model):
    """How far the durable export has written each chain (advanced only after a segment is stored)."""

    chain = models.CharField(max_length=40, primary_key=True)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    last_created_at = models.DateTimeField(null=True, blank=True)
    segment = models.CharField(max_length=300, blank=True, help_text="Name of the last segment written")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.chain} exported to {self.last_seq}"
