"""Admin for smart groups, router artifacts (with their evaluation chart), samples and feedback."""

from __future__ import annotations

from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.actors import actor_of, ip_of
from core.admin_services import AdminWrites, ServiceAdminMixin
from core.read_only import ReadOnlyAdminMixin
from routing import charts
from routing.ml import services
from routing.ml.models import (
    RequestFeedback,
    RouterArtifact,
    RouterSample,
    SmartGroup,
    SmartGroupTenantShare,
    TenantRoutingData,
)
from routing.ml.routers import LEARNED_KINDS
from tenants.scoping import TenantScopedAdmin


def evaluation_chart(metrics: dict[str, Any]) -> SafeString:
    """Quality recovered and cost saved (in %) against the share of calls sent to the strong model."""
    curve = metrics.get("curve") or []
    if not curve:
        return format_html("<p>{}</p>", "No evaluation recorded.")
    labels = [f"{point['target_share']:.0%}" for point in curve]
    svg = charts.line_chart(
        labels,
        [
            ("quality recovered", [100 * point["quality_recovered"] for point in curve], "#417690"),
            ("cost saved", [100 * point["cost_saved"] for point in curve], "#2e7d32"),
            ("random router (quality)", [100 * point["strong_share"] for point in curve], "#9e9e9e"),
        ],
        unit="%",
    )
    baselines = metrics.get("baselines", {})
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>${}</td></tr>",
        (
            (name.replace("_", " "), f"{values['quality']:.3f}", f"{values['cost']:.4f}")
            for name, values in baselines.items()
            if isinstance(values, dict)
        ),
    )
    return format_html(
        '<div class="router-eval">{}<p>x: share of calls to the strong model; blue: quality recovered '
        "(RouteLLM's PGR), green: cost saved vs always-strong, grey: a random router. APGR {} on {} "
        "held-out prompts{}.</p><table><tr><th>Baseline</th><th>Mean quality</th><th>Cost</th></tr>{}</table></div>",
        svg,
        f"{metrics.get('apgr', 0.0):.3f}",
        metrics.get("rows", 0),
        " (in-sample: too little data to hold out)" if metrics.get("in_sample") else "",
        rows,
    )


class TenantShareInline(admin.TabularInline):
    model = SmartGroupTenantShare
    extra = 0
    fields = ["tenant", "strong_share"]
    autocomplete_fields = ["tenant"]


class SmartGroupForm(forms.ModelForm):
    class Meta:
        model = SmartGroup
        fields = list(services.GROUP_AUDIT_FIELDS)

    def clean_rules(self) -> Any:
        value = self.cleaned_data.get("rules") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Rules must be a JSON object.")
        return value


@admin.register(SmartGroup)
class SmartGroupAdmin(ServiceAdminMixin, admin.ModelAdmin):
    writes = AdminWrites(
        "group", save=services.smart_group_save, delete=services.smart_group_delete, audited=services.SMART_GROUPS
    )
    form = SmartGroupForm
    inlines = [TenantShareInline]
    list_display = ["name", "strong_model", "weak_model", "router_kind", "strong_share", "mode", "active", "ab"]
    list_filter = ["router_kind", "mode", "enabled"]
    search_fields = ["name", "strong_model", "weak_model"]
    readonly_fields = ["active_artifact", "shadow_artifact", "ab_artifact", "ab_percent", "active_evaluation"]
    actions = ["train_router", "rollback_router", "stop_shadow", "stop_ab"]

    @admin.display(description="Active router")
    def active(self, obj: SmartGroup) -> str:
        return obj.active_artifact.label if obj.active_artifact else "—"

    @admin.display(description="A/B")
    def ab(self, obj: SmartGroup) -> str:
        return f"{obj.ab_artifact.label} {obj.ab_percent}%" if obj.ab_artifact and obj.ab_percent else "—"

    @admin.display(description="Evaluation of the active router")
    def active_evaluation(self, obj: SmartGroup) -> SafeString:
        if obj.active_artifact is None:
            return format_html("<p>{}</p>", "No active router.")
        return evaluation_chart(obj.active_artifact.metrics)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # Tenant shares go through the service so each change is audited.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for inline_form in formset.forms:
            if not inline_form.has_changed() and not formset._should_delete_form(inline_form):
                continue
            data = inline_form.cleaned_data
            if not data or not data.get("tenant"):
                continue
            share = None if formset._should_delete_form(inline_form) else data["strong_share"]
            services.tenant_share_save(
                group=form.instance,
                tenant_id=data["tenant"].pk,
                strong_share=share,
                actor=actor_of(request),
                ip=ip_of(request),
            )

    @admin.action(description="Train a new router (in the background) on the table and this group's traffic")
    def train_router(self, request: HttpRequest, queryset: QuerySet[SmartGroup]) -> None:
        from routing.ml.tasks import router_train_task

        for group in queryset:
            kind = group.router_kind if group.router_kind in LEARNED_KINDS else "knn"
            transaction.on_commit(partial(router_train_task.delay, group.pk, actor=actor_of(request), kind=kind))
        self.message_user(
            request, f"Training queued for {queryset.count()} group(s); new routers arrive as candidates."
        )

    @admin.action(description="Roll back to the previously active router")
    def rollback_router(self, request: HttpRequest, queryset: QuerySet[SmartGroup]) -> None:
        for group in queryset:
            try:
                artifact = services.router_rollback(group=group, actor=actor_of(request))
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"{group.name}: {artifact.label} is active again.")

    @admin.action(description="Stop shadowing")
    def stop_shadow(self, request: HttpRequest, queryset: QuerySet[SmartGroup]) -> None:
        for group in queryset:
            services.router_shadow_set(group=group, artifact=None, actor=actor_of(request))

    @admin.action(description="Stop the A/B split")
    def stop_ab(self, request: HttpRequest, queryset: QuerySet[SmartGroup]) -> None:
        for group in queryset:
            services.router_ab_set(group=group, artifact=None, percent=0, actor=actor_of(request))


@admin.register(RouterArtifact)
class RouterArtifactAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "backend", "trained_rows", "traffic_rows", "apgr", "created_at", "promoted_at"]
    list_filter = ["status", "kind", "group"]
    list_select_related = ["group"]
    readonly_fields = [
        "group",
        "version",
        "kind",
        "backend",
        "params",
        "sha256",
        "status",
        "trained_rows",
        "traffic_rows",
        "created_by",
        "created_at",
        "promoted_at",
        "evaluation",
    ]
    fields = readonly_fields  # type: ignore[assignment]  # the stubs widen fields beyond list[str]
    actions = ["promote", "shadow", "ab_10", "ab_50"]

    @admin.display(description="APGR")
    def apgr(self, obj: RouterArtifact) -> str:
        return f"{obj.metrics.get('apgr', 0):.3f}"

    @admin.display(description="Offline evaluation")
    def evaluation(self, obj: RouterArtifact) -> SafeString:
        return evaluation_chart(obj.metrics)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RouterArtifact]:
        return super().get_queryset(request).defer("blob")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def _one(self, request: HttpRequest, queryset: QuerySet[RouterArtifact]) -> RouterArtifact | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one router.", messages.ERROR)
            return None
        return queryset.get()

    @admin.action(description="Promote: make the selected router active")
    def promote(self, request: HttpRequest, queryset: QuerySet[RouterArtifact]) -> None:
        if artifact := self._one(request, queryset):
            services.router_promote(artifact=artifact, actor=actor_of(request))
            self.message_user(request, f"{artifact} is now active.")

    @admin.action(description="Shadow: evaluate the selected router on live traffic without acting")
    def shadow(self, request: HttpRequest, queryset: QuerySet[RouterArtifact]) -> None:
        if artifact := self._one(request, queryset):
            services.router_shadow_set(group=artifact.group, artifact=artifact, actor=actor_of(request))
            self.message_user(request, f"{artifact} now runs in shadow.")

    def _ab(self, request: HttpRequest, queryset: QuerySet[RouterArtifact], percent: int) -> None:
        if artifact := self._one(request, queryset):
            services.router_ab_set(group=artifact.group, artifact=artifact, percent=percent, actor=actor_of(request))
            self.message_user(request, f"{artifact} now serves {percent}% of requests (arm B).")

    @admin.action(description="A/B: serve 10%% of requests with the selected router")
    def ab_10(self, request: HttpRequest, queryset: QuerySet[RouterArtifact]) -> None:
        self._ab(request, queryset, 10)

    @admin.action(description="A/B: serve 50%% of requests with the selected router")
    def ab_50(self, request: HttpRequest, queryset: QuerySet[RouterArtifact]) -> None:
        self._ab(request, queryset, 50)


@admin.register(RouterSample)
class RouterSampleAdmin(ReadOnlyAdminMixin, TenantScopedAdmin):
    list_display = [
        "created_at",
        "request_id",
        "tenant",
        "group",
        "router",
        "arm",
        "score",
        "chosen_model",
        "served_model",
    ]
    list_filter = ["group", "router", "arm", "shadow"]
    list_select_related = ["tenant", "group"]
    search_fields = ["=request_id"]
    show_full_result_count = False


class FeedbackForm(forms.ModelForm):
    class Meta:
        model = RequestFeedback
        fields = ["request_id", "score", "comment"]


@admin.register(RequestFeedback)
class RequestFeedbackAdmin(TenantScopedAdmin):
    """Operators record a quality score for any request of their tenants (it trains the routers)."""

    form = FeedbackForm
    list_display = ["created_at", "request_id", "tenant", "model_requested", "model_served", "score", "source", "actor"]
    list_filter = ["source", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["=request_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or bool(self.allowed_tenants(request, "change"))

    def save_model(self, request: HttpRequest, obj: RequestFeedback, form: Any, change: bool) -> None:
        try:
            saved = services.feedback_record(
                request_id=obj.request_id,
                score=obj.score,
                comment=obj.comment,
                actor=actor_of(request),
                source=RequestFeedback.Source.ADMIN,
                tenant_ids=self.allowed_tenants(request, "change"),
                ip=ip_of(request),
            )
        except services.FeedbackTargetMissing:
            raise PermissionDenied(f"No request {obj.request_id} in your tenants.") from None
        obj.pk = saved.pk


@admin.register(TenantRoutingData)
class TenantRoutingDataAdmin(TenantScopedAdmin):
    list_display = ["tenant", "keep_prompt_text", "updated_at"]
    list_select_related = ["tenant"]
    fields = ["tenant", "keep_prompt_text"]

    def save_model(self, request: HttpRequest, obj: TenantRoutingData, form: Any, change: bool) -> None:
        services.tenant_routing_data_save(
            tenant_id=obj.tenant_id, keep_prompt_text=obj.keep_prompt_text, actor=actor_of(request), ip=ip_of(request)
        )
        obj.pk = TenantRoutingData.objects.get(tenant_id=obj.tenant_id).pk
