"""Read-only admin for the audit record: searched, filtered and exported, never edited."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from audit.exports import export_archive, export_base_name
from audit.models import AuditEvent
from audit.selectors import EventFilters, event_rows
from audit.services import audit_record
from audit.streaming import streaming_download


class AuditExportForm(forms.Form):
    tenant = forms.IntegerField(required=False, min_value=1, label="Tenant id")
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
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "target", "outcome", "tenant_id", "ip", "chain", "seq"]
    list_filter = ["outcome", "action"]
    search_fields = ["actor", "action", "target"]
    readonly_fields = [
        "created_at",
        "actor",
        "tenant_id",
        "action",
        "target",
        "outcome",
        "ip",
        "details",
        "chain",
        "seq",
        "prev_hash",
        "hash",
    ]
    show_full_result_count = False
    actions = ["export_selected_jsonl", "export_selected_csv"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_auditevent")

    def export_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        """The events this user may export (tenant-scoped admins narrow it)."""
        return self.get_queryset(request)

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
        form = AuditExportForm(request.GET if "format" in request.GET else None)
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
    ) -> HttpResponseBase:
        # Bound the export by the newest id now: the file is then fixed (rows are immutable)
        # and the export's own audit event, written next, is not part of it.
        up_to_id = AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0
        queryset = filters.apply(queryset).filter(id__lte=up_to_id)
        description = filters.describe()
        audit_record(
            actor=f"user:{request.user.get_username()}",
            action="audit.export",
            target=f"export:{file_format}",
            tenant_id=filters.tenant_id,
            ip=request.META.get("REMOTE_ADDR"),
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
        return self.export_response(request, chosen, EventFilters(), file_format, selected=len(ids))

    @admin.action(description="Export selected events as JSON Lines (ZIP with manifest)", permissions=["export"])
    def export_selected_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponseBase:
        return self._export_selected(request, queryset, "jsonl")

    @admin.action(description="Export selected events as CSV (ZIP with manifest)", permissions=["export"])
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponseBase:
        return self._export_selected(request, queryset, "csv")
