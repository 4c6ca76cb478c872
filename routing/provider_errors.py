"""What a provider's failure becomes: the client's error (status, code, cleaned message) and the log line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import urlsplit

from core.errors import InvalidRequest, PlatformError, RateLimited, UpstreamError
from routing.selectors import DeploymentTarget

# Operators find provider failures under this logger's name (docs/routing.md).
logger = logging.getLogger("routing.upstream")


def _error_message(body: bytes) -> str:
    """The provider's own explanation, whole (for the server log; clients get ``provider_message_clean``)."""
    try:
        data = json.loads(body)
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:2000]
        return str(error)[:2000]
    except (ValueError, AttributeError):
        return body[:2000].decode("utf-8", "replace") or "no body"


# What a provider's error text may carry that identifies our credentials, accounts or hosts.
# Each is replaced, never the whole message: "max_tokens is too large" or a context-window
# explanation is what lets a client fix its request.
_REDACTIONS = (
    (re.compile(r"\bBearer\s+\S+", re.IGNORECASE), "Bearer [redacted]"),
    (
        re.compile(r"\b((?:api[_-]?key|key|token|access_token|secret|password|sig|signature)=)[^&\s'\"]+", re.I),
        r"\1[redacted]",
    ),
    (re.compile(r"https?://[^\s'\"<>]+", re.IGNORECASE), "[url]"),
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{8,}"), "[redacted key]"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b"), "[redacted key]"),
    (re.compile(r"\bAIza[A-Za-z0-9_\-]{20,}"), "[redacted key]"),
    (re.compile(r"\b(?:gh[pousr]|xox[abpr]|glpat)[_-][A-Za-z0-9_\-]{10,}"), "[redacted key]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), "[redacted token]"),
    (re.compile(r"\b(?:org|proj|user|acct)[-_](?=[A-Za-z]{0,64}\d)[A-Za-z0-9]{8,}\b"), "[redacted account]"),
    (
        re.compile(r"\b(?:req|request|trace|chatcmpl|resp)[-_](?=[A-Za-z]{0,64}\d)[A-Za-z0-9]{8,}\b", re.IGNORECASE),
        "[redacted id]",
    ),
    (
        re.compile(r"\b((?:x-)?(?:request|trace|correlation|apim-request)[ _-]?id\b[\s:=#'\"]*)[\w\-]{6,}", re.I),
        r"\1[redacted]",
    ),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "[redacted id]"),
    (re.compile(r"\b[0-9a-fA-F]{24,}\b"), "[redacted]"),
    # Long runs of base64/url-safe characters mixing letters and digits: tokens, signatures.
    (
        re.compile(r"(?<![\w/+=-])(?=[A-Za-z0-9+/_\-]*\d)(?=[A-Za-z0-9+/_\-]*[A-Za-z])[A-Za-z0-9+/_\-]{32,}={0,2}"),
        "[redacted]",
    ),
)
PUBLIC_MESSAGE_CHARS = 500


def provider_message_clean(target: DeploymentTarget, message: str) -> str:
    """A provider's error text with our internals taken out, for the client.

    The deployment's own secret, its provider-side model names and its host are replaced
    first (by exact text, whatever they look like), then anything shaped like a key, an
    account or request id, or a URL; what remains is the provider's explanation.
    """
    text = message
    if target.api_key and len(target.api_key) >= 4:
        text = text.replace(target.api_key, "[redacted key]")
    host = urlsplit(target.api_base).hostname if target.api_base else None
    for internal in sorted(
        {target.litellm_model, target.upstream_model, target.api_base, host or ""}, key=len, reverse=True
    ):
        if internal and internal != target.model_name and len(internal) >= 3:
            text = text.replace(internal, "[provider]" if internal in (target.api_base, host) else target.model_name)
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    if len(text) > PUBLIC_MESSAGE_CHARS:
        text = text[: PUBLIC_MESSAGE_CHARS - 1] + "…"
    return text


def provider_failure_log(target: DeploymentTarget, what: str, message: str) -> None:
    """The provider's message whole, for operators: the client's copy is cleaned."""
    logger.warning(
        "provider error on deployment %s (%s, model %s): %s: %s",
        target.id,
        target.litellm_model,
        target.model_name,
        what,
        message,
    )


_CONTEXT_WINDOW_HINTS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
)
_CONTENT_POLICY_HINTS = ("content_policy", "content_filter", "content management policy", "safety system")


def _rejection_code(body: bytes, message: str) -> str:
    """Tell context-window and content-policy refusals (which have fallbacks) from other 400s."""
    text = (body[:2000].decode("utf-8", "replace") + " " + message).lower()
    if any(hint in text for hint in _CONTEXT_WINDOW_HINTS):
        return "context_window_exceeded"
    if any(hint in text for hint in _CONTENT_POLICY_HINTS):
        return "content_policy_violation"
    return "upstream_rejected_request"


def upstream_status_error(target: DeploymentTarget, status: int, body: bytes, retry_after: str | None) -> PlatformError:
    """Map a provider's error status to what the client should see (the full message goes to the log)."""
    raw = _error_message(body)
    provider_failure_log(target, f"status {status}", raw)
    message = provider_message_clean(target, raw)
    where = f"model '{target.model_name}'"
    if status in (400, 413, 422):
        return InvalidRequest(message, status=status, code=_rejection_code(body, raw))
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return RateLimited(
            f"The provider rate-limited {where}: {message}", code="upstream_rate_limited", headers=headers
        )
    if status in (401, 403):
        return UpstreamError(
            f"The provider refused the platform's credentials for {where}: {message}", code="upstream_auth_error"
        )
    if status == 404:
        return UpstreamError(f"The provider does not know {where}: {message}", code="upstream_not_found")
    if status in (503, 504):
        return UpstreamError(
            f"The provider is unavailable for {where}: {message}", status=status, code="upstream_unavailable"
        )
    return UpstreamError(f"The provider failed ({status}) for {where}: {message}")


def connection_error(target: DeploymentTarget, exc: BaseException) -> PlatformError:
    """A provider that could not be reached or did not answer in time."""
    provider_failure_log(target, "connection", f"{exc.__class__.__name__}: {exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(
            f"The provider did not answer in time for model '{target.model_name}'.", status=504, code="upstream_timeout"
        )
    return UpstreamError(
        f"The provider for model '{target.model_name}' cannot be reached: {exc.__class__.__name__}.",
        code="upstream_unreachable",
    )


def litellm_error(target: DeploymentTarget, exc: Exception) -> PlatformError:
    """What litellm raised, mapped as the relay maps the provider's own status or connection failure."""
    if isinstance(exc, PlatformError):
        return exc
    name = exc.__class__.__name__
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)[:2000]
    if name in ("Timeout", "APITimeoutError") or isinstance(exc, asyncio.TimeoutError):
        return connection_error(target, TimeoutError())
    if isinstance(status, int) and name != "APIConnectionError":
        return upstream_status_error(target, status, json.dumps({"error": {"message": message}}).encode(), None)
    provider_failure_log(target, name, message)
    if name == "APIConnectionError":
        reason = provider_message_clean(target, message)
        return UpstreamError(
            f"The provider for model '{target.model_name}' cannot be reached: {reason}", code="upstream_unreachable"
        )
    return UpstreamError(
        f"The provider call failed for model '{target.model_name}': {name}: {provider_message_clean(target, message)}"
    )
