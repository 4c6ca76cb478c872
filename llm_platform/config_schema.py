"""The shape of a config file (pydantic models): what ``loadconfig`` refuses before it touches the database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from django.utils.dateparse import parse_datetime
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    model_validator,
)

from llm_platform.config_fields import (
    Section,
    Sequence,
    Text,
    config_error,
    names,
    optional_text,
    refuse,
    resolve,
    resolve_params,
    sequence,
    text,
)
from mcp_gateway.models import ToolGrant
from routing.strategies import RoutingStrategy
from tenants.models import Quota

# Parts of a LiteLLM proxy config this platform reads elsewhere or not at all; they are
# accepted so a LiteLLM config loads as is, and reported so nobody assumes they act.
IGNORED_SECTIONS = ("litellm_settings", "general_settings", "environment_variables")
STRATEGY_NAMES = set(RoutingStrategy.values)
LIMIT_NAMES = set(Quota.LIMIT_FIELDS)
DURATIONS = {"1d": "1d", "24h": "1d", "day": "1d", "30d": "30d", "1mo": "30d", "month": "30d"}
MCP_TRANSPORTS = {"streamable_http": "streamable_http", "http": "streamable_http", "sse": "sse", "stdio": "stdio"}
# router_settings (LiteLLM Router's names) that become route group fields.
ROUTE_NUMBERS = ("num_retries", "retry_after", "allowed_fails", "cooldown_time", "fail_window")
ROUTE_FALLBACKS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


# --- model_list ---


def _litellm_params(value: Any) -> Any:
    params = resolve_params(value)
    if isinstance(params, dict):
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            raise refuse("must be a non-empty string", at="model")
        if "/" not in model:
            raise refuse(f"must be litellm's <provider>/<model>, got {model.strip()!r}", at="model")
        params = {**params, "model": model.strip()}
    return params


class Deployment(Section):
    model_name: Text
    litellm_params: Annotated[dict[str, Any], BeforeValidator(_litellm_params)]
    model_info: Any = None
    enabled: Any = True

    def costs(self) -> dict[str, Any]:
        info = self.model_info if isinstance(self.model_info, dict) else {}
        return {key: info[key] for key in ("input_cost_per_token", "output_cost_per_token") if key in info}


# --- router_settings ---


def _strategy(value: Any) -> Any:
    if value not in STRATEGY_NAMES:
        raise refuse(f"must be one of {', '.join(sorted(STRATEGY_NAMES))}, got {value!r}")
    return value


def _number(kind: type) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise refuse(f"must be a non-negative number, got {value!r}")
        if kind is int and value != int(value):
            raise refuse(f"must be a whole number, got {value!r}")
        return kind(value)

    return check


def _fallback_map(value: Any) -> dict[str, list[str]]:
    """LiteLLM's fallbacks form: a list of one-entry mappings, ``[{"gpt-4o": ["gpt-4o-mini"]}]``."""
    value = sequence(value)
    if not isinstance(value, list):
        raise refuse(f"must be a list, got {type(value).__name__}")
    result: dict[str, list[str]] = {}
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise refuse(f"must be a mapping, got {type(entry).__name__}", at=f"[{index}]")
        for model, targets in entry.items():
            targets = [targets] if isinstance(targets, str) else targets
            if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
                raise refuse("must be a list of model names", at=f"[{index}].{model}")
            result.setdefault(str(model), []).extend(targets)
    return result


Strategy = Annotated[str, BeforeValidator(_strategy)]
WholeNumber = Annotated[int, BeforeValidator(_number(int))]
Seconds = Annotated[float, BeforeValidator(_number(float))]
ModelNames = Annotated[list[str], BeforeValidator(names("model names"))]


class RouteSettings(Section):
    """Route group fields; ``route_fields`` holds those the mapping gives (fallbacks apart)."""

    routing_strategy: Strategy = ""
    num_retries: WholeNumber = 0
    retry_after: Seconds = 0.0
    allowed_fails: WholeNumber = 0
    cooldown_time: Seconds = 0.0
    fail_window: Seconds = 0.0

    def route_fields(self) -> dict[str, Any]:
        return self.model_dump(include={"routing_strategy", *ROUTE_NUMBERS}, exclude_unset=True)


class GroupSettings(RouteSettings):
    """One ``model_group_settings`` entry (an extension of LiteLLM's format): its own fallbacks as plain lists."""

    unknown = "setting"
    expected = False
    fallbacks: ModelNames | None = None
    context_window_fallbacks: ModelNames | None = None
    content_policy_fallbacks: ModelNames | None = None


FallbackMap = Annotated[dict[str, list[str]], BeforeValidator(_fallback_map)]


class RouterSettings(RouteSettings):
    model_config = ConfigDict(extra="allow", frozen=True)  # other LiteLLM Router settings: reported, ignored
    model_group_settings: dict[str, GroupSettings] = Field(default_factory=dict)
    fallbacks: FallbackMap = Field(default_factory=dict)
    context_window_fallbacks: FallbackMap = Field(default_factory=dict)
    content_policy_fallbacks: FallbackMap = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _groups_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        groups = data.get("model_group_settings") or {}
        if isinstance(groups, dict):
            groups = {name: own or {} for name, own in groups.items()}
        return {**data, "model_group_settings": groups}

    def unused(self) -> list[str]:
        return sorted(self.model_extra or {})


# --- tenants, keys and limits ---


def _limit_value(name: str, value: Any) -> Any:
    """A limit as its field stores it, so a reload compares equal (the field would turn 60.5 or "60" into 60)."""
    if name == "max_budget":
        try:
            return Decimal(str(value))
        except ArithmeticError:
            raise refuse("must be a number of USD", at=name) from None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise refuse(f"must be a whole number, got {value!r}", at=name)
    return int(value)


class LimitSet(Section):
    """Limits of one scope and model: ``given`` holds each limit set, as its quota field stores it."""

    keys: ClassVar[set[str]] = {"budget_duration"}  # besides the limits
    budget_duration: str = "30d"
    given: dict[str, Any] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict)  # the values as written, for messages

    @model_validator(mode="before")
    @classmethod
    def _limits(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(str(key) for key in set(data) - LIMIT_NAMES - cls.keys)
        if unknown:
            raise refuse(f"unknown limit(s) {', '.join(unknown)}; expected {', '.join(sorted(LIMIT_NAMES))}")
        duration = DURATIONS.get(str(data.get("budget_duration", "30d")))
        if duration is None:
            raise refuse("must be 1d or 30d", at="budget_duration")
        given = {name: _limit_value(name, data[name]) for name in sorted(LIMIT_NAMES) if data.get(name) is not None}
        limits = {"budget_duration": duration, "given": given, "raw": {name: data[name] for name in given}}
        if "model" in cls.keys:
            limits.update(model=str(data.get("model") or ""), model_limits=data.get("model_limits") or {})
        return limits


class LimitEntry(LimitSet):
    """One ``limits`` mapping: for all models (or ``model``), with per-model ``model_limits``."""

    keys = {"budget_duration", "model", "model_limits"}
    model: str = ""
    model_limits: dict[str, LimitSet] = Field(default_factory=dict)


def _limits_form(value: Any) -> str:
    return "limits as a list" if isinstance(value, list) else "limits as a mapping"


Limits = Annotated[
    Annotated[list[LimitEntry], Tag("limits as a list")] | Annotated[LimitEntry, Tag("limits as a mapping")],
    Discriminator(_limits_form),
]


def _expiry(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = parse_datetime(str(value))
    if parsed is None:
        raise refuse(f"must be an ISO 8601 date-time, got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _secret(value: Any) -> Any:
    secret = resolve(value)
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise refuse("must be a string of at least 16 characters")
    return secret


class KeyEntry(Section):
    name: Text
    key: Annotated[str | None, BeforeValidator(_secret)] = None
    models: ModelNames = Field(default_factory=list)
    expires_at: Annotated[dt.datetime | None, BeforeValidator(_expiry)] = None
    scopes: Annotated[list[str], BeforeValidator(names("endpoint names"))] = Field(default_factory=list)
    limits: Limits | None = None

    @model_validator(mode="before")
    @classmethod
    def _allowed_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and "models" not in data and "allowed_models" in data:
            return {**data, "models": data["allowed_models"]}
        return data


class TenantEntry(Section):
    slug: Text
    name: Annotated[str, BeforeValidator(optional_text)] = ""
    active: StrictBool = True
    limits: Limits | None = None
    api_keys: Annotated[list[KeyEntry], Sequence] = Field(default_factory=list)


# --- mcp_servers ---


def _transport(value: Any) -> str:
    transport = MCP_TRANSPORTS.get(str(value))
    if transport is None:
        raise refuse("must be streamable_http, sse or stdio")
    return transport


def _credential(value: Any) -> Any:
    credential = resolve(value) or ""
    if not isinstance(credential, str):
        raise refuse("must be a string (the header value)")
    return credential


def _tools(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise refuse("must be a list of tool names (or ['*'])")
    return value


class GrantEntry(Section):
    tenant: Text
    key: Annotated[str | None, BeforeValidator(lambda v: None if v is None else text(v))] = None
    tools: Annotated[list[str], BeforeValidator(_tools)] = Field(default_factory=lambda: [ToolGrant.ALL])


class McpServerEntry(Section):
    unknown = "field"
    name: Text
    url: Annotated[str, BeforeValidator(optional_text)] = ""
    transport: Annotated[str, BeforeValidator(_transport)] = "streamable_http"
    command: Annotated[str, BeforeValidator(optional_text)] = ""
    credential: Annotated[str, BeforeValidator(_credential)] = ""
    credential_header: Annotated[str, BeforeValidator(lambda v: str(v or "Authorization"))] = "Authorization"
    enabled: StrictBool = True
    tenant_self_service: StrictBool = False
    grants: Annotated[list[GrantEntry], Sequence] | None = None  # absent: grants are left to the admin

    @model_validator(mode="after")
    def _url_or_command(self) -> McpServerEntry:
        needed = "command" if self.transport == "stdio" else "url"
        if not getattr(self, needed):
            raise refuse("must be a non-empty string", at=needed)
        return self

    def grants_given(self) -> bool:
        return "grants" in self.model_fields_set


# --- the file ---


class ConfigFile(Section):
    """A whole config: LiteLLM's ``model_list`` and ``router_settings``, and this platform's sections."""

    model_list: Annotated[list[Deployment], Sequence] = Field(default_factory=list)
    router_settings: RouterSettings | None = None
    tenants: Annotated[list[TenantEntry], Sequence] = Field(default_factory=list)
    smart_groups: Annotated[list[dict[str, Any]], Sequence] = Field(default_factory=list)
    mcp_servers: Annotated[list[McpServerEntry], Sequence] = Field(default_factory=list)
    litellm_settings: Any = None
    general_settings: Any = None
    environment_variables: Any = None

    @model_validator(mode="before")
    @classmethod
    def _top_level(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise refuse(f"the config must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(key) for key in set(data) - set(cls.model_fields))
        if unknown:
            raise refuse(
                f"unknown top-level section(s): {', '.join(unknown)}; expected {', '.join(sorted(cls.model_fields))}"
            )
        return data


def config_parse(data: Any) -> ConfigFile:
    """The file's contents validated, or ConfigError saying where and why."""
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc) from None
