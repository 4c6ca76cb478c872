"""Core's counts reach the metrics observability installs, including those made before the install."""

from __future__ import annotations

from core.metrics import Metrics
from core.metrics import metrics as installed
from observability import metrics as observability_metrics


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def store_breaker_state(self, store: str, state: str) -> None:
        self.calls.append(("state", store, state))

    def store_breaker_opened(self, store: str) -> None:
        self.calls.append(("opened", store))

    def writer_dead_letter_observe(self, writer: str, rows: int) -> None:
        self.calls.append(("dead_letters", writer, rows))

    def writer_dropped_observe(self, writer: str, reason: str, rows: int) -> None:
        self.calls.append(("dropped", writer, reason, rows))


def test_counts_made_before_the_install_are_handed_over_then():
    metrics, sink = Metrics(), Recorder()
    metrics.store_breaker_state("redis", "closed")
    metrics.install(sink)
    metrics.writer_dropped_observe("usage", "backlog", 3)
    assert sink.calls == [("state", "redis", "closed"), ("dropped", "usage", "backlog", 3)]


def test_the_observability_app_installs_its_metrics_at_start_up():
    assert installed.writer_dead_letter_observe == observability_metrics.writer_dead_letter_observe
    assert installed.store_breaker_state == observability_metrics.store_breaker_state
