"""The audited-change helper: the one skeleton every audited write follows, and the JSON values it records.

A service saves a row inside ``AuditedEntity.saving``: the stored row is read and locked,
its values snapshotted, the body checks and validates, calls ``Change.save``, and on leaving
the block the audit event is written in the same transaction and the invalidations are queued
for the commit. A save that would leave a stored row as it is (no column and no audited value
differs) is skipped: no write, no event, no invalidation, so re-saving a form or re-loading a
config leaves no trace.
``AuditedEntity.delete`` does the same for a deletion.

Core imports no app, so it cannot call ``audit.services.audit_record`` itself: at start-up
the audit app passes that function to ``audit_recorder_install``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction

M = TypeVar("M", bound=models.Model)


def snapshot(instance: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """JSON-safe field values of ``instance`` for an audit before/after pair."""
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        if isinstance(value, models.Model):
            value = value.pk
        elif isinstance(value, (dt.datetime, dt.date)):
            value = value.isoformat()
        values[name] = value
    return values


def changes_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields that differ, as {"field": {"before": old, "after": new}}."""
    return {
        name: {"before": before.get(name), "after": after.get(name)}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


class AuditRecord(Protocol):
    """The signature of ``audit.services.audit_record``: one event, written in the caller's transaction."""

    def __call__(
        self,
        *,
        actor: str,
        action: str,
        target: str = ...,
        tenant_id: int | None = ...,
        ip: str | None = ...,
        details: dict[str, Any] | None = ...,
    ) -> object: ...


class AuditRecorder:
    """Writes events through the function the audit app installs; refuses before then (no change goes unaudited)."""

    def __init__(self) -> None:
        self._record: AuditRecord | None = None

    def install(self, record: AuditRecord) -> None:
        self._record = record

    def __call__(
        self, *, actor: str, action: str, target: str, tenant_id: int | None, ip: str | None, details: dict[str, Any]
    ) -> None:
        if self._record is None:
            raise ImproperlyConfigured("No audit recorder is installed: put the audit app in INSTALLED_APPS.")
        self._record(actor=actor, action=action, target=target, tenant_id=tenant_id, ip=ip, details=details)


audit_recorder = AuditRecorder()


def audit_recorder_install(record: AuditRecord) -> None:
    """Write the events of audited changes through ``record`` from now on."""
    audit_recorder.install(record)


def _no_tenant(instance: Any) -> int | None:
    return None


@dataclass
class Change(Generic[M]):
    """One save in progress: the row as stored (locked; None for a new row) and its values before."""

    instance: M
    stored: M | None
    before: dict[str, Any]
    snapshot: Callable[[M], dict[str, Any]]
    # Added to the event's details, and to its changes (e.g. credentials named, never shown).
    details: dict[str, Any] = field(default_factory=dict)
    extra_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: bool = False
    written: bool = False
    commit_hooks: list[Callable[[], None]] = field(default_factory=list)

    def changes(self) -> dict[str, dict[str, Any]]:
        """What differs between the stored row and the instance now."""
        return changes_between(self.before, self.snapshot(self.instance)) | self.extra_changes

    @property
    def unchanged(self) -> bool:
        """A stored row that this save would leave as it is (a new row is always a change)."""
        return self.stored is not None and not self.changes()

    def columns_unchanged(self) -> bool:
        """A stored row whose every column the instance holds as stored (a write would change nothing)."""
        if self.stored is None:
            return False
        return all(
            getattr(self.instance, f.attname) == getattr(self.stored, f.attname)
            for f in self.instance._meta.concrete_fields
            if not f.primary_key
        )

    def save(self, **kwargs: Any) -> None:
        """Write the row, unless it would stay as stored (then only the rest of the block, e.g. relations, runs)."""
        self.saved = True
        if self.columns_unchanged() and not self.extra_changes:
            return
        self.instance.save(**kwargs)
        self.written = True

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the change commits (never if it rolls back)."""
        self.commit_hooks.append(hook)


@dataclass(frozen=True)
class AuditedEntity(Generic[M]):
    """How changes to one model are audited.

    ``name`` is the family of its actions (``<name>.create``, ``.change``, ``.delete``),
    ``audited`` its audited fields (or a function giving their values), ``target`` and
    ``tenant_id`` where its events point, ``on_commit`` what every committed change of it
    invalidates.
    """

    name: str
    audited: Sequence[str] | Callable[[M], dict[str, Any]]
    target: Callable[[M], str]
    tenant_id: Callable[[M], int | None] = _no_tenant
    on_commit: Callable[[], None] | None = None
    # A deletion's event holds the row's values, unless its target says all there was.
    delete_keeps_before: bool = True
    # The audit list's filter that finds the events of one row (default: by its target).
    history: Callable[[M], dict[str, str]] | None = None

    def history_filter(self, instance: M) -> dict[str, str]:
        """The query of the audit list that shows ``instance``'s events (its History page).

        A target that names the row's id (``deployment:7:gpt-4o``) is matched on ``kind:id:``,
        so the events from before a rename are found too.
        """
        if self.history is not None:
            return self.history(instance)
        target = self.target(instance)
        head = f"{target.split(':', 1)[0]}:{instance.pk}:"
        return {"target__startswith": head} if target.startswith(head) else {"target": target}

    @contextmanager
    def saving(self, instance: M, *, actor: str, ip: str | None = None) -> Iterator[Change[M]]:
        """Create or change ``instance`` in one transaction, its audit event with it.

        The body validates and calls ``change.save()``; after the block the event is
        written (``<name>.create`` or ``.change``, with the changes) and the hooks queued
        for the commit. A body that does not save records nothing, nor does a save that
        changed no column and no audited value (a many-to-many set in the block counts).
        """
        with transaction.atomic():
            stored = None
            if instance.pk is not None:
                # Locked so that two saves of one row queue up and each records what it replaced.
                manager = type(instance)._default_manager
                stored = manager.select_for_update(no_key=True).filter(pk=instance.pk).first()
            before = self.values(stored) if stored is not None else {}
            change = Change(instance, stored, before, self.values)
            yield change
            if not change.saved:
                return
            changes = change.changes()
            if stored is not None and not change.written and not changes:
                return
            action = "change" if stored is not None else "create"
            self.record(instance, action, actor=actor, ip=ip, details={"changes": changes, **change.details})
            self._commit_queue(change.commit_hooks)

    def record(self, instance: M, action: str, *, actor: str, ip: str | None, details: dict[str, Any]) -> None:
        """Write the event ``<name>.<action>`` of ``instance`` (in the caller's transaction)."""
        target, tenant_id = self.target(instance), self.tenant_id(instance)
        audit_recorder(
            actor=actor, action=f"{self.name}.{action}", target=target, tenant_id=tenant_id, ip=ip, details=details
        )

    def values(self, instance: M) -> dict[str, Any]:
        """The audited values of ``instance``, as its events record them."""
        return self.audited(instance) if callable(self.audited) else snapshot(instance, self.audited)

    def save(self, instance: M, *, actor: str, ip: str | None = None) -> M:
        """The plain case of ``saving``: validate ``instance``, then save it."""
        with self.saving(instance, actor=actor, ip=ip) as change:
            instance.full_clean()
            change.save()
        return instance

    def delete(
        self,
        instance: M,
        *,
        actor: str,
        ip: str | None = None,
        details: dict[str, Any] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        """Delete ``instance`` and write its ``<name>.delete`` event, in one transaction."""
        with transaction.atomic():
            recorded = {"before": self.values(instance)} if self.delete_keeps_before else {}
            # Read before the delete, which clears the primary key.
            target, tenant_id = self.target(instance), self.tenant_id(instance)
            instance.delete()
            audit_recorder(
                actor=actor,
                action=f"{self.name}.delete",
                target=target,
                tenant_id=tenant_id,
                ip=ip,
                details=recorded | (details or {}),
            )
            self._commit_queue([on_commit] if on_commit is not None else [])

    def _commit_queue(self, hooks: list[Callable[[], None]]) -> None:
        for hook in [*hooks, *([self.on_commit] if self.on_commit is not None else [])]:
            transaction.on_commit(hook)
