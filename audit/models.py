"""The audit record: who did what to which object, when, from where, and how it ended."""

from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    """One event in the platform's audit trail.

    Append-only by convention and by the admin (which offers neither edit nor delete).
    The record takes plain values — an actor string, a tenant id, a target label — so it
    depends on no other app and survives the deletion of what it describes. ``details``
    holds the structured context, for changes a ``before``/``after`` pair of field values.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        DENIED = "denied", "Denied"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:<username>, key:<prefix> or system")
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    target = models.CharField(max_length=300, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant_id", "created_at"], name="audit_tenant_time_idx")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target} ({self.outcome})"
