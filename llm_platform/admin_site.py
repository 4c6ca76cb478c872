"""The admin site: Django's, refusing URL input that no field can hold with a 400 page before any view or query runs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib.admin import AdminSite, ModelAdmin
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.base import ModelBase
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse

from tenants.admin_forms import JsonWithoutNulField

View = TypeVar("View", bound=Callable[..., HttpResponseBase])
_INTEGER = re.compile(r"[+-]?\d+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _out_of_range(value: str) -> bool:
    # More than 19 digits never fits (and int() refuses very long strings outright).
    digits = value.lstrip("+-")
    return len(digits) > 19 or not _INT64_MIN <= int(value) <= _INT64_MAX


def admin_input_problem(values: Iterable[Any]) -> str | None:
    """Why these URL values cannot be used (NUL, or an integer beyond 64 bits), or None.

    PostgreSQL refuses NUL in text and SQLite integers beyond 64 bits, both with an error
    that would surface as a 500 from deep inside Django's admin (list filters, object ids).
    """
    for value in values:
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            return "The address holds a NUL character, which no field can hold."
        if _INTEGER.fullmatch(value) and _out_of_range(value):
            return f"The number {value[:40]}{'…' if len(value) > 40 else ''} is too large for any id or field here."
    return None


def selection_problem(model_admin: ModelAdmin, request: HttpRequest) -> str | None:
    """Why the ids an action was asked to run on cannot be ids of this model, or None."""
    pk = model_admin.model._meta.pk
    assert pk is not None
    for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
        problem = admin_input_problem([value])
        if problem:
            return problem
        try:
            valid = pk.to_python(value) not in (None, "")
        except (ValidationError, ValueError, TypeError):
            valid = False
        if not valid:
            return f"'{value[:40]}' is not the id of any {model_admin.model._meta.verbose_name}."
    return None


class PlatformAdminSite(AdminSite):
    """Every admin view (the models', the custom ones, the site's) first checks the input from its URL,
    and every JSON field a registered admin edits refuses what PostgreSQL cannot store."""

    def register(self, model_or_iterable: Any, admin_class: Any = None, **options: Any) -> None:
        super().register(model_or_iterable, admin_class, **options)
        for model in [model_or_iterable] if isinstance(model_or_iterable, ModelBase) else model_or_iterable:
            model_admin = self._registry[cast(type[models.Model], model)]
            overrides = dict(model_admin.formfield_overrides)
            overrides[models.JSONField] = {**overrides.get(models.JSONField, {}), "form_class": JsonWithoutNulField}
            model_admin.formfield_overrides = overrides  # type: ignore[misc]  # ModelAdmin.__init__ sets it per instance too

    def admin_view(self, view: View, cacheable: bool = False) -> View:
        protected = super().admin_view(view, cacheable)
        model_admin = getattr(view, "__self__", None)

        @wraps(protected)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            query = [item for key, values in request.GET.lists() for item in (key, *values)]
            problem = admin_input_problem([*args, *kwargs.values(), *query])
            if problem is None and isinstance(model_admin, ModelAdmin) and request.method == "POST":
                problem = selection_problem(model_admin, request)
            if problem is not None:
                return self.bad_request(request, problem)
            return protected(request, *args, **kwargs)

        return cast(View, checked)

    def bad_request(self, request: HttpRequest, problem: str) -> HttpResponse:
        context = {**self.each_context(request), "title": "Bad request", "problem": problem}
        return TemplateResponse(request, "admin/bad_request.html", context, status=400)


class PlatformAdminConfig(AdminConfig):
    """django.contrib.admin with the platform's site as ``admin.site``."""

    default_site = "llm_platform.admin_site.PlatformAdminSite"
