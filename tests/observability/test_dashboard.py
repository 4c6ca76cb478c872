"""The shipped Grafana dashboard queries metrics the platform really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from observability import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-platform.json"
# Registered through metrics.gauge_callback when the project starts (llm_platform.apps).
FROM_CALLBACKS = {"llmp_audit_export_lag_seconds"}


def test_every_metric_in_the_dashboard_is_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bllmp_[a-z_]+", target["expr"]))
    exported = set()
    for collector in list(metrics.REGISTRY._collector_to_names):  # every metric family defined
        for family in collector.describe():
            exported.add(family.name)
            exported |= {f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum")}
    missing = queried - exported - FROM_CALLBACKS
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"
    assert len(queried) >= 14


def test_the_scrape_time_gauges_are_registered_and_read(db):
    scraped = metrics.exposition().decode()
    for name in FROM_CALLBACKS:
        assert re.search(rf"^{name} [0-9.e+-]+$", scraped, re.M), f"{name} is not exported"
