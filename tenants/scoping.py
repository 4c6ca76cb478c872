"""Tenant scoping for admin classes: members see and change only their tenants' objects."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest

from tenants.roles import may, tenant_ids_for


class TenantScopedAdmin(admin.ModelAdmin):
    """Filters the admin by the requesting user's memberships.

    ``tenant_lookups`` are the query paths from the model to a tenant id (several for
    objects that belong to a tenant through different relations). An object outside the
    user's tenants is not in their querysets; asking for it by URL is a 403, never the data.

    ``creator_field`` names who created an object, for roles that may act only on their
    own objects (tenants.roles.OWN_OBJECTS_ONLY); bulk actions act on ``scoped`` querysets.
    """

    tenant_lookups: tuple[str, ...] = ("tenant",)
    creator_field: str | None = None

    def allowed_tenants(self, request: HttpRequest, action: str) -> set[int] | None:
        """Tenant ids the user may ``action`` here; None means every tenant (platform admin)."""
        if request.user.is_superuser:
            return None
        return tenant_ids_for(request.user, self.model, action)

    def _in_tenants(self, tenants: set[int]) -> Q:
        condition = Q()
        for lookup in self.tenant_lookups:
            condition |= Q(**{f"{lookup}__in": tenants})
        return condition

    def scope(self, queryset: QuerySet[Any], tenants: set[int] | None) -> QuerySet[Any]:
        if tenants is None:
            return queryset
        return queryset.filter(self._in_tenants(tenants))

    def scoped(self, request: HttpRequest, queryset: QuerySet[Any], action: str) -> QuerySet[Any]:
        """The objects of ``queryset`` the user may ``action``, each by its tenant and, where it counts, its creator."""
        tenants = self.allowed_tenants(request, action)
        if tenants is None:
            return queryset
        if self.creator_field is None:
            return queryset.filter(self._in_tenants(tenants))
        anyone = tenant_ids_for(request.user, self.model, action, on_any_object=True)
        own = self._in_tenants(tenants) & Q(**{self.creator_field: request.user.pk})
        return queryset.filter(self._in_tenants(anyone) | own)

    def tenant_of(self, obj: Model) -> int | None:
        for lookup in self.tenant_lookups:
            *path, last = lookup.split("__")
            value: Any = obj
            for part in path:
                value = getattr(value, part, None)
            if value is None:
                continue
            # "tenant" names a foreign key (read its id without a query); "pk"/"tenant_id" are ids.
            tenant_id = (
                getattr(value, f"{last}_id", None) if hasattr(value, f"{last}_id") else getattr(value, last, None)
            )
            if tenant_id is not None:
                return int(tenant_id)
        return None

    def _may(self, request: HttpRequest, obj: Model | None, action: str) -> bool:
        tenants = self.allowed_tenants(request, action)
        if tenants is None:
            return True
        if obj is None:
            return bool(tenants)
        if self.creator_field is None:
            return self.tenant_of(obj) in tenants
        creator_id = getattr(obj, f"{self.creator_field}_id", None)
        return may(request.user, self.model, action, tenant_id=self.tenant_of(obj), created_by_id=creator_id)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return self.scope(super().get_queryset(request), self.allowed_tenants(request, "view"))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # The id comes from the URL: one that is no valid key of this model is simply not found.
            field = self.model._meta.pk if from_field is None else self.model._meta.get_field(from_field)
            try:
                key = field.to_python(object_id)
            except (ValidationError, ValueError, TypeError, OverflowError):
                return None
            if self.model._default_manager.filter(**{field.name: key}).exists():
                raise PermissionDenied("That object belongs to a tenant you are not a member of.")
        return obj

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_view_permission(request, obj) and (
            self._may(request, obj, "view") or self._may(request, obj, "change")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self._may(request, None, "add")

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_change_permission(request, obj) and self._may(request, obj, "change")

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may(request, obj, "delete")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "tenant":
            tenants = self.allowed_tenants(request, "add")
            if tenants is not None:
                kwargs["queryset"] = db_field.related_model._default_manager.filter(pk__in=tenants)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def check_tenant(self, request: HttpRequest, tenant_id: int | None, action: str) -> None:
        """Refuse a write into a tenant the user may not ``action`` in (forms can be forged)."""
        tenants = self.allowed_tenants(request, action)
        if tenants is not None and tenant_id not in tenants:
            raise PermissionDenied("You may not do that in this tenant.")
