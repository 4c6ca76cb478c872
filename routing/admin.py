"""Admin for model deployments and request logs; deployment writes go through routing.services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path

from routing import charts as charts_svg
from routing import reports, services
from routing.models import ModelDeployment, RequestLog
from tenants.admin import actor_of, ip_of
from tenants.models import Tenant
from tenants.scoping import TenantScopedAdmin


class ModelDeploymentForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "size": 60}),
        help_text="Provider credential, encrypted at rest. Leave blank to keep the current one.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored credential.")

    class Meta:
        model = ModelDeployment
        fields = ["model_name", "litellm_model", "api_base", "api_key", "extra_params", "enabled"]

    def clean_litellm_model(self) -> str:
        value = self.cleaned_data["litellm_model"].strip()
        if "/" not in value:
            raise forms.ValidationError("Use litellm's <provider>/<model> form, e.g. openai/gpt-4o-mini.")
        return value

    def clean_extra_params(self) -> Any:
        value = self.cleaned_data.get("extra_params")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Extra params must be a JSON object.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        self.api_key_changed = bool(cleaned.get("api_key")) or bool(cleaned.get("clear_api_key"))
        if not cleaned.get("api_key") and not cleaned.get("clear_api_key") and self.instance.pk:
            cleaned["api_key"] = ModelDeployment.objects.get(pk=self.instance.pk).api_key
        if cleaned.get("clear_api_key"):
            cleaned["api_key"] = ""
        return cleaned


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(admin.ModelAdmin):
    form = ModelDeploymentForm
    list_display = ["model_name", "litellm_model", "api_base", "credential", "enabled", "updated_at"]
    list_filter = ["enabled"]
    search_fields = ["model_name", "litellm_model", "api_base"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(description="Credential", boolean=True)
    def credential(self, obj: ModelDeployment) -> bool:
        return bool(obj.api_key)

    def save_model(self, request: HttpRequest, obj: ModelDeployment, form: Any, change: bool) -> None:
        services.deployment_save(
            deployment=obj, actor=actor_of(request), ip=ip_of(request), api_key_changed=form.api_key_changed
        )

    def delete_model(self, request: HttpRequest, obj: ModelDeployment) -> None:
        services.deployment_delete(deployment=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelDeployment]) -> None:
        for deployment in queryset:
            services.deployment_delete(deployment=deployment, actor=actor_of(request), ip=ip_of(request))


@admin.register(RequestLog)
class RequestLogAdmin(TenantScopedAdmin):
    def get_urls(self) -> list[Any]:
        dashboard = path(
            "usage/<int:tenant_id>/", self.admin_site.admin_view(self.usage_view), name="routing_usage_dashboard"
        )
        return [dashboard, *super().get_urls()]

    def usage_view(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        """A tenant's usage: charts over time, breakdowns by model and key, quota gauges."""
        tenant = get_object_or_404(Tenant, pk=tenant_id)
        allowed = self.allowed_tenants(request, "view")
        if not self.has_view_permission(request) or (allowed is not None and tenant.pk not in allowed):
            raise PermissionDenied("You are not a member of this tenant.")
        days = int(request.GET.get("days", "7")) if request.GET.get("days", "7") in ("1", "2", "7", "30", "90") else 7
        points = reports.usage_series(tenant, days=days)
        labels = [f"{p.start:%H:00}" if days <= 2 else f"{p.start:%m-%d}" for p in points]
        charts = [
            (
                "Requests and errors",
                charts_svg.line_chart(
                    labels,
                    [
                        ("requests", [p.requests for p in points], "#417690"),
                        ("errors", [p.errors for p in points], "#c62828"),
                    ],
                ),
            ),
            ("Tokens", charts_svg.line_chart(labels, [("tokens", [p.tokens for p in points], "#6a1b9a")])),
            ("Spend (USD)", charts_svg.line_chart(labels, [("spend", [float(p.cost) for p in points], "#2e7d32")])),
            (
                "Latency percentiles (ms, bucket upper bound)",
                charts_svg.line_chart(
                    labels,
                    [("p50", [p.p50_ms for p in points], "#417690"), ("p95", [p.p95_ms for p in points], "#ef6c00")],
                    unit="ms",
                ),
            ),
        ]
        gauges = [(gauge, charts_svg.gauge(gauge.used, gauge.limit)) for gauge in reports.quota_gauges(tenant)]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Usage of {tenant.name}",
            "tenant": tenant,
            "days": days,
            "day_choices": (1, 2, 7, 30, 90),
            "charts": charts,
            "totals": {
                "requests": sum(p.requests for p in points),
                "errors": sum(p.errors for p in points),
                "tokens": sum(p.tokens for p in points),
                "cost": sum((p.cost for p in points), Decimal(0)),
            },
            "by_model": reports.usage_breakdown(tenant, days=days, by="model"),
            "by_key": reports.usage_breakdown(tenant, days=days, by="api_key"),
            "gauges": gauges,
        }
        return TemplateResponse(request, "admin/routing/usage_dashboard.html", context)

    list_display = [
        "created_at",
        "request_id",
        "tenant",
        "key_prefix",
        "model_requested",
        "model_served",
        "status_code",
        "stream",
        "total_tokens",
        "cost_usd",
        "latency_ms",
        "ttfb_ms",
        "overhead_ms",
        "client_disconnected",
    ]
    list_filter = ["status_code", "stream", "endpoint", "client_disconnected", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["=request_id", "key_prefix", "model_requested"]
    search_help_text = "A request id (req_…) or key prefix (sk-…) is looked up exactly; other text searches models."

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        # Recognise ids and prefixes so the lookup uses an index instead of scanning every row.
        term = search_term.strip()
        if term.startswith("req_"):
            return queryset.filter(request_id=term), False
        if term.startswith("sk-"):
            return queryset.filter(api_key__prefix=term[:12]), False
        return queryset.filter(model_requested__istartswith=term) if term else queryset, False

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


from routing.ml import admin as ml_admin  # noqa: E402,F401  (registers the ML routing admin)
