"""Admin for model deployments and route groups; their writes go through routing.services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from core.admin_services import AdminWrites, ServiceAdminMixin
from routing import services
from routing.admin.deployment_forms import ModelDeploymentForm
from routing.credentials import secret_values
from routing.models import ModelDeployment, RouteGroup


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(ServiceAdminMixin, admin.ModelAdmin):
    writes = AdminWrites(
        "deployment",
        save=services.deployment_save,
        delete=services.deployment_delete,
        audited=services.DEPLOYMENTS,
    )
    form = ModelDeploymentForm
    list_display = [
        "model_name",
        "litellm_model",
        "api_base",
        "weight",
        "rpm",
        "tpm",
        "credential",
        "enabled",
        "updated_at",
    ]
    list_filter = ["enabled"]
    search_fields = ["model_name", "litellm_model", "api_base"]
    readonly_fields = ["stored_secret_params", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["model_name", "litellm_model", "api_base", "enabled"]}),
        ("litellm params", {"fields": ["extra_params"]}),
        (
            "Credentials (write-only, encrypted at rest)",
            {"fields": ["api_key", "clear_api_key", "stored_secret_params", "secret_params", "clear_secret_params"]},
        ),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="Credential", boolean=True)
    def credential(self, obj: ModelDeployment) -> bool:
        return bool(obj.api_key or obj.secret_params)

    @admin.display(description="Stored secret params")
    def stored_secret_params(self, obj: ModelDeployment) -> str:
        names = sorted(secret_values(obj.secret_params or {})) if obj.pk else []
        return f"{', '.join(names)} (values hidden)" if names else "none"

    @admin.display(description="Weight")
    def weight(self, obj: ModelDeployment) -> Any:
        return obj.extra_params.get("weight", 1)

    @admin.display(description="RPM")
    def rpm(self, obj: ModelDeployment) -> Any:
        return obj.extra_params.get("rpm", "—")

    @admin.display(description="TPM")
    def tpm(self, obj: ModelDeployment) -> Any:
        return obj.extra_params.get("tpm", "—")


@admin.register(RouteGroup)
class RouteGroupAdmin(ServiceAdminMixin, admin.ModelAdmin):
    """A public model's routing policy; its deployments are the enabled ones with that model name."""

    writes = AdminWrites(
        "group", save=services.route_group_save, delete=services.route_group_delete, audited=services.ROUTE_GROUPS
    )

    list_display = [
        "model_name",
        "routing_strategy",
        "num_retries",
        "fallback_list",
        "allowed_fails",
        "cooldown_time",
        "version",
        "updated_at",
    ]
    list_filter = ["routing_strategy"]
    search_fields = ["model_name"]
    readonly_fields = ["version", "updated_at", "deployments"]
    fieldsets = [
        (None, {"fields": ["model_name", "routing_strategy", "deployments"]}),
        (
            "Retries and cooldown",
            {"fields": ["num_retries", "retry_after", "allowed_fails", "fail_window", "cooldown_time"]},
        ),
        ("Fallbacks", {"fields": ["fallbacks", "context_window_fallbacks", "content_policy_fallbacks"]}),
        (None, {"fields": ["version", "updated_at"]}),
    ]

    @admin.display(description="Fallbacks")
    def fallback_list(self, obj: RouteGroup) -> str:
        return ", ".join(obj.fallbacks or ()) or "—"

    @admin.display(description="Deployments")
    def deployments(self, obj: RouteGroup) -> str:
        rows = ModelDeployment.objects.filter(model_name=obj.model_name).order_by("id")
        if not obj.model_name or not rows:
            return "No deployment serves this model name yet."
        return format_html(
            "<table><tr><th>id</th><th>litellm model</th><th>api base</th><th>weight</th><th>rpm</th><th>tpm</th>"
            "<th>$/1M in</th><th>$/1M out</th><th>enabled</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                "<td>{}</td></tr>",
                (
                    (
                        d.pk,
                        d.litellm_model,
                        d.api_base or "—",
                        d.extra_params.get("weight", 1),
                        d.extra_params.get("rpm", "—"),
                        d.extra_params.get("tpm", "—"),
                        _per_million(d.extra_params.get("input_cost_per_token")),
                        _per_million(d.extra_params.get("output_cost_per_token")),
                        "yes" if d.enabled else "no",
                    )
                    for d in rows
                ),
            ),
        )


def _per_million(value: Any) -> str:
    return f"{float(value) * 1e6:g}" if isinstance(value, int | float) else "—"
