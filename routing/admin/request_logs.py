"""Admin for request logs (read-only, with each routing decision) and a tenant's usage dashboard."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join

from core.read_only import ReadOnlyAdminMixin
from routing import charts as charts_svg
from routing import reports
from routing.models import RequestLog
from tenants.models import Tenant
from tenants.scoping import TenantScopedAdmin


def _answer(status_code: int | None, error_type: str) -> str:
    if not status_code:
        return "no answer recorded"
    return f"HTTP {status_code}, {error_type}" if error_type else f"HTTP {status_code}"


def _outcome(decision: dict[str, Any], status_code: int | None, error_type: str) -> str:
    """What became of the request, in words that fit each outcome."""
    if decision.get("served") is not None:
        return format_html(
            "Served by deployment <b>{}</b> (<b>{}</b>).",
            decision["served"],
            decision.get("served_model") or "model not recorded",
        )
    answer = _answer(status_code, error_type)
    if decision.get("attempts"):
        return format_html("No deployment answered ({}): every attempt failed, as listed below.", answer)
    if decision.get("chosen") is None:
        return format_html("No deployment could take it ({}): none of the candidates below was available.", answer)
    return format_html("Routed to deployment <b>{}</b> but not sent ({}).", decision["chosen"], answer)


def decision_html(decision: dict[str, Any] | None, *, status_code: int | None = None, error_type: str = "") -> str:
    """A routing decision record as a readable block: the outcome, policy, candidates, attempts, fallbacks."""
    if not decision:
        return (
            f"No routing decision was recorded for this request ({_answer(status_code, error_type)}): "
            "it was answered before routing (for example refused by authentication, validation or a quota)."
        )
    summary = format_html(
        "<p>{} Group <b>{}</b>, strategy <b>{}</b> (policy version {}; state {}), decided in {} ms.{}</p>",
        _outcome(decision, status_code, error_type),
        decision.get("group"),
        decision.get("strategy"),
        decision.get("policy_version"),
        "shared (Redis)" if decision.get("shared_state") else "in process",
        decision.get("decision_ms"),
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
        return decision_html(obj.route_decision, status_code=obj.status_code, error_type=obj.error_type)
