"""Admin classes whose saves and deletes go through the app's audited services, never the ORM directly."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from core.actors import actor_of, ip_of
from core.changes import AuditedEntity


@dataclass(frozen=True)
class AdminWrites:
    """The services an admin writes through; each takes the object as the keyword ``name`` (e.g. ``tenant``)."""

    name: str
    save: Callable[..., Any] | None = None
    delete: Callable[..., Any] | None = None
    # How the services audit the model: its History button then opens its audit trail.
    audited: AuditedEntity[Any] | None = None


class ServiceAdminMixin:
    """Put before ``admin.ModelAdmin``: the services of ``writes`` make every save and delete.

    They are called with ``service_kwargs`` too (who acts, from where). A bulk delete
    deletes each object of ``deletable`` through ``delete_model``, so each is audited.
    """

    writes: AdminWrites

    def service_kwargs(self, request: HttpRequest) -> dict[str, Any]:
        return {"actor": actor_of(request), "ip": ip_of(request)}

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        assert self.writes.save is not None, f"{type(self).__name__} saves through its own save_model"
        self.writes.save(**{self.writes.name: obj}, **self.service_kwargs(request))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        assert self.writes.delete is not None, f"{type(self).__name__} deletes through its own delete_model"
        self.writes.delete(**{self.writes.name: obj}, **self.service_kwargs(request))

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        """The tamper-evident audit trail of the object (for those who may read it), not Django's own log."""
        audited = self.writes.audited
        if audited is not None and request.user.has_perm("audit.view_auditevent"):
            obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
            if obj is not None and self.has_view_or_change_permission(request, obj):  # type: ignore[attr-defined]
                query = urlencode(audited.history_filter(obj))
                return HttpResponseRedirect(f"{reverse('admin:audit_auditevent_changelist')}?{query}")
        return super().history_view(request, object_id, extra_context)  # type: ignore[misc]

    def deletable(self, request: HttpRequest, queryset: QuerySet[Any]) -> Iterable[Model]:
        """The objects of a bulk delete that are deleted (all of them, unless a subclass narrows it)."""
        return queryset

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in self.deletable(request, queryset):
            self.delete_model(request, obj)
