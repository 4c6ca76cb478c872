"""The ``smart_groups:`` section of the config file, applied idempotently through the services."""

from __future__ import annotations

from typing import Any

from routing.ml.models import SmartGroup
from routing.ml.services import smart_group_save, tenant_share_save
from tenants.models import Tenant

FIELDS = {"name", "strong", "weak", "router", "strong_share", "rules", "mode", "enabled", "tenant_shares"}


def _candidate(entry: dict[str, Any], role: str, where: str) -> tuple[str, float | None]:
    value = entry.get(role)
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict) and isinstance(value.get("model"), str) and value["model"]:
        price = value.get("price_per_mtok")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0):
            raise ValueError(f"{where}.{role}.price_per_mtok must be a non-negative number (USD per million tokens)")
        return value["model"], None if price is None else float(price)
    raise ValueError(f"{where}.{role} must be a model name or {{model: name, price_per_mtok: number}}")


def smart_group_apply(entry: dict[str, Any], *, where: str, actor: str) -> tuple[str, str]:
    """Create or update one smart group from config; returns its label and created/updated/unchanged.

    Example::

        smart_groups:
          - name: auto
            strong: {model: gpt-4o, price_per_mtok: 10}
            weak: {model: gpt-4o-mini, price_per_mtok: 0.6}
            router: knn            # knn | logistic | rules
            strong_share: 0.3      # RouteLLM calibration target
            tenant_shares: {acme: 0.5}
    """
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(FIELDS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name must be a non-empty string")
    strong, strong_price = _candidate(entry, "strong", where)
    weak, weak_price = _candidate(entry, "weak", where)
    kind = entry.get("router", "knn")
    if kind not in SmartGroup.Kind.values:
        raise ValueError(f"{where}.router must be one of {', '.join(SmartGroup.Kind.values)}")
    share = entry.get("strong_share", 0.5)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"{where}.strong_share must be a number between 0 and 1")
    rules = entry.get("rules") or {}
    if not isinstance(rules, dict):
        raise ValueError(f"{where}.rules must be a mapping")
    mode = entry.get("mode", SmartGroup.Mode.ACTIVE)
    if mode not in SmartGroup.Mode.values:
        raise ValueError(f"{where}.mode must be one of {', '.join(SmartGroup.Mode.values)}")
    desired: dict[str, Any] = {
        "strong_model": strong,
        "weak_model": weak,
        "router_kind": kind,
        "strong_share": float(share),
        "rules": rules,
        "mode": mode,
        "enabled": entry.get("enabled", True) is not False,
    }
    if strong_price is not None:
        desired["strong_price"] = strong_price
    if weak_price is not None:
        desired["weak_price"] = weak_price
    group = SmartGroup.objects.filter(name=name.strip()).first()
    is_new = group is None
    changed = is_new or any(getattr(group, k) != v for k, v in desired.items())
    group = group or SmartGroup(name=name.strip())
    if changed:
        for field, value in desired.items():
            setattr(group, field, value)
        smart_group_save(group=group, actor=actor)
    shares = entry.get("tenant_shares") or {}
    if not isinstance(shares, dict):
        raise ValueError(f"{where}.tenant_shares must be a mapping of tenant slug to share")
    current = dict(group.tenant_shares.values_list("tenant__slug", "strong_share"))
    for slug, value in shares.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{where}.tenant_shares.{slug} must be a number between 0 and 1")
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise ValueError(f"{where}.tenant_shares: no tenant {slug!r}")
        if current.get(slug) != float(value):
            tenant_share_save(group=group, tenant_id=tenant.pk, strong_share=float(value), actor=actor)
            changed = True
    return f"smart group {group.name}", "created" if is_new else "updated" if changed else "unchanged"
