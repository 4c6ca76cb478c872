"""Admin for model deployments and request logs; deployment writes go through routing.services."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join

from core.actors import actor_of, ip_of
from core.errors import InvalidRequest
from core.read_only import ReadOnlyAdminMixin
from routing import charts as charts_svg
from routing import reports, services
from routing.credentials import params_merge, params_split, secret_values
from routing.models import ModelDeployment, RequestLog, RouteGroup, url_credentials, url_without_credentials
from tenants.admin_forms import ClearSecretField, WriteOnlySecretField, WriteOnlySecretForm
from tenants.models import Tenant
from tenants.request_input import json_body_parse
from tenants.scoping import TenantScopedAdmin


def _json_parse(text: str) -> Any:
    """JSON typed into the admin, read as the API reads bodies (depth limit, no lone surrogates)."""
    try:
        document = json_body_parse(text.encode("utf-8", "surrogatepass"))
    except InvalidRequest as exc:
        # The reader's messages speak of a request body; here it is what was typed into a field.
        message = "Enter valid JSON." if exc.message.startswith("We could not parse") else exc.message
        raise forms.ValidationError(message.replace("JSON body", "JSON"), code="invalid") from None
    return document


class JSONTextField(forms.JSONField):
    """The admin's JSON textarea: malformed, too deep or unencodable JSON is a form error, never a server error."""

    def to_python(self, value: Any) -> Any:
        if self.disabled or not isinstance(value, str):
            return super().to_python(value)
        if value.strip() in ("", "null"):
            return None
        return _json_parse(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or not isinstance(data, str):
            return super().bound_data(data, initial)
        try:
            return _json_parse(data)
        except forms.ValidationError:
            return InvalidJSONInput(data)


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never shows a value: what is stored, or was typed, is not in the page."""

    def format_value(self, value: Any) -> None:
        return None


class SecretParamsField(forms.Field):
    """Credential params to set or remove: a JSON object merged into the stored ones (null removes one)."""

    widget = WriteOnlyTextarea(attrs={"rows": 4, "cols": 60, "autocomplete": "off", "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "Credential litellm_params, encrypted at rest and never shown again: a JSON object such as "
            '{"aws_secret_access_key": "…", "extra_headers": {"api-key": "…"}}. The names given replace the '
            "stored ones, null removes one, the others are kept. Leave blank to keep them all.",
        )
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if not value or not str(value).strip():
            return {}
        document = _json_parse(str(value))
        if not isinstance(document, dict):
            raise forms.ValidationError("Secret params must be a JSON object of names and values.", code="invalid")
        return document

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data and str(data).strip())


class ModelDeploymentForm(WriteOnlySecretForm):
    api_key = WriteOnlySecretField(help_text="Provider credential, encrypted at rest.")
    clear_api_key = ClearSecretField()
    extra_params = JSONTextField(
        required=False,
        help_text="Other litellm_params, as a JSON object. Credentials go in Secret params, not here.",
    )
    secret_params = SecretParamsField()
    clear_secret_params = ClearSecretField(help_text="Remove every stored secret param.")

    class Meta:
        model = ModelDeployment
        fields = ["model_name", "litellm_model", "api_base", "api_key", "extra_params", "secret_params", "enabled"]

    def clean_litellm_model(self) -> str:
        value = self.cleaned_data["litellm_model"].strip()
        if "/" not in value:
            raise forms.ValidationError("Use litellm's <provider>/<model> form, e.g. openai/gpt-4o-mini.")
        return value

    def _show_instead(self, name: str, text: str) -> None:
        """Re-render field ``name`` with ``text`` instead of what was typed (which held a credential)."""
        data = self.data.copy() if isinstance(self.data, QueryDict) else dict(self.data)
        data[self.add_prefix(name)] = text
        self.data = data

    def clean_api_base(self) -> str:
        value = self.cleaned_data.get("api_base") or ""
        found = url_credentials(value)
        if found:
            self._show_instead("api_base", url_without_credentials(value))
            raise forms.ValidationError(
                f"The URL carries a credential ({found}); it was taken out and nothing was saved. Put it in "
                'API key, or as a header in Secret params (e.g. {"extra_headers": {"Authorization": "…"}}).',
                code="credential",
            )
        return value

    def clean_extra_params(self) -> Any:
        value = self.cleaned_data.get("extra_params")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Extra params must be a JSON object.")
        plain, secret = params_split(value)
        if secret:
            # Refused rather than moved: this field is plain text, shown again with any form error, so a
            # credential typed here would be rendered back (and silently dropped if the form then failed).
            # The page shows the field without them, and says where they go.
            self._show_instead("extra_params", json.dumps(plain, indent=2))
            names = sorted(secret_values(secret))
            where = "Secret params" if names != ["api_key"] else "API key"
            raise forms.ValidationError(
                f"{', '.join(names)}: credentials are not kept in plain text. Enter them in {where} "
                "(write-only, encrypted at rest); they were taken out of this field and nothing was saved.",
                code="credential",
            )
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        changes = cleaned.get("secret_params") or {}
        # The instance is the stored row until the form is saved (construct_instance runs after clean).
        stored = {} if cleaned.get("clear_secret_params") else self.instance.secret_params or {}
        merged = params_merge(stored, changes)
        cleaned["secret_params"] = merged
        # construct_instance skips a defaulted field whose input is missing and whose value is empty,
        # which would make "clear" a no-op; set it here so the merged value always applies.
        self.instance.secret_params = merged
        return cleaned


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(admin.ModelAdmin):
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

    def save_model(self, request: HttpRequest, obj: ModelDeployment, form: Any, change: bool) -> None:
        services.deployment_save(deployment=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: ModelDeployment) -> None:
        services.deployment_delete(deployment=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelDeployment]) -> None:
        for deployment in queryset:
            services.deployment_delete(deployment=deployment, actor=actor_of(request), ip=ip_of(request))


@admin.register(RouteGroup)
class RouteGroupAdmin(admin.ModelAdmin):
    """A public model's routing policy; its deployments are the enabled ones with that model name."""

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

    def save_model(self, request: HttpRequest, obj: RouteGroup, form: Any, change: bool) -> None:
        services.route_group_save(group=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: RouteGroup) -> None:
        services.route_group_delete(group=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RouteGroup]) -> None:
        for group in queryset:
            services.route_group_delete(group=group, actor=actor_of(request), ip=ip_of(request))


def _per_million(value: Any) -> str:
    return f"{float(value) * 1e6:g}" if isinstance(value, int | float) else "—"


def decision_html(decision: dict[str, Any] | None) -> str:
    """A routing decision record as a readable block: policy, candidates, attempts, fallbacks."""
    if not decision:
        return "No routing decision was recorded for this request (it was refused before routing)."
    summary = format_html(
        "<p>Group <b>{}</b>, strategy <b>{}</b> (policy version {}; state {}), decided in {} ms. "
        "Chosen deployment <b>{}</b>; served by <b>{}</b> of <b>{}</b>.{}</p>",
        decision.get("group"),
        decision.get("strategy"),
        decision.get("policy_version"),
        "shared (Redis)" if decision.get("shared_state") else "in process",
        decision.get("decision_ms"),
        decision.get("chosen") if decision.get("chosen") is not None else "none",
        decision.get("served") if decision.get("served") is not None else "nobody",
        decision.get("served_model") or "—",
        format_html(" Prompt SHA-256 <code>{}</code>.", decision["prompt_sha256"])
        if decision.get("prompt_sha256")
        else "",
    )
    candidates = format_html(
        "<table><caption>Candidates</caption><tr><th>deployment</th><th>model</th><th>score</th>"
        "<th>excluded</th></tr>{}</table>",
        format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (c.get("id"), c.get("model"), c.get("score", "—"), c.get("excluded", ""))
                for c in decision.get("candidates", ())
            ),
        ),
    )
    attempts = (
        format_html(
            "<table><caption>Failed attempts</caption><tr><th>deployment</th><th>group</th><th>status</th>"
            "<th>error</th><th>ms</th><th>backoff ms</th><th>cooled down</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        a.get("deployment"),
                        a.get("group"),
                        a.get("status"),
                        a.get("error"),
                        a.get("ms"),
                        a.get("backoff_ms", ""),
                        f"{a['cooldown']} s" if a.get("cooldown") else "",
                    )
                    for a in decision.get("attempts", ())
                ),
            ),
        )
        if decision.get("attempts")
        else format_html("<p>{}</p>", "No failed attempts.")
    )
    fallbacks = format_html(
        "<p>Fallbacks: {}</p>",
        ", ".join(
            f"{f.get('model')} ({f.get('reason')}{'; skipped: ' + f['skipped'] if f.get('skipped') else ''})"
            for f in decision.get("fallbacks", ())
        )
        or "none",
    )
    smart = (
        format_html("<p>ML routing: <code>{}</code></p>", json.dumps(decision["ml"], sort_keys=True))
        if decision.get("ml")
        else ""
    )
    return format_html('<div class="route-decision">{}{}{}{}{}</div>', summary, candidates, attempts, fallbacks, smart)


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdminMixin, TenantScopedAdmin):
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
        "cut_after_bytes",
    ]
    list_filter = [
        "status_code",
        "stream",
        "endpoint",
        "client_disconnected",
        ("tenant", admin.RelatedOnlyFieldListFilter),
    ]
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
    readonly_fields = ["routing_decision"]
    exclude = ["route_decision"]

    @admin.display(description="Routing decision")
    def routing_decision(self, obj: RequestLog) -> str:
        return decision_html(obj.route_decision)


from routing.ml import admin as ml_admin  # noqa: E402,F401  (registers the ML routing admin)
