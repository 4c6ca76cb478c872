"""URL routes for Django's view stack: admin and the django-ninja API."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView

from llm_platform import ops
from llm_platform.api import api


@csrf_exempt  # API clients carry no CSRF token; they must get this JSON 404, not a CSRF page
def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "message": f"Unknown API route: {request.method} {request.path}",
                "type": "invalid_request_error",
                "code": "unknown_url",
                "param": None,
            }
        },
        status=404,
    )


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Readiness is ``/readyz`` (llm_platform.ops)."""
    return JsonResponse({"status": "ok"})


admin.site.site_header = "LLM platform"
admin.site.site_title = "LLM platform admin"
admin.site.index_title = "Tenants, keys, models and the audit trail"
admin.site.site_url = "/v1/docs"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz),
    path("readyz", ops.readyz),
    path("metrics", ops.metrics_view),
    path("admin/", admin.site.urls),
    path("v1/", api.urls),
    re_path(r"^v1/(?P<rest>.*)$", api_not_found),
]
