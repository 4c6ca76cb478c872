"""Config as code: apply a LiteLLM-style ``model_list`` and ``router_settings``, plus ``tenants``,
``smart_groups`` and ``mcp_servers`` sections, idempotently (their shape: llm_platform.config_schema)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from llm_platform.config_fields import ConfigError
from llm_platform.config_mcp import mcp_server_apply
from llm_platform.config_report import ConfigReport, validation_error
from llm_platform.config_schema import (
    IGNORED_SECTIONS,
    LIMIT_NAMES,
    ROUTE_FALLBACKS,
    Deployment,
    KeyEntry,
    Limits,
    LimitSet,
    RouterSettings,
    TenantEntry,
    config_parse,
)
from mcp_gateway import services as mcp_services
from mcp_gateway.models import UpstreamServer
from routing.credentials import params_split
from routing.ml.config import smart_group_apply
from routing.models import ModelDeployment, RouteGroup
from routing.services import deployment_save, route_group_save
from tenants import services as tenant_services
from tenants.models import ApiKey, Quota, Tenant, key_hash

__all__ = ["ConfigError", "ConfigReport", "config_apply"]
DEPLOYMENT_COLUMNS = {"model", "api_base", "api_key"}


def _apply_deployment(entry: Deployment, where: str, actor: str, report: ConfigReport) -> str:
    model_name, params = entry.model_name, entry.litellm_params
    litellm_model = params["model"]
    api_base = str(params.get("api_base") or "")
    # Credentials (aws_secret_access_key, vertex_credentials, an api-key header ...) go to the encrypted
    # secret_params; the file is the whole truth for both, so a credential dropped from it is removed.
    extra, secret = params_split({k: v for k, v in params.items() if k not in DEPLOYMENT_COLUMNS})
    for cost_key, cost in entry.costs().items():
        extra.setdefault(cost_key, cost)
    report.declare(
        ("deployment", model_name, litellm_model, api_base),
        where,
        f"the deployment of {model_name} to {litellm_model} at {api_base or 'the default api_base'}",
    )
    deployment = ModelDeployment.objects.filter(
        model_name=model_name, litellm_model=litellm_model, api_base=api_base
    ).first()
    label = f"deployment {model_name} → {litellm_model}"
    desired = {
        "api_key": str(params.get("api_key") or ""),
        "extra_params": extra,
        "secret_params": secret,
        "enabled": entry.enabled is not False,
    }
    # Compared decrypted, so re-running the same file changes (and audits) nothing.
    if deployment is not None and all(getattr(deployment, k) == v for k, v in desired.items()):
        report.unchanged.append(label)
        return model_name
    is_new = deployment is None
    deployment = deployment or ModelDeployment(model_name=model_name, litellm_model=litellm_model, api_base=api_base)
    for name, value in desired.items():
        setattr(deployment, name, value)
    try:
        deployment_save(deployment=deployment, actor=actor)
    except ValidationError as exc:
        raise validation_error(where, exc) from exc
    (report.created if is_new else report.updated).append(label)
    return model_name


def _apply_router_settings(settings_: RouterSettings, model_names: list[str], actor: str, report: ConfigReport) -> None:
    """One route group per model name of the model_list: the global settings, its own
    fallbacks, and its ``model_group_settings`` entry if any (an extension of LiteLLM's format)."""
    where = "router_settings"
    per_group = settings_.model_group_settings
    common = settings_.route_fields()
    fallbacks = {kind: getattr(settings_, kind) for kind in ROUTE_FALLBACKS}
    if settings_.unused():
        report.warnings.append(f"router_settings: {', '.join(settings_.unused())} not used by this platform; ignored")
    names = list(dict.fromkeys([*model_names, *per_group]))
    existing = set(ModelDeployment.objects.values_list("model_name", flat=True).distinct())
    for kind, mapping in fallbacks.items():
        for model, targets in mapping.items():
            for target in [model, *targets]:
                if target not in names and target not in existing:
                    raise ConfigError(f"{where}.{kind}: unknown model {target!r} (not in model_list nor deployed)")
    for name in names:
        here = f"{where}.model_group_settings.{name}"
        own = per_group.get(name)
        desired = {**common, **(own.route_fields() if own else {})}
        for kind in ROUTE_FALLBACKS:
            own_list = getattr(own, kind) if own else None
            desired[kind] = own_list if own_list is not None else fallbacks[kind].get(name, [])
        group = RouteGroup.objects.filter(model_name=name).first()
        label = f"route group {name}"
        if group is not None and all(getattr(group, k) == v for k, v in desired.items()):
            report.unchanged.append(label)
            continue
        is_new = group is None
        group = group or RouteGroup(model_name=name)
        for field_name, field_value in desired.items():
            setattr(group, field_name, field_value)
        try:
            route_group_save(group=group, actor=actor)
        except ValidationError as exc:
            raise validation_error(here if name in per_group else where, exc) from exc
        (report.created if is_new else report.updated).append(label)


def _limit_entries(limits: Limits | None, where: str) -> list[tuple[str, LimitSet, str]]:
    """Flatten ``limits`` (a mapping, optionally with ``model_limits``, or a list of mappings) to rows."""
    if limits is None:
        return []
    if isinstance(limits, list):
        entries = [(entry, f"{where}[{index}]") for index, entry in enumerate(limits)]
    else:
        entries = [(limits, where)]
    rows: list[tuple[str, LimitSet, str]] = []
    for entry, here in entries:
        rows.append((entry.model, entry, here))
        rows.extend((model, own, f"{here}.model_limits.{model}") for model, own in entry.model_limits.items())
    return rows


def _quota_rows(limits: Limits | None, where: str) -> dict[tuple[str, str], dict[str, tuple[Any, str]]]:
    """The quota rows a ``limits`` list makes: one per (model, budget duration), entries merged field by field.

    A quota row is unique per scope, model and budget duration, and a rate limit alone
    belongs to the default duration (30d): ``[{rpm_limit: 60}, {max_budget: 100}]`` is one
    row holding both. Two entries giving one limit of one row different values are refused:
    one of them would otherwise be dropped, and re-running the file would flip between them.
    """
    rows: dict[tuple[str, str], dict[str, tuple[Any, str]]] = {}  # each limit with where it was given
    for model, limit_set, here in _limit_entries(limits, where):
        duration = limit_set.budget_duration
        merged = rows.setdefault((model, duration), {})
        for name, limit in limit_set.given.items():
            earlier = merged.setdefault(name, (limit, here))
            if earlier[0] != limit:
                raise ConfigError(
                    f"{here}.{name}: {limit_set.raw[name]!r} conflicts with {earlier[0]!r} given at {earlier[1]} for "
                    f"{model or 'all models'} ({duration}); a scope has one quota per model and budget duration, "
                    "so give each limit once"
                )
    return rows


def _apply_limits(scope: dict[str, Any], limits: Limits | None, where: str, actor: str, report: ConfigReport) -> None:
    for (model, duration), given in _quota_rows(limits, where).items():
        desired: dict[str, Any] = {name: given[name][0] if name in given else None for name in LIMIT_NAMES}
        quota = Quota.objects.filter(**scope, model=model, budget_duration=duration).first()
        label = f"quota {where} ({model or 'all models'}, {duration})"
        if quota is not None and all(getattr(quota, k) == v for k, v in desired.items()):
            report.unchanged.append(label)
            continue
        is_new = quota is None
        quota = quota or Quota(**scope, model=model, budget_duration=duration)
        for name, limit in desired.items():
            setattr(quota, name, limit)
        try:
            tenant_services.quota_save(quota=quota, actor=actor)
        except ValidationError as exc:
            blamed = next((given[name][1] for name in exc.message_dict if name in given), where)
            raise validation_error(blamed, exc) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(f"{where}: limits must be non-negative numbers ({exc})") from exc
        (report.created if is_new else report.updated).append(label)


def _apply_key(tenant: Tenant, entry: KeyEntry, where: str, actor: str, report: ConfigReport) -> None:
    name, secret, models, scopes, expires_at = entry.name, entry.key, entry.models, entry.scopes, entry.expires_at
    label = f"api key {tenant.slug}/{name}"
    report.declare(("api key", tenant.slug, name), where, f"api key {name!r} of tenant {tenant.slug!r}")
    existing = ApiKey.objects.filter(tenant=tenant, name=name, revoked_at__isnull=True).first()
    if existing is None:
        if secret is not None and ApiKey.objects.filter(secret_hash=key_hash(secret)).exists():
            raise ConfigError(f"{where}.key is already used by another API key")
        try:
            _, plaintext = tenant_services.api_key_create(
                tenant=tenant,
                name=name,
                actor=actor,
                secret=secret,
                allowed_models=models,
                scopes=scopes,
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise validation_error(where, exc) from exc
        report.created.append(label)
        if secret is None:
            report.new_keys[f"{tenant.slug}/{name}"] = plaintext
        created = ApiKey.objects.get(tenant=tenant, name=name, revoked_at__isnull=True)
        _apply_limits({"api_key": created}, entry.limits, f"{where}.limits", actor, report)
        return
    changed = existing.allowed_models != models or existing.expires_at != expires_at or existing.scopes != scopes
    if secret is not None and existing.secret_hash != key_hash(secret):
        existing.set_secret(secret)
        changed = True
    _apply_limits({"api_key": existing}, entry.limits, f"{where}.limits", actor, report)
    if not changed:
        report.unchanged.append(label)
        return
    existing.allowed_models, existing.expires_at, existing.scopes = models, expires_at, scopes
    try:
        tenant_services.api_key_update(api_key=existing, actor=actor)
    except ValidationError as exc:
        raise validation_error(where, exc) from exc
    report.updated.append(label)


def _apply_tenant(entry: TenantEntry, where: str, actor: str, report: ConfigReport) -> None:
    slug, active = entry.slug, entry.active
    name = entry.name or slug
    report.declare(("tenant", slug), where, f"tenant {slug!r}")
    tenant = Tenant.objects.filter(slug=slug).first()
    label = f"tenant {slug}"
    if tenant is None or tenant.name != name or tenant.is_active != active:
        is_new = tenant is None
        tenant = tenant or Tenant(slug=slug)
        tenant.name, tenant.is_active = name, active
        try:
            tenant_services.tenant_save(tenant=tenant, actor=actor)
        except ValidationError as exc:
            raise validation_error(where, exc) from exc
        (report.created if is_new else report.updated).append(label)
    else:
        report.unchanged.append(label)
    _apply_limits({"tenant": tenant}, entry.limits, f"{where}.limits", actor, report)
    for index, key_entry in enumerate(entry.api_keys):
        _apply_key(tenant, key_entry, f"{where}.api_keys[{index}]", actor, report)


def _apply_smart_group(entry: dict[str, Any], where: str, actor: str, report: ConfigReport) -> None:
    try:
        label, outcome = smart_group_apply(entry, where=where, actor=actor)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except ValidationError as exc:
        raise validation_error(where, exc) from exc
    report.declare(("smart group", label), where, label)  # after the write: the config rolls back as a whole
    getattr(report, outcome).append(label)


def config_apply(data: Any, *, actor: str) -> ConfigReport:
    """Apply a whole config in one transaction: it loads completely or not at all."""
    config = config_parse(data)
    report = ConfigReport()
    for section in IGNORED_SECTIONS:
        if getattr(config, section):
            report.warnings.append(f"{section}: not used by this version of the platform; ignored")
    with transaction.atomic():
        model_names = [
            _apply_deployment(entry, f"model_list[{index}]", actor, report)
            for index, entry in enumerate(config.model_list)
        ]
        if config.router_settings is not None:
            _apply_router_settings(config.router_settings, model_names, actor, report)
        for index, tenant in enumerate(config.tenants):
            _apply_tenant(tenant, f"tenants[{index}]", actor, report)
        for index, group in enumerate(config.smart_groups):
            _apply_smart_group(group, f"smart_groups[{index}]", actor, report)
        touched = [
            server
            for index, entry in enumerate(config.mcp_servers)
            if (server := mcp_server_apply(entry, f"mcp_servers[{index}]", actor, report)) is not None
        ]
    # Discovering tools is a network round trip, so it runs after the config committed.
    for server in touched:
        if server.enabled:
            refreshed = mcp_services.server_refresh(server=server, actor=actor)
            if refreshed.health != UpstreamServer.Health.HEALTHY:
                report.warnings.append(f"mcp server {server.name}: tools not discovered yet ({refreshed.last_error})")
    return report
