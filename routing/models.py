"""Model deployments (where a public model name is served) and per-request usage records."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models

from core.urls import url_credentials as core_url_credentials
from routing.credentials import is_secret_param, params_split, secret_values
from routing.strategies import RoutingStrategy
from tenants.models import ApiKey, Tenant
from tenants.vault import EncryptedJSONField, EncryptedTextField

# Providers that speak OpenAI's wire format: the gateway relays their bytes itself instead
# of going through litellm's SDK layer (same behaviour, a fraction of the cost per request).
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "hosted_vllm", "lm_studio", "openai_like"})
OPENAI_DEFAULT_API_BASE = "https://api.openai.com/v1"


class ModelDeployment(models.Model):
    """One place a public model name is served: a litellm model string plus its endpoint.

    ``litellm_model`` uses litellm's ``<provider>/<model>`` form (``openai/gpt-4o-mini``,
    ``anthropic/claude-3-5-sonnet``); ``extra_params`` carries the other plain
    ``litellm_params`` (``api_version``, ``timeout``, ``input_cost_per_token`` ...).
    Credentials never sit there: the provider key is ``api_key`` and every other
    credential-like param (``routing.credentials.is_secret_param``: ``aws_secret_access_key``,
    ``vertex_credentials``, an ``api-key`` entry of ``extra_headers`` ...) is in
    ``secret_params``; both are encrypted at rest and written by ``routing.services``.
    """

    model_name = models.CharField(max_length=200, db_index=True, help_text="The name clients ask for.")
    litellm_model = models.CharField(
        max_length=300, help_text="litellm's provider/model, e.g. openai/gpt-4o-mini or anthropic/claude-3-5-sonnet"
    )
    api_base = models.CharField(max_length=500, blank=True, validators=[URLValidator(schemes=["http", "https"])])
    api_key = EncryptedTextField(blank=True, help_text="Provider credential, encrypted at rest.")
    extra_params = models.JSONField(default=dict, blank=True, help_text="Other litellm_params, as JSON.")
    secret_params = EncryptedJSONField(
        default=dict, blank=True, help_text="Credential litellm_params, as one encrypted JSON object."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["model_name", "litellm_model", "api_base"], name="deployment_unique_target")
        ]

    def __str__(self) -> str:
        return f"{self.model_name} → {self.litellm_model}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        params = self.extra_params if isinstance(self.extra_params, dict) else {}
        problems = [] if isinstance(self.extra_params, dict) else ["extra_params must be a JSON object"]
        for name in ("weight", "rpm", "tpm", "input_cost_per_token", "output_cost_per_token"):
            value = params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                problems.append(f"{name} must be a non-negative number, got {value!r}")
        leaked = params_split(params)[1]
        if leaked:
            names = ", ".join(sorted(secret_values(leaked)))
            problems.append(f"{names}: credentials belong in secret_params (encrypted), not in extra_params")
        problems.extend(_header_problems(params))
        unstorable = _unstorable_text(params)
        if unstorable:
            problems.append(unstorable)
        if problems:
            errors["extra_params"] = "; ".join(problems)
        secret = self.secret_params if isinstance(self.secret_params, dict) else {}
        header_problems = _header_problems(secret)
        if header_problems:
            errors["secret_params"] = "; ".join(header_problems)
        errors.update(_nul_errors(self, ("model_name", "litellm_model", "api_base")))
        in_url = url_credentials(self.api_base) if self.api_base else ""
        if in_url:
            errors["api_base"] = (
                f"The URL carries a credential ({in_url}); an audited, plain field cannot hold one. "
                "Put it in the API key or in secret_params (e.g. extra_headers.Authorization)."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def provider(self) -> str:
        return self.litellm_model.split("/", 1)[0] if "/" in self.litellm_model else "openai"

    @property
    def upstream_model(self) -> str:
        return self.litellm_model.split("/", 1)[1] if "/" in self.litellm_model else self.litellm_model

    @property
    def is_passthrough(self) -> bool:
        return self.provider in OPENAI_COMPATIBLE_PROVIDERS and self.extra_params.get("passthrough", True) is not False


# litellm params that are HTTP headers sent to the provider.
HEADER_PARAMS = ("extra_headers", "headers")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_problems(params: dict[str, object]) -> list[str]:
    """Header maps must be names and values an HTTP request can carry: a line break would inject a header."""
    problems = []
    for param in HEADER_PARAMS:
        headers = params.get(param)
        if headers is None:
            continue
        if not isinstance(headers, dict):
            problems.append(f"{param} must be a JSON object of header names and values")
            continue
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                problems.append(f"{param} has an invalid header name {name!r}")
            elif not isinstance(value, str | int | float) or isinstance(value, bool):
                problems.append(f"{param}.{name} must be a string")
            elif any(char in str(value) for char in "\r\n\0"):
                problems.append(f"{param}.{name} must not contain line breaks or NUL characters")
    return problems


def _nul_errors(instance: models.Model, names: tuple[str, ...]) -> dict[str, str]:
    """Text fields holding a NUL character, which PostgreSQL cannot store (a form refuses it; a service
    caller or a config file may not)."""
    return {
        name: "Must not contain NUL characters."
        for name in names
        if isinstance(getattr(instance, name), str) and "\x00" in getattr(instance, name)
    }


def _unstorable_text(document: object) -> str:
    """Why a JSON column cannot store ``document`` (PostgreSQL's jsonb refuses NUL; no database takes a lone
    surrogate), or ''. Walked without recursion: the document may be deep."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "text must not contain NUL characters (\\u0000)"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "text must not contain lone UTF-16 surrogates (such as \\ud800)"
    return ""


def url_credentials(url: str) -> str:
    """What in a deployment's ``url`` is a credential (user info, a secret-named query parameter), or ''."""
    return core_url_credentials(url, is_secret=is_secret_param)


def url_without_credentials(url: str) -> str:
    """``url`` with its user info and secret-named query parameters taken out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return ""
    netloc = f"[{host}]{port}" if ":" in host else f"{host}{port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not is_secret_param(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class RouteGroup(models.Model):
    """How requests to one public model name are spread over its deployments, retried,
    failed over and cooled down. Names follow LiteLLM Router's ``router_settings``.

    A model name without a route group is routed with the ``ROUTING_*`` defaults.
    ``version`` moves on every change so a routing decision record names the policy it used.
    """

    model_name = models.CharField(max_length=200, unique=True, help_text="The public model name of the group.")
    routing_strategy = models.CharField(
        max_length=40, choices=RoutingStrategy.choices, default=RoutingStrategy.SIMPLE_SHUFFLE
    )
    num_retries = models.PositiveSmallIntegerField(
        default=2, help_text="Retries within the group on timeouts, 429, 5xx and connection errors."
    )
    retry_after = models.FloatField(
        default=0.05, help_text="Seconds of backoff before retrying the same deployment; doubles on each retry."
    )
    fallbacks = models.JSONField(
        default=list, blank=True, help_text="Model names to try, in order, when this group fails."
    )
    context_window_fallbacks = models.JSONField(
        default=list, blank=True, help_text="Model names to try when the prompt exceeds the context window."
    )
    content_policy_fallbacks = models.JSONField(
        default=list, blank=True, help_text="Model names to try when the provider refuses on content policy."
    )
    allowed_fails = models.PositiveSmallIntegerField(
        default=3, help_text="Failures a deployment may have within the fail window before it cools down."
    )
    fail_window = models.FloatField(default=60.0, help_text="Seconds over which failures are counted.")
    cooldown_time = models.FloatField(default=5.0, help_text="Seconds a failing deployment is left out of routing.")
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(retry_after__gte=0), name="routegroup_retry_after_nonneg"),
            models.CheckConstraint(condition=models.Q(fail_window__gt=0), name="routegroup_fail_window_pos"),
            models.CheckConstraint(condition=models.Q(cooldown_time__gte=0), name="routegroup_cooldown_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} ({self.routing_strategy})"

    def clean(self) -> None:
        errors = _nul_errors(self, ("model_name",))
        for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(i, str) and i and "\x00" not in i for i in value):
                errors[name] = "Must be a JSON list of model names."
            elif self.model_name in value:
                errors[name] = "A group cannot fall back to itself."
        if errors:
            raise ValidationError(errors)


class RequestLog(models.Model):
    """One API request as the platform saw it: who, which model, where it went, what it cost."""

    request_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    key_prefix = models.CharField(max_length=16, blank=True)
    endpoint = models.CharField(max_length=40, default="chat.completions")
    model_requested = models.CharField(max_length=200, blank=True)
    deployment = models.ForeignKey(ModelDeployment, null=True, on_delete=models.SET_NULL, related_name="+")
    model_served = models.CharField(max_length=300, blank=True)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=60, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False, help_text="True when the upstream reported no usage.")
    cost_usd = models.DecimalField("cost (USD)", max_digits=14, decimal_places=8, default=0)
    latency_ms = models.FloatField("latency (ms)", default=0)
    ttfb_ms = models.FloatField("time to first byte (ms)", null=True, blank=True, help_text="For streams.")
    overhead_ms = models.FloatField(
        "gateway overhead (ms)", default=0, help_text="Time spent in the gateway, not waiting on the upstream."
    )
    client_disconnected = models.BooleanField(default=False)
    cut_after_bytes = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Body bytes the client had received when its response was cut short (it left, stalled or "
        "the server stopped); empty when the client received the whole answer.",
    )
    route_decision = models.JSONField(
        null=True, blank=True, help_text="How the request was routed: candidates, scores, attempts, fallbacks."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="reqlog_tenant_time_idx"),
            models.Index(fields=["api_key", "created_at"], name="reqlog_key_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_requested} {self.status_code}"


LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)  # and above


class UsageRollup(models.Model):
    """Usage per hour, tenant, key and model: what charts and reports read, so raw request
    logs can be pruned (``USAGE_RETENTION_DAYS``) without losing history.

    ``latency_h0`` … ``latency_h9`` count requests by total latency into
    ``LATENCY_BUCKETS_MS`` (the last bucket is everything slower), for percentiles.
    """

    hour = models.DateTimeField()
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=16, decimal_places=8, default=0)
    latency_ms_sum = models.FloatField("latency sum (ms)", default=0)
    latency_h0 = models.PositiveIntegerField(default=0)
    latency_h1 = models.PositiveIntegerField(default=0)
    latency_h2 = models.PositiveIntegerField(default=0)
    latency_h3 = models.PositiveIntegerField(default=0)
    latency_h4 = models.PositiveIntegerField(default=0)
    latency_h5 = models.PositiveIntegerField(default=0)
    latency_h6 = models.PositiveIntegerField(default=0)
    latency_h7 = models.PositiveIntegerField(default=0)
    latency_h8 = models.PositiveIntegerField(default=0)
    latency_h9 = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "tenant", "api_key", "model"],
                name="rollup_unique_bucket",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["tenant", "hour"], name="rollup_tenant_hour_idx")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.tenant_id} {self.model}"


from routing.ml.models import *  # noqa: E402,F403
