"""Config as code: apply a LiteLLM-style ``model_list`` and ``router_settings``, plus ``tenants``,
``smart_groups`` and ``mcp_servers`` sections, idempotently."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.dateparse import parse_datetime

from mcp_gateway import services as mcp_services
from mcp_gateway.models import ToolGrant, UpstreamServer
from routing.credentials import params_split
from routing.ml.config import smart_group_apply
from routing.models import ModelDeployment, RouteGroup
from routing.services import deployment_save, route_group_save
from routing.strategies import RoutingStrategy
from tenants import services as tenant_services
from tenants.models import ApiKey, Quota, Tenant, key_hash

# Parts of a LiteLLM proxy config this platform reads elsewhere or not at all; they are
# accepted so a LiteLLM config loads as is, and reported so nobody assumes they act.
IGNORED_SECTIONS = ("litellm_settings", "general_settings", "environment_variables")
TOP_LEVEL = {"model_list", "router_settings", "tenants", "smart_groups", "mcp_servers", *IGNORED_SECTIONS}
DEPLOYMENT_COLUMNS = {"model", "api_base", "api_key"}


class ConfigError(ValueError):
    """The file is not a valid config; the message says where and why."""


@dataclass
class ConfigReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict)  # "tenant/key name" -> plaintext, shown once
    declared: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False)

    def declare(self, identity: tuple[str, ...], where: str, what: str) -> None:
        """Refuse a second entry for one row: the later would overwrite the earlier, and a reload flip them."""
        first = self.declared.setdefault(identity, where)
        if first != where:
            raise ConfigError(f"{where}: {what} is declared already at {first}; declare it once")


def _resolve(value: Any, where: str) -> Any:
    """LiteLLM's ``os.environ/NAME`` indirection, so secrets stay out of the file."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.removeprefix("os.environ/")
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    return value


def _resolve_params(params: dict[str, Any], where: str) -> dict[str, Any]:
    """``_resolve`` on every value, also inside mappings such as ``extra_headers`` (LiteLLM resolves only
    the top level; an ``os.environ/`` string meant literally as a header value is not a use case)."""
    return {
        name: _resolve_params(value, f"{where}.{name}")
        if isinstance(value, dict)
        else _resolve(value, f"{where}.{name}")
        for name, value in params.items()
    }


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _string(data: dict[str, Any], name: str, where: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{name} must be a non-empty string")
    return value.strip()


def _validation(where: str, exc: ValidationError) -> ConfigError:
    return ConfigError(f"{where}: {'; '.join(f'{k}: {v}' for k, v in exc.message_dict.items())}")


def _apply_deployment(entry: Any, where: str, actor: str, report: ConfigReport) -> str:
    entry = _mapping(entry, where)
    model_name = _string(entry, "model_name", where)
    params = _resolve_params(
        _mapping(entry.get("litellm_params"), f"{where}.litellm_params"), f"{where}.litellm_params"
    )
    litellm_model = _string(params, "model", f"{where}.litellm_params")
    if "/" not in litellm_model:
        raise ConfigError(f"{where}.litellm_params.model must be litellm's <provider>/<model>, got {litellm_model!r}")
    api_base = str(params.get("api_base") or "")
    # Credentials (aws_secret_access_key, vertex_credentials, an api-key header ...) go to the encrypted
    # secret_params; the file is the whole truth for both, so a credential dropped from it is removed.
    extra, secret = params_split({k: v for k, v in params.items() if k not in DEPLOYMENT_COLUMNS})
    info = entry.get("model_info") or {}
    for cost_key in ("input_cost_per_token", "output_cost_per_token"):
        if isinstance(info, dict) and cost_key in info:
            extra.setdefault(cost_key, info[cost_key])
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
        "enabled": entry.get("enabled", True) is not False,
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
        raise _validation(where, exc) from exc
    (report.created if is_new else report.updated).append(label)
    return model_name


# router_settings (LiteLLM Router's names) that become route group fields.
ROUTE_NUMBERS = {
    "num_retries": int,
    "retry_after": float,
    "allowed_fails": int,
    "cooldown_time": float,
    "fail_window": float,
}
ROUTE_FALLBACKS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
STRATEGY_NAMES = set(RoutingStrategy.values)


def _route_fields(settings_: dict[str, Any], where: str) -> dict[str, Any]:
    """Route group fields from one settings mapping (strategy and numbers; fallbacks apart)."""
    fields: dict[str, Any] = {}
    if "routing_strategy" in settings_:
        strategy = settings_["routing_strategy"]
        if strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"{where}.routing_strategy must be one of {', '.join(sorted(STRATEGY_NAMES))}, got {strategy!r}"
            )
        fields["routing_strategy"] = strategy
    for name, kind in ROUTE_NUMBERS.items():
        if name in settings_:
            value = settings_[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}.{name} must be a non-negative number, got {value!r}")
            if kind is int and value != int(value):
                raise ConfigError(f"{where}.{name} must be a whole number, got {value!r}")
            fields[name] = kind(value)
    return fields


def _fallback_map(value: Any, where: str) -> dict[str, list[str]]:
    """LiteLLM's fallbacks form: a list of one-entry mappings, ``[{"gpt-4o": ["gpt-4o-mini"]}]``."""
    result: dict[str, list[str]] = {}
    for index, entry in enumerate(_sequence(value, where)):
        entry = _mapping(entry, f"{where}[{index}]")
        for model, targets in entry.items():
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(f"{where}[{index}].{model} must be a list of model names")
            result.setdefault(str(model), []).extend(targets)
    return result


def _apply_router_settings(value: Any, model_names: list[str], actor: str, report: ConfigReport) -> None:
    """One route group per model name of the model_list: the global settings, its own
    fallbacks, and its ``model_group_settings`` entry if any (an extension of LiteLLM's format)."""
    where = "router_settings"
    data = dict(_mapping(value, where))
    per_group = _mapping(data.pop("model_group_settings", None) or {}, f"{where}.model_group_settings")
    common = _route_fields(data, where)
    fallbacks = {name: _fallback_map(data.get(name), f"{where}.{name}") for name in ROUTE_FALLBACKS}
    known = {"routing_strategy", *ROUTE_NUMBERS, *ROUTE_FALLBACKS}
    unused = sorted(set(data) - known)
    if unused:
        report.warnings.append(f"router_settings: {', '.join(unused)} not used by this platform; ignored")
    names = list(dict.fromkeys([*model_names, *per_group]))
    existing = set(ModelDeployment.objects.values_list("model_name", flat=True).distinct())
    for kind, mapping in fallbacks.items():
        for model, targets in mapping.items():
            for target in [model, *targets]:
                if target not in names and target not in existing:
                    raise ConfigError(f"{where}.{kind}: unknown model {target!r} (not in model_list nor deployed)")
    for name in names:
        here = f"{where}.model_group_settings.{name}"
        own = _mapping(per_group.get(name) or {}, here)
        unknown = sorted(set(own) - known)
        if unknown:
            raise ConfigError(f"{here}: unknown setting(s) {', '.join(unknown)}")
        desired = {**common, **_route_fields(own, here)}
        for kind in ROUTE_FALLBACKS:
            own_list = own.get(kind)
            if own_list is not None:
                if not isinstance(own_list, list) or not all(isinstance(t, str) for t in own_list):
                    raise ConfigError(f"{here}.{kind} must be a list of model names")
                desired[kind] = own_list
            else:
                desired[kind] = fallbacks[kind].get(name, [])
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
            raise _validation(here if name in per_group else where, exc) from exc
        (report.created if is_new else report.updated).append(label)


LIMIT_NAMES = set(Quota.LIMIT_FIELDS)
DURATIONS = {"1d": "1d", "24h": "1d", "day": "1d", "30d": "30d", "1mo": "30d", "month": "30d"}


def _limit_entries(value: Any, where: str) -> list[tuple[str, dict[str, Any], str]]:
    """Flatten ``limits`` (a mapping, optionally with ``model_limits``, or a list of mappings) to rows."""
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    rows = []
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]" if isinstance(value, list) else where
        entry = dict(_mapping(entry, here))
        per_model = _mapping(entry.pop("model_limits", None) or {}, f"{here}.model_limits")
        rows.append((str(entry.pop("model", "") or ""), entry, here))
        for model, limits in per_model.items():
            rows.append(
                (str(model), dict(_mapping(limits, f"{here}.model_limits.{model}")), f"{here}.model_limits.{model}")
            )
    return rows


def _limit_value(name: str, value: Any, here: str) -> Any:
    """A limit as its field stores it, so a reload compares equal (the field would turn 60.5 or "60" into 60)."""
    if name == "max_budget":
        try:
            return Decimal(str(value))
        except ArithmeticError:
            raise ConfigError(f"{here}.max_budget must be a number of USD") from None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise ConfigError(f"{here}.{name} must be a whole number, got {value!r}")
    return int(value)


def _quota_rows(value: Any, where: str) -> dict[tuple[str, str], dict[str, tuple[Any, str]]]:
    """The quota rows a ``limits`` list makes: one per (model, budget duration), entries merged field by field.

    A quota row is unique per scope, model and budget duration, and a rate limit alone
    belongs to the default duration (30d): ``[{rpm_limit: 60}, {max_budget: 100}]`` is one
    row holding both. Two entries giving one limit of one row different values are refused:
    one of them would otherwise be dropped, and re-running the file would flip between them.
    """
    rows: dict[tuple[str, str], dict[str, tuple[Any, str]]] = {}  # each limit with where it was given
    for model, limits, here in _limit_entries(value, where):
        unknown = sorted(set(limits) - LIMIT_NAMES - {"budget_duration"})
        if unknown:
            raise ConfigError(
                f"{here}: unknown limit(s) {', '.join(unknown)}; expected {', '.join(sorted(LIMIT_NAMES))}"
            )
        duration = DURATIONS.get(str(limits.pop("budget_duration", "30d")))
        if duration is None:
            raise ConfigError(f"{here}.budget_duration must be 1d or 30d")
        merged = rows.setdefault((model, duration), {})
        for name in sorted(LIMIT_NAMES):
            if limits.get(name) is None:
                continue
            limit = _limit_value(name, limits[name], here)
            earlier = merged.setdefault(name, (limit, here))
            if earlier[0] != limit:
                raise ConfigError(
                    f"{here}.{name}: {limits[name]!r} conflicts with {earlier[0]!r} given at {earlier[1]} for "
                    f"{model or 'all models'} ({duration}); a scope has one quota per model and budget duration, "
                    "so give each limit once"
                )
    return rows


def _apply_limits(scope: dict[str, Any], value: Any, where: str, actor: str, report: ConfigReport) -> None:
    for (model, duration), limits in _quota_rows(value, where).items():
        desired: dict[str, Any] = {name: limits[name][0] if name in limits else None for name in LIMIT_NAMES}
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
            blamed = next((limits[name][1] for name in exc.message_dict if name in limits), where)
            raise _validation(blamed, exc) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(f"{where}: limits must be non-negative numbers ({exc})") from exc
        (report.created if is_new else report.updated).append(label)


def _expiry(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = parse_datetime(str(value))
    if parsed is None:
        raise ConfigError(f"{where}.expires_at must be an ISO 8601 date-time, got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _apply_key(tenant: Tenant, entry: Any, where: str, actor: str, report: ConfigReport) -> None:
    entry = _mapping(entry, where)
    name = _string(entry, "name", where)
    secret = _resolve(entry.get("key"), f"{where}.key")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise ConfigError(f"{where}.key must be a string of at least 16 characters")
    models = entry.get("models", entry.get("allowed_models", []))
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{where}.models must be a list of model names")
    expires_at = _expiry(entry.get("expires_at"), where)
    scopes = entry.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise ConfigError(f"{where}.scopes must be a list of endpoint names")
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
            raise _validation(where, exc) from exc
        report.created.append(label)
        if secret is None:
            report.new_keys[f"{tenant.slug}/{name}"] = plaintext
        _apply_limits(
            {"api_key": ApiKey.objects.get(tenant=tenant, name=name, revoked_at__isnull=True)},
            entry.get("limits"),
            f"{where}.limits",
            actor,
            report,
        )
        return
    changed = existing.allowed_models != models or existing.expires_at != expires_at or existing.scopes != scopes
    if secret is not None and existing.secret_hash != key_hash(secret):
        existing.set_secret(secret)
        changed = True
    _apply_limits({"api_key": existing}, entry.get("limits"), f"{where}.limits", actor, report)
    if not changed:
        report.unchanged.append(label)
        return
    existing.allowed_models, existing.expires_at, existing.scopes = models, expires_at, scopes
    try:
        tenant_services.api_key_update(api_key=existing, actor=actor)
    except ValidationError as exc:
        raise _validation(where, exc) from exc
    report.updated.append(label)


def _apply_tenant(entry: Any, where: str, actor: str, report: ConfigReport) -> None:
    entry = _mapping(entry, where)
    slug = _string(entry, "slug", where)
    name = _string(entry, "name", where, required=False) or slug
    active = entry.get("active", True)
    if not isinstance(active, bool):
        raise ConfigError(f"{where}.active must be true or false")
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
            raise _validation(where, exc) from exc
        (report.created if is_new else report.updated).append(label)
    else:
        report.unchanged.append(label)
    _apply_limits({"tenant": tenant}, entry.get("limits"), f"{where}.limits", actor, report)
    for index, key_entry in enumerate(_sequence(entry.get("api_keys"), f"{where}.api_keys")):
        _apply_key(tenant, key_entry, f"{where}.api_keys[{index}]", actor, report)


def _apply_smart_group(entry: Any, where: str, actor: str, report: ConfigReport) -> None:
    try:
        label, outcome = smart_group_apply(_mapping(entry, where), where=where, actor=actor)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except ValidationError as exc:
        raise _validation(where, exc) from exc
    report.declare(("smart group", label), where, label)  # after the write: the config rolls back as a whole
    getattr(report, outcome).append(label)


MCP_SERVER_KEYS = {
    "name",
    "url",
    "transport",
    "command",
    "credential",
    "credential_header",
    "enabled",
    "tenant_self_service",
    "grants",
}
MCP_TRANSPORTS = {"streamable_http": "streamable_http", "http": "streamable_http", "sse": "sse", "stdio": "stdio"}


def _apply_mcp_server(entry: Any, where: str, actor: str, report: ConfigReport) -> UpstreamServer | None:
    """One upstream MCP server and its grants; the grants listed (if any) are the server's grants afterwards."""
    entry = _mapping(entry, where)
    unknown = sorted(set(entry) - MCP_SERVER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(MCP_SERVER_KEYS))}"
        )
    name = _string(entry, "name", where)
    transport = MCP_TRANSPORTS.get(str(entry.get("transport", "streamable_http")))
    if transport is None:
        raise ConfigError(f"{where}.transport must be streamable_http, sse or stdio")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled must be true or false")
    self_service = entry.get("tenant_self_service", False)
    if not isinstance(self_service, bool):
        raise ConfigError(f"{where}.tenant_self_service must be true or false")
    credential = _resolve(entry.get("credential"), f"{where}.credential") or ""
    if not isinstance(credential, str):
        raise ConfigError(f"{where}.credential must be a string (the header value)")
    stdio = transport == "stdio"
    desired = {
        "url": _string(entry, "url", where, required=not stdio),
        "command": _string(entry, "command", where, required=stdio),
        "transport": transport,
        "credential": credential,
        "credential_header": str(entry.get("credential_header") or "Authorization"),
        "enabled": enabled,
        "tenant_self_service": self_service,
    }
    report.declare(("mcp server", name), where, f"mcp server {name!r}")
    server = UpstreamServer.objects.filter(name=name).first()
    label = f"mcp server {name}"
    touched: UpstreamServer | None = None
    if server is None or any(getattr(server, k) != v for k, v in desired.items()):
        is_new = server is None
        server = server or UpstreamServer(name=name)
        for field_name, value in desired.items():
            setattr(server, field_name, value)
        try:
            mcp_services.server_save(server=server, actor=actor)
        except ValidationError as exc:
            raise _validation(where, exc) from exc
        (report.created if is_new else report.updated).append(label)
        touched = server
    else:
        report.unchanged.append(label)
    if "grants" not in entry:
        return touched  # grants are left to the admin (and, on a self-service server, to tenant admins)
    wanted: set[tuple[int, int | None, str]] = set()
    for index, grant in enumerate(_sequence(entry.get("grants"), f"{where}.grants")):
        here = f"{where}.grants[{index}]"
        grant = _mapping(grant, here)
        slug = _string(grant, "tenant", here)
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise ConfigError(f"{here}.tenant: no tenant '{slug}' (declare it under tenants)")
        key_id = None
        if grant.get("key") is not None:
            key_name = _string(grant, "key", here)
            key = ApiKey.objects.filter(tenant=tenant, name=key_name, revoked_at__isnull=True).first()
            if key is None:
                raise ConfigError(f"{here}.key: tenant '{slug}' has no active key named '{key_name}'")
            key_id = key.pk
        tools = grant.get("tools", [ToolGrant.ALL])
        if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
            raise ConfigError(f"{here}.tools must be a list of tool names (or ['*'])")
        wanted |= {(tenant.pk, key_id, tool) for tool in tools}
    existing = {(g.tenant_id, g.api_key_id, g.tool): g for g in ToolGrant.objects.filter(server=server)}
    for tenant_id, key_id, tool in sorted(wanted - set(existing), key=str):
        mcp_services.grant_save(
            grant=ToolGrant(tenant_id=tenant_id, api_key_id=key_id, server=server, tool=tool), actor=actor
        )
        report.created.append(f"mcp grant {name}.{tool} → tenant {tenant_id}" + (f" key {key_id}" if key_id else ""))
    for stale in set(existing) - wanted:
        mcp_services.grant_delete(grant=existing[stale], actor=actor)
        report.updated.append(f"mcp grant {name}.{stale[2]} removed from tenant {stale[0]}")
    return touched


def config_apply(data: Any, *, actor: str) -> ConfigReport:
    """Apply a whole config in one transaction: it loads completely or not at all."""
    data = _mapping(data if data is not None else {}, "the config")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"unknown top-level section(s): {', '.join(unknown)}; expected {', '.join(sorted(TOP_LEVEL))}"
        )
    report = ConfigReport()
    for section in IGNORED_SECTIONS:
        if data.get(section):
            report.warnings.append(f"{section}: not used by this version of the platform; ignored")
    with transaction.atomic():
        model_names: list[str] = []
        for index, entry in enumerate(_sequence(data.get("model_list"), "model_list")):
            model_names.append(_apply_deployment(entry, f"model_list[{index}]", actor, report))
        if data.get("router_settings") is not None:
            _apply_router_settings(data["router_settings"], model_names, actor, report)
        for index, entry in enumerate(_sequence(data.get("tenants"), "tenants")):
            _apply_tenant(entry, f"tenants[{index}]", actor, report)
        for index, entry in enumerate(_sequence(data.get("smart_groups"), "smart_groups")):
            _apply_smart_group(entry, f"smart_groups[{index}]", actor, report)
        touched = [
            server
            for index, entry in enumerate(_sequence(data.get("mcp_servers"), "mcp_servers"))
            if (server := _apply_mcp_server(entry, f"mcp_servers[{index}]", actor, report)) is not None
        ]
    # Discovering tools is a network round trip, so it runs after the config committed.
    for server in touched:
        if server.enabled:
            refreshed = mcp_services.server_refresh(server=server, actor=actor)
            if refreshed.health != UpstreamServer.Health.HEALTHY:
                report.warnings.append(f"mcp server {server.name}: tools not discovered yet ({refreshed.last_error})")
    return report
