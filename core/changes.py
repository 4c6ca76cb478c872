"""The audited-change helper: field values of a model instance as JSON, for an audit event's before/after pair."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import models


def snapshot(instance: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """JSON-safe field values of ``instance`` for an audit before/after pair."""
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        if isinstance(value, models.Model):
            value = value.pk
        elif isinstance(value, (dt.datetime, dt.date)):
            value = value.isoformat()
        values[name] = value
    return values
