"""Tenants and their API keys."""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.vault import EncryptedTextField

KEY_PREFIX_LEN = 12


def key_hash(secret: str) -> str:
    """SHA-256 of a key: keys are 256-bit random strings, so no salt or slow hash is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_generate() -> str:
    return "sk-" + secrets.token_urlsafe(32)


class Tenant(models.Model):
    """A team or customer: owns API keys, and is the unit of isolation, quota and audit."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True, help_text="Inactive tenants' keys are refused.")
    key_max_age_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Rotate this tenant's API keys once they are this old; empty means never (a key's own maximum wins).",
    )
    trace_content = models.BooleanField(
        "prompts and completions in traces",
        default=False,
        help_text=(
            "Record the text of prompts and completions on this tenant's model-call spans. Off by default: "
            "traces then carry parameters, models and token counts, never message text."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def for_secret(self, secret: str) -> ApiKeyQuerySet:
        return self.filter(secret_hash=key_hash(secret))

    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, tenant__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A client credential. Only the SHA-256 of the secret is stored; the secret is shown once."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(
        max_length=KEY_PREFIX_LEN,
        db_index=True,
        editable=False,
        help_text="The first characters of the key, to recognise it in lists and logs.",
    )
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Public model names this key may use; empty means every enabled model.",
    )
    scopes = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "API endpoints this key may call (chat, embeddings, models, mcp, feedback, audit); "
            "empty means all but audit."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False, related_name="+"
    )
    max_age_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Rotate this key once it is this old; empty uses the tenant's maximum age.",
    )
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, editable=False, related_name="successor"
    )
    pending_secret = EncryptedTextField(
        blank=True,
        editable=False,
        help_text="A rotated key's secret, encrypted, until a tenant admin collects it once.",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        indexes = [models.Index(fields=["tenant", "created_at"], name="apikey_tenant_created_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    def set_secret(self, secret: str) -> None:
        self.prefix = secret[:KEY_PREFIX_LEN]
        self.secret_hash = key_hash(secret)

    def allows_model(self, model_name: str) -> bool:
        return not self.allowed_models or model_name in self.allowed_models

    def clean(self) -> None:
        scopes = self.scopes or []
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            raise ValidationError({"scopes": f"Scopes are a list of names from {', '.join(KEY_SCOPES)}."})
        unknown = sorted(set(scopes) - set(KEY_SCOPES))
        if unknown:
            raise ValidationError({"scopes": f"Unknown scope(s) {', '.join(unknown)}; use {', '.join(KEY_SCOPES)}."})


# The endpoint families a key can be limited to (KeyContext.require_scope). "feedback" is
# POST /v1/feedback; "audit" (reading the tenant's audit trail) is never implied by an empty
# scope list, and only who may read the trail may grant it (tenants.roles.SCOPE_READS).
KEY_SCOPES = ("chat", "embeddings", "models", "mcp", "feedback", "audit")


MAX_RATE = 10_000_000
MAX_BUDGET_USD = 10_000_000


class Quota(models.Model):
    """Limits for a tenant or one of its API keys, for every model or one model.

    Field names follow LiteLLM's (``rpm_limit``, ``tpm_limit``, ``max_parallel_requests``,
    ``max_budget`` with ``budget_duration``) so configs carry over. Every quota that
    matches a request applies: a key's tighter limit and its tenant's wider one both hold.
    Empty fields mean "no limit of this kind".
    """

    class BudgetDuration(models.TextChoices):
        DAY = "1d", "per day (UTC)"
        MONTH = "30d", "per calendar month (UTC)"

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas")
    model = models.CharField(max_length=200, blank=True, help_text="Public model name; empty applies to all models.")
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MaxValueValidator(MAX_RATE)])
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_RATE)], help_text="Total tokens per minute."
    )
    input_tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MaxValueValidator(MAX_RATE)])
    output_tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MaxValueValidator(MAX_RATE)])
    max_parallel_requests = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(100_000)], help_text="Concurrent requests and streams."
    )
    max_budget = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(MAX_BUDGET_USD))],
        help_text="USD per budget duration.",
    )
    budget_duration = models.CharField(max_length=4, choices=BudgetDuration.choices, default=BudgetDuration.MONTH)
    tool_rpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_RATE)],
        help_text="MCP tool calls per minute (only on quotas for all models).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(tenant__isnull=False, api_key__isnull=True)
                    | models.Q(tenant__isnull=True, api_key__isnull=False)
                ),
                name="quota_one_scope",
            ),
            models.UniqueConstraint(fields=["tenant", "model", "budget_duration"], name="quota_unique_tenant_model"),
            models.UniqueConstraint(fields=["api_key", "model", "budget_duration"], name="quota_unique_key_model"),
        ]

    def __str__(self) -> str:
        scope = f"key {self.api_key}" if self.api_key_id else f"tenant {self.tenant}"
        return f"{scope} · {self.model or 'all models'}"

    LIMIT_FIELDS = (
        "rpm_limit",
        "tpm_limit",
        "input_tpm_limit",
        "output_tpm_limit",
        "max_parallel_requests",
        "max_budget",
        "tool_rpm_limit",
    )


class Membership(models.Model):
    """A user's role in a tenant; a user can hold roles in several tenants."""

    class Role(models.TextChoices):
        TENANT_ADMIN = "tenant_admin", "Tenant admin"
        DEVELOPER = "developer", "Developer"
        AUDITOR = "auditor", "Auditor"
        VIEWER = "viewer", "Viewer"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")]

    def __str__(self) -> str:
        return f"{self.user} · {self.get_role_display()} of {self.tenant}"
