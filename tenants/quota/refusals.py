"""How a quota refusal reads: the 429 per limit (its ``type``, ``code`` and message) and OpenAI's reset durations."""

from __future__ import annotations

import math
import time

from core.errors import RateLimited
from tenants.quota.checks import MICROS, Check

# kind of check -> (the refusal's type, its code, the limit's unit in messages and gauges)
REFUSALS = {
    "requests": ("requests", "rpm_limit_exceeded", "requests per minute"),
    "tokens": ("tokens", "tpm_limit_exceeded", "tokens per minute"),
    "input_tokens": ("tokens", "input_tpm_limit_exceeded", "input tokens per minute"),
    "output_tokens": ("tokens", "output_tpm_limit_exceeded", "output tokens per minute"),
    "parallel": ("requests", "max_parallel_requests_exceeded", "concurrent requests"),
    "budget": ("budget", "budget_exceeded", "USD"),
    "tool_calls": ("requests", "tool_rpm_limit_exceeded", "tool calls per minute"),
}


class QuotaExceeded(RateLimited):
    """429 whose ``type`` says which family of limit and ``code`` which limit."""

    def __init__(self, check: Check, current: int, headers: dict[str, str]) -> None:
        kind, code, unit = REFUSALS[check.kind]
        scope = f"{check.rule.label}" + (f" for model '{check.rule.model}'" if check.rule.model else "")
        if check.kind == "budget":
            spent, limit = current / MICROS, check.limit / MICROS
            period = "today" if check.rule.budget_duration == "1d" else "this month"
            message = f"Budget exceeded for {scope}: ${spent:.4f} of ${limit:.2f} spent {period}."
        else:
            message = (
                f"Rate limit reached for {scope}: {check.limit} {unit}; "
                f"used {current}, this request needs {check.amount}."
            )
        super().__init__(message, code=code, headers=headers)
        self.type = kind


def retry_after(check: Check) -> str:
    """Whole seconds until the refusing limit's window ends (at least one), for ``Retry-After``."""
    return str(max(1, math.ceil(check.reset_at - time.time())) if check.reset_at else 1)


def reset_text(seconds: float) -> str:
    """OpenAI's duration style: 450ms, 17s, 6m0s, 3h2m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
