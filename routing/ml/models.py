"""Smart model groups, their versioned router artifacts, routing samples and quality feedback."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from tenants.models import ApiKey, Tenant

__all__ = [
    "RequestFeedback",
    "RouterArtifact",
    "RouterSample",
    "SmartGroup",
    "SmartGroupTenantShare",
    "TenantRoutingData",
]

SHARE_VALIDATORS = [MinValueValidator(0.0), MaxValueValidator(1.0)]


class SmartGroup(models.Model):
    """A public model name (e.g. ``auto``) that a router resolves, per request, to a strong or a weak model.

    Learned kinds (``knn``, ``logistic``) use the group's active artifact and route to the
    strong model when the predicted strong-model win rate reaches the threshold calibrated
    for ``strong_share`` (the share of calls the strong model should get). ``rules`` uses
    ``rules`` alone. In ``shadow`` mode the router decides and its decision is recorded,
    but every request is served by the strong model.
    """

    class Kind(models.TextChoices):
        KNN = "knn", "kNN over prompt features"
        LOGISTIC = "logistic", "Logistic regression classifier"
        RULES = "rules", "Rules (length, keywords, tenant, max cost)"

    class Mode(models.TextChoices):
        ACTIVE = "active", "Active: serve the router's choice"
        SHADOW = "shadow", "Shadow: serve the strong model, record what the router would have done"

    name = models.CharField(max_length=200, unique=True, help_text="The public model name clients ask for.")
    strong_model = models.CharField(max_length=200, help_text="Public model name of the strong (expensive) model.")
    weak_model = models.CharField(max_length=200, help_text="Public model name of the weak (cheap) model.")
    strong_price = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.0)], help_text="USD per million tokens (blended)."
    )
    weak_price = models.FloatField(
        default=0.6, validators=[MinValueValidator(0.0)], help_text="USD per million tokens (blended)."
    )
    router_kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.KNN)
    strong_share = models.FloatField(
        default=0.5, validators=SHARE_VALIDATORS, help_text="Target share of requests for the strong model (0..1)."
    )
    rules = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            'Rules router: {"strong_if_chars_over": 2000, "strong_keywords": ["prove"], "weak_keywords": ["hi"], '
            '"strong_tenants": ["slug"], "weak_tenants": ["slug"]}. A request field max_cost_usd caps the cost.'
        ),
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ACTIVE)
    active_artifact = models.ForeignKey(
        "RouterArtifact", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    shadow_artifact = models.ForeignKey(
        "RouterArtifact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Evaluated on every request next to the active router; its choice is recorded, never served.",
    )
    ab_artifact = models.ForeignKey(
        "RouterArtifact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Arm B of an A/B split; serves ab_percent of requests.",
    )
    ab_percent = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(strong_share__gte=0.0, strong_share__lte=1.0), name="smartgroup_share_range"
            ),
            models.CheckConstraint(condition=models.Q(ab_percent__lte=100), name="smartgroup_ab_percent_range"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.strong_model} | {self.weak_model})"


class SmartGroupTenantShare(models.Model):
    """A tenant's own target share of strong-model calls for a smart group (overrides the group's)."""

    group = models.ForeignKey(SmartGroup, on_delete=models.CASCADE, related_name="tenant_shares")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    strong_share = models.FloatField(validators=SHARE_VALIDATORS)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "tenant"], name="smartshare_unique_tenant")]

    def __str__(self) -> str:
        return f"{self.group.name} / tenant {self.tenant_id}: {self.strong_share:.0%}"


class TenantRoutingData(models.Model):
    """What a tenant lets the platform keep of its prompts for router training (default: a hash only)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="+")
    keep_prompt_text = models.BooleanField(
        default=False, help_text="Keep prompt text of smart-routed requests to train routers on this traffic."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "tenant routing data"
        verbose_name_plural = "tenant routing data"

    def __str__(self) -> str:
        return f"tenant {self.tenant_id}: {'prompt text' if self.keep_prompt_text else 'hash only'}"


class RouterArtifact(models.Model):
    """One trained router: parameters as a numpy archive (no pickles), its SHA-256, and offline metrics.

    ``calibration`` holds quantiles of predicted win rates on held-out prompts; the
    threshold for any strong share is read from them. ``metrics`` holds the offline
    evaluation (quality recovered vs cost saved across thresholds, with the always-strong
    and always-weak baselines).
    """

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        SHADOW = "shadow", "Shadow"
        AB = "ab", "A/B arm"
        RETIRED = "retired", "Retired"

    group = models.ForeignKey(SmartGroup, on_delete=models.CASCADE, related_name="artifacts")
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=SmartGroup.Kind.choices)
    backend = models.CharField(max_length=40, default="hashing", help_text="Embedding backend of the features.")
    params = models.JSONField(default=dict, blank=True)
    blob = models.BinaryField(help_text="numpy .npz archive of the router's arrays (loaded with allow_pickle=False).")
    sha256 = models.CharField(max_length=64)
    calibration = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CANDIDATE)
    trained_rows = models.PositiveIntegerField(default=0)
    traffic_rows = models.PositiveIntegerField(default=0, help_text="Rows from the platform's own traffic.")
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["group", "-version"]
        constraints = [models.UniqueConstraint(fields=["group", "version"], name="artifact_unique_version")]

    def __str__(self) -> str:
        return f"{self.group.name} {self.kind}@{self.version}"

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.version}"


class RouterSample(models.Model):
    """A smart-routing decision as recorded for training and inspection.

    The prompt is kept as a SHA-256 only, unless the tenant opted in to keeping prompt text.
    """

    request_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="+")
    group = models.ForeignKey(SmartGroup, null=True, on_delete=models.SET_NULL, related_name="samples")
    prompt_sha256 = models.CharField(max_length=64)
    prompt_text = models.TextField(blank=True)
    prompt_chars = models.PositiveIntegerField(default=0)
    router = models.CharField(max_length=60)
    arm = models.CharField(max_length=2, blank=True)
    shadow = models.BooleanField(default=False)
    score = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    chosen_model = models.CharField(max_length=200)
    served_model = models.CharField(max_length=200)
    record = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["group", "created_at"], name="routersample_group_time_idx")]

    def __str__(self) -> str:
        return f"{self.request_id} → {self.served_model}"


class RequestFeedback(models.Model):
    """A quality score (0..1) for one request's answer, from the client (API) or an operator (admin)."""

    class Source(models.TextChoices):
        API = "api", "API"
        ADMIN = "admin", "Admin"

    request_id = models.CharField(max_length=40, unique=True)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model_requested = models.CharField(max_length=200, blank=True)
    model_served = models.CharField(max_length=300, blank=True)
    score = models.FloatField(validators=SHARE_VALIDATORS)
    comment = models.CharField(max_length=1000, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    actor = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.score:.2f}"
