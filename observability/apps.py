"""App config for traces, metrics and request logs; it hands core the metrics to report to."""

from __future__ import annotations

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from core.metrics import metrics_install
        from observability import metrics

        metrics_install(metrics)
