"""Usage rows as the server records them, and the books side by side: the request logs and the hourly rollups."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from django.db.models import Count, Q, Sum

from routing.models import RequestLog, UsageRollup
from routing.usage import UsageRow
from tests.keys import Issued

SEQUENCE = itertools.count()
HOUR = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


def usage(issued: Issued, **fields: Any) -> UsageRow:
    number = next(SEQUENCE)
    values: dict[str, Any] = {
        "request_id": f"req_rollup_{number}",
        "created_at": HOUR + dt.timedelta(minutes=number % 60),
        "tenant_id": issued.key.tenant_id,
        "api_key_id": issued.key.pk,
        "key_prefix": issued.key.prefix,
        "endpoint": "chat.completions",
        "model_requested": "gpt-4o-mini",
        "deployment_id": None,
        "model_served": "openai/gpt-4o-mini",
        "stream": False,
        "status_code": 200,
        "error_type": "",
        "prompt_tokens": 20,
        "completion_tokens": 5,
        "total_tokens": 25,
        "usage_estimated": False,
        "latency_ms": 12.0,
        "ttfb_ms": None,
        "overhead_ms": 0.5,
        "client_disconnected": False,
        "cost_overrides": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002},
        **fields,
    }
    return UsageRow(**values)


def _totals(rows: Any, model: str, requests: Any, errors: Any) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Requests, errors, prompt and completion tokens and cost per tenant, key and model of ``rows``."""
    sums = rows.values("tenant_id", "api_key_id", model).annotate(
        n_requests=requests,
        n_errors=errors,
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_usd"),
    )
    return {
        (row["tenant_id"], row["api_key_id"], row[model]): tuple(
            row[name] for name in ("n_requests", "n_errors", "prompt", "completion", "cost")
        )
        for row in sums
    }


def books() -> tuple[dict[tuple[Any, ...], tuple[Any, ...]], dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Totals per tenant, key and model: from the request logs, and from the hourly rollups."""
    logs = _totals(RequestLog.objects, "model_requested", Count("id"), Count("id", filter=Q(status_code__gte=400)))
    rollups = _totals(UsageRollup.objects, "model", Sum("requests"), Sum("errors"))
    return logs, rollups
