"""Secret rotation in the API key admin: what is due, rotate now, and collecting a held secret once."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from core.actors import actor_of, ip_of
from tenants import rotation
from tenants.models import ApiKey
from tenants.services import api_key_may


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


class KeyRotationAdminMixin:
    """Mixed into ApiKeyAdmin (a TenantScopedAdmin): every view checks the key's tenant."""

    admin_site: Any
    model: Any

    @admin.display(description="Rotation")
    def rotation_display(self, obj: ApiKey) -> str:
        if obj.pending_secret:
            url = reverse("admin:tenants_apikey_collect", args=[obj.pk])
            return format_html('<a href="{}"><b>new secret to collect</b></a>', url)
        if obj.revoked_at is None and hasattr(obj, "successor") and obj.expires_at:
            return format_html("rotated; works until {}", timezone.localtime(obj.expires_at).strftime("%Y-%m-%d %H:%M"))
        due_at = rotation.api_key_rotation_due_at(obj)
        if due_at is None:
            return "—"
        if due_at <= timezone.now():
            return mark_safe('<b style="color:#c62828">due</b>')
        return f"due {timezone.localtime(due_at):%Y-%m-%d}"

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view  # type: ignore[attr-defined]
        return [
            path("rotation/", view(self.rotation_view), name="tenants_apikey_rotation"),
            path("<int:pk>/collect/", view(self.collect_view), name="tenants_apikey_collect"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "rotation_url": reverse("admin:tenants_apikey_rotation")}
        return super().changelist_view(request, extra_context)  # type: ignore[misc]

    @admin.action(description="Rotate selected API keys now (new secrets shown once)", permissions=["change"])
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        allowed = self.scoped(request, queryset, "change")  # type: ignore[attr-defined]
        refused = queryset.count() - allowed.count()
        if refused:
            self.message_user(  # type: ignore[attr-defined]
                request,
                f"{refused} selected key(s) left alone: developers may only rotate the keys they created.",
                messages.WARNING,
            )
        rotated = []
        for api_key in allowed.select_related("tenant"):
            result = rotation.api_key_rotate(
                api_key=api_key, actor=actor_of(request), acting_user=request.user, ip=ip_of(request)
            )
            if result is not None:
                rotated.append(result)
        if not rotated:
            self.message_user(request, "No active, not yet rotated key was selected.", messages.WARNING)  # type: ignore[attr-defined]
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "rotations": rotated,
            "title": "API keys rotated",
        }
        return _no_store(TemplateResponse(request, "admin/tenants/apikey/rotated.html", context))

    def collect_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        api_key = get_object_or_404(ApiKey.objects.select_related("tenant"), pk=pk)
        # Only who may change this key (a tenant admin, or the developer who owns it) may take a held secret.
        if not api_key_may(request.user, api_key, "change"):
            raise PermissionDenied("Only the key's owner or a tenant admin may collect its secret.")
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "api_key": api_key,
            "title": "Collect a rotated key's secret",
        }
        if request.method == "POST":
            context["secret"] = rotation.api_key_secret_collect(
                api_key=api_key, actor=actor_of(request), acting_user=request.user, ip=ip_of(request)
            )
            context["collected"] = True
        return _no_store(TemplateResponse(request, "admin/tenants/apikey/collect.html", context))

    def rotation_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        if request.method == "POST":
            if not request.user.is_superuser:
                raise PermissionDenied
            report = rotation.secret_rotate(actor=actor_of(request))
            self.message_user(request, f"Rotation done: {report.summary()}.", messages.SUCCESS)  # type: ignore[attr-defined]
            return HttpResponseRedirect(reverse("admin:tenants_apikey_rotation"))
        allowed = self.allowed_tenants(request, "view")  # type: ignore[attr-defined]
        scoped = self.scope  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Secret rotation",
            "due": scoped(rotation.api_keys_rotation_due().select_related("tenant"), allowed),
            "in_grace": scoped(rotation.api_keys_in_grace().select_related("tenant"), allowed),
            "pickup": self.scoped(  # type: ignore[attr-defined]
                request, ApiKey.objects.exclude(pending_secret="").select_related("tenant"), "change"
            ),
            "pending": rotation.secrets_pending() if request.user.is_superuser else None,
            "may_run": request.user.is_superuser,
        }
        return TemplateResponse(request, "admin/tenants/apikey/rotation.html", context)
