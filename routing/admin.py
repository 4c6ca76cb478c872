"""Admin for model deployments and request logs; deployment writes go through routing.services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from routing import services
from routing.models import ModelDeployment, RequestLog
from tenants.admin import actor_of, ip_of
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
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
