"""What core code counts (breaker states, rows a writer lost), handed to the metrics observability installs.

Core imports no app, so it cannot call ``observability.metrics`` itself: at start-up the
observability app passes that module to ``metrics_install``, whose functions then become
the methods of ``metrics`` here. A call costs what a call of the module function did (one
attribute, no lookup in between). Counts made before the install (breakers created at
import) are kept and handed over then.
"""

from __future__ import annotations

from typing import Any, Protocol

_NAMES = ("store_breaker_state", "store_breaker_opened", "writer_dead_letter_observe", "writer_dropped_observe")
_PENDING_MAX = 1000


class MetricsSink(Protocol):
    def store_breaker_state(self, store: str, state: str) -> None: ...

    def store_breaker_opened(self, store: str) -> None: ...

    def writer_dead_letter_observe(self, writer: str, rows: int) -> None: ...

    def writer_dropped_observe(self, writer: str, reason: str, rows: int) -> None: ...


class Metrics:
    """Keeps what it is told until ``metrics_install``; from then on its methods are the sink's own."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, tuple[Any, ...]]] = []

    def install(self, sink: MetricsSink) -> None:
        """Send the counts to ``sink`` from now on, starting with those kept so far."""
        for name in _NAMES:
            setattr(self, name, getattr(sink, name))
        pending, self._pending = self._pending, []
        for name, args in pending:
            getattr(sink, name)(*args)

    def _keep(self, name: str, *args: Any) -> None:
        if len(self._pending) < _PENDING_MAX:
            self._pending.append((name, args))

    def store_breaker_state(self, store: str, state: str) -> None:
        self._keep("store_breaker_state", store, state)

    def store_breaker_opened(self, store: str) -> None:
        self._keep("store_breaker_opened", store)

    def writer_dead_letter_observe(self, writer: str, rows: int) -> None:
        """``rows`` refused rows of a batch writer were kept as dead letters."""
        self._keep("writer_dead_letter_observe", writer, rows)

    def writer_dropped_observe(self, writer: str, reason: str, rows: int) -> None:
        self._keep("writer_dropped_observe", writer, reason, rows)


metrics = Metrics()


def metrics_install(sink: MetricsSink) -> None:
    """Send core's counts to ``sink`` from now on, starting with those made before."""
    metrics.install(sink)
