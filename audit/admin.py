"""Read-only admin for the audit record: searched, filtered and exported, never edited."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from audit.chain import HASHED_FIELDS, chain_for
from audit.exports import export_archive, export_base_name
from audit.models import AuditChainHead, AuditEvent
from audit.selectors import EventFilters, event_rows
from audit.services import audit_record
from audit.streaming import streaming_download
from core.actors import actor_of, ip_of
from core.read_only import ReadOnlyAdminMixin

CHAIN_LINK = ("chain", "seq", "prev_hash")


class AuditExportForm(forms.Form):
    """The export's filters; ``tenant_allowed`` says which tenant ids this exporter may name."""

    tenant = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, label="Tenant id")
    since = forms.DateTimeField(
        required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, label="Until (exclusive)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    actor = forms.CharField(required=False, max_length=200, help_text="Exact, e.g. user:alice or key:sk-abc")
    action = forms.CharField(
        required=False, max_length=100, help_text="Exact, or a family ending in '.', e.g. api_key."
    )
    outcome = forms.ChoiceField(required=False, choices=[("", "Any"), *AuditEvent.Outcome.choices])
    format = forms.ChoiceField(choices=[("jsonl", "JSON Lines"), ("csv", "CSV")], initial="jsonl")

    def __init__(self, *args: Any, tenant_allowed: Callable[[int], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant_allowed = tenant_allowed

    def clean_tenant(self) -> int | None:
        tenant = self.cleaned_data.get("tenant")
        # One answer for "not yours" and "does not exist": the form must not reveal other tenants.
        if tenant is not None and not self.tenant_allowed(tenant):
            raise forms.ValidationError(f"Tenant {tenant} is not one whose events you may export.")
        return tenant

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'From' must be before 'Until'.")
        return data

    def filters(self) -> EventFilters:
        data = self.cleaned_data
        return EventFilters(
            tenant_id=data.get("tenant"),
            since=data.get("since"),
            until=data.get("until"),
            actor=data.get("actor") or "",
            action=data.get("action") or "",
            outcome=data.get("outcome") or "",
        )


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "target", "outcome", "tenant_id", "ip", "chain", "seq"]
    list_filter = ["outcome", "action"]
    search_fields = ["actor", "action", "target"]
    # What happened, then where it stands in its chain.
    readonly_fields = [*(name for name in HASHED_FIELDS if name not in CHAIN_LINK), *CHAIN_LINK, "hash"]
    show_full_result_count = False
    actions = ["export_selected_jsonl", "export_selected_csv"]

    # The History page of an audited object opens this list on its events (core.admin_services).
    HISTORY_LOOKUPS = frozenset({"target", "target__startswith", "tenant_id", "action__startswith"})

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        return lookup in self.HISTORY_LOOKUPS or super().lookup_allowed(lookup, value, request)

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_auditevent")

    def export_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        """The events this user may export (tenant-scoped admins narrow it)."""
        return self.get_queryset(request)

    def export_tenant_allowed(self, request: HttpRequest, tenant_id: int) -> bool:
        """May this user name ``tenant_id`` in the export's filter? Here: a tenant that has a chain."""
        return AuditChainHead.objects.filter(chain=chain_for(tenant_id)).exists()

    def export_audit_tenants(
        self, request: HttpRequest, filters: EventFilters, covered: QuerySet[AuditEvent] | None = None
    ) -> list[int | None]:
        """The chains (tenant ids; None: the platform) that record an export.

        An export is recorded in the chain of each tenant whose events it covers, as the
        exporter sees them: the filtered tenant, the tenants of the selected events
        (``covered``), or here, for an export of everything, the platform chain.
        """
        if filters.tenant_id is not None:
            return [filters.tenant_id]
        if covered is not None:
            tenants = sorted(set(covered.values_list("tenant_id", flat=True)), key=lambda t: (t is not None, t or 0))
            if tenants:
                return tenants
        return [None]

    def get_urls(self) -> list[URLPattern]:
        export = path("export/", self.admin_site.admin_view(self.export_view), name="audit_auditevent_export")
        return [export, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"has_export_permission": self.has_export_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """The export page: filters, then a streamed ZIP of the data file and its manifest."""
        if not self.has_export_permission(request):
            raise PermissionDenied
        form = AuditExportForm(
            request.GET if "format" in request.GET else None,
            tenant_allowed=lambda tenant_id: self.export_tenant_allowed(request, tenant_id),
        )
        if form.is_bound and form.is_valid():
            return self.export_response(
                request, self.export_queryset(request), form.filters(), form.cleaned_data["format"]
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Export audit events",
            "opts": self.model._meta,
            "form": form,
        }
        return TemplateResponse(request, "admin/audit/auditevent/export.html", context)

    def export_response(
        self,
        request: HttpRequest,
        queryset: QuerySet[AuditEvent],
        filters: EventFilters,
        file_format: str,
        *,
        selected: int | None = None,
        audit_tenants: Sequence[int | None] | None = None,
    ) -> HttpResponseBase:
        # Bound the export by the newest id now: the file is then fixed (rows are immutable)
        # and the export's own audit events, written next, are not part of it.
        up_to_id = AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0
        queryset = filters.apply(queryset).filter(id__lte=up_to_id)
        description = filters.describe()
        if audit_tenants is None:
            audit_tenants = self.export_audit_tenants(request, filters)
        for tenant_id in audit_tenants:
            audit_record(
                actor=actor_of(request),
                action="audit.export",
                target=f"export:{file_format}",
                tenant_id=tenant_id,
                ip=ip_of(request),
                details={"filters": description, "format": file_format, "up_to_id": up_to_id, "selected": selected},
            )
        base_name = export_base_name()
        chunks = export_archive(
            event_rows(queryset), file_format=file_format, base_name=base_name, filters=description, up_to_id=up_to_id
        )
        return streaming_download(request, chunks, filename=f"{base_name}.zip", content_type="application/zip")

    def _export_selected(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent], file_format: str
    ) -> HttpResponseBase:
        ids = list(queryset.values_list("pk", flat=True))
        chosen = self.export_queryset(request).filter(pk__in=ids)
        filters = EventFilters()
        return self.export_response(
            request,
            chosen,
            filters,
            file_format,
            selected=len(ids),
            audit_tenants=self.export_audit_tenants(request, filters, covered=chosen),
        )

    @admin.action(description="Export selected events as JSON Lines (ZIP with manifest)", permissions=["export"])
    def export_selected_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponseBase:
        return self._export_selected(request, queryset, "jsonl")

    @admin.action(description="Export selected events as CSV (ZIP with manifest)", permissions=["export"])
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponseBase:
        return self._export_selected(request, queryset, "csv")
