"""Prometheus metrics, safe with several server processes (``PROMETHEUS_MULTIPROC_DIR``).

Every metric is defined here, with bounded labels: tenant slugs and configured model and
deployment names only; never key ids, request ids or whatever model name a client sent
(an unknown model is counted as ``-``). ``METRICS_TENANT_LABEL=false`` collapses the
tenant label for platforms with very many tenants.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts), each process writes its
values to files there and a scrape of any one process reports the sum of all, including
processes that have exited (counters) and only live ones (gauges). The directory must be
emptied when the whole service (re)starts; ``manage.py serve`` does that for its own
processes only through ``process_exit``.

Values the platform knows only at scrape time (audit export lag, anything read from the
database) are registered with ``gauge_callback`` and computed by the scraping process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNKNOWN = "-"


class _Pid:
    """This process's id, kept current across ``fork`` instead of asked of the kernel at each write."""

    value = os.getpid()

    @classmethod
    def get(cls) -> int:
        return cls.value

    @classmethod
    def forked(cls) -> None:
        cls.value = os.getpid()


if MULTIPROCESS:
    # In multiprocess mode every counter increment and histogram observation first checks
    # whether the process has forked, with os.getpid(): a system call each time, about a dozen
    # a request (~2.5 µs; more under load). The pid is kept here instead, updated in a forked
    # child before anything else runs there (Celery's prefork pool). prometheus_client takes
    # the identifier for exactly this; it must be swapped before any metric value exists, which
    # is why it happens here, before the metrics below are defined (no other code in the
    # platform's processes creates prometheus metrics).
    os.register_at_fork(after_in_child=_Pid.forked)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(process_identifier=_Pid.get)

# Our own registry: the default one would also export process/GC collectors that are
# wrong in multiprocess mode.
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

REQUESTS = Counter(
    "llmp_requests",
    "API requests served, by endpoint, tenant, model and HTTP status.",
    ["endpoint", "tenant", "model", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "llmp_request_duration_seconds",
    "Whole request time (to the last byte of a stream).",
    ["endpoint", "model", "stream"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_BYTE = Histogram(
    "llmp_time_to_first_byte_seconds",
    "Time to the first streamed chunk sent to the client.",
    ["endpoint", "model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "llmp_gateway_overhead_seconds",
    "Time spent in the gateway itself: the request's time minus time waiting on the upstream.",
    ["endpoint"],
    buckets=_OVERHEAD_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "llmp_tokens",
    "Tokens accounted, by tenant, model and kind (prompt or completion).",
    ["tenant", "model", "kind"],
    registry=REGISTRY,
)
COST = Counter("llmp_cost_usd", "Cost in US dollars, by tenant and model.", ["tenant", "model"], registry=REGISTRY)
QUOTA_REFUSALS = Counter(
    "llmp_quota_refusals",
    "Requests refused by a quota, by tenant and the limit that refused (e.g. requests_per_minute).",
    ["tenant", "limit"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "llmp_upstream_errors",
    "Failed calls to a provider, by deployment and error type.",
    ["model", "deployment", "error"],
    registry=REGISTRY,
)
COOLDOWNS = Counter(
    "llmp_deployment_cooldowns",
    "Deployments put in cooldown by the router, by deployment and reason.",
    ["model", "deployment", "reason"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "llmp_requests_in_flight",
    "Requests being served now (all processes).",
    ["endpoint"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge(
    "llmp_active_streams",
    "Streamed responses being relayed now (all processes).",
    ["endpoint"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
MCP_SESSIONS = Gauge(
    "llmp_mcp_sessions_active",
    "Open MCP gateway sessions (all processes).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
TOOL_CALLS = Counter(
    "llmp_mcp_tool_calls",
    "MCP tool calls through the gateway, by upstream server and outcome.",
    ["server", "outcome"],
    registry=REGISTRY,
)
TOOL_CALL_DURATION = Histogram(
    "llmp_mcp_tool_call_duration_seconds",
    "MCP tool call time, by upstream server.",
    ["server"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CELERY_JOBS = Counter(
    "llmp_celery_jobs",
    "Celery task runs, by task and outcome (success, failure, retry).",
    ["task", "outcome"],
    registry=REGISTRY,
)
CELERY_JOB_DURATION = Histogram(
    "llmp_celery_job_duration_seconds",
    "Celery task run time, by task.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
WRITER_DEAD_LETTERS = Counter(
    "llmp_writer_dead_letters",
    "Rows a batch writer could not write (the database refused them) and kept as dead letters, by writer.",
    ["writer"],
    registry=REGISTRY,
)
WRITER_ROWS_DROPPED = Counter(
    "llmp_writer_rows_dropped",
    "Rows a batch writer dropped, by writer and reason: backlog (database unavailable too long), "
    "dead_letter_full, dead_letter_unwritable.",
    ["writer", "reason"],
    registry=REGISTRY,
)
DRAINING = Gauge(
    "llmp_draining",
    "1 while this process drains after SIGTERM.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
STORE_BREAKER = Gauge(
    "llmp_store_breaker_state",
    "A store's circuit breaker as a process sees it: 0 closed (healthy), 1 half-open (trying), 2 open (unreachable).",
    ["store"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
STORE_BREAKER_OPENINGS = Counter(
    "llmp_store_breaker_openings",
    "Times a store's circuit breaker opened (the store stopped answering), by store.",
    ["store"],
    registry=REGISTRY,
)
_BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


def _tenant(slug: str | None) -> str:
    from django.conf import settings

    if not slug or not getattr(settings, "METRICS_TENANT_LABEL", True):
        return UNKNOWN
    return slug


def request_observe(
    *,
    endpoint: str,
    tenant: str | None,
    model: str | None,
    status: int,
    stream: bool,
    latency_s: float,
    overhead_s: float,
    ttfb_s: float | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost_usd: float = 0.0,
) -> None:
    """Record one finished request; ``model`` must be a configured model name (or None)."""
    tenant_label = _tenant(tenant)
    model_label = model or UNKNOWN
    REQUESTS.labels(endpoint, tenant_label, model_label, str(status)).inc()
    REQUEST_DURATION.labels(endpoint, model_label, "true" if stream else "false").observe(latency_s)
    OVERHEAD.labels(endpoint).observe(overhead_s)
    if ttfb_s is not None:
        TIME_TO_FIRST_BYTE.labels(endpoint, model_label).observe(ttfb_s)
    if prompt_tokens:
        TOKENS.labels(tenant_label, model_label, "prompt").inc(prompt_tokens)
    if completion_tokens:
        TOKENS.labels(tenant_label, model_label, "completion").inc(completion_tokens)
    if cost_usd > 0:
        COST.labels(tenant_label, model_label).inc(cost_usd)


def quota_refusal_observe(tenant: str | None, limit: str) -> None:
    QUOTA_REFUSALS.labels(_tenant(tenant), limit or UNKNOWN).inc()


def store_breaker_state(store: str, state: str) -> None:
    STORE_BREAKER.labels(store).set(_BREAKER_VALUES[state])


def store_breaker_opened(store: str) -> None:
    STORE_BREAKER_OPENINGS.labels(store).inc()


def upstream_error_observe(model: str, deployment: str, error: str) -> None:
    """A provider call failed; ``deployment`` is the configured deployment (e.g. its litellm model or id)."""
    UPSTREAM_ERRORS.labels(model or UNKNOWN, deployment or UNKNOWN, error or "error").inc()


def cooldown_observe(model: str, deployment: str, reason: str) -> None:
    COOLDOWNS.labels(model or UNKNOWN, deployment or UNKNOWN, reason or UNKNOWN).inc()


def tool_call_observe(server: str, outcome: str, seconds: float) -> None:
    """An MCP tool call ended: ``outcome`` is ok, error, denied or timeout (a small fixed set)."""
    TOOL_CALLS.labels(server or UNKNOWN, outcome).inc()
    TOOL_CALL_DURATION.labels(server or UNKNOWN).observe(seconds)


def mcp_session_opened() -> None:
    MCP_SESSIONS.inc()


def mcp_session_closed() -> None:
    MCP_SESSIONS.dec()


def celery_job_observe(task: str, outcome: str, seconds: float | None = None) -> None:
    CELERY_JOBS.labels(task, outcome).inc()
    if seconds is not None:
        CELERY_JOB_DURATION.labels(task).observe(seconds)


def writer_dead_letter_observe(writer: str, rows: int) -> None:
    """``rows`` refused rows of a batch writer were kept as dead letters (``writer`` is a code-defined name)."""
    WRITER_DEAD_LETTERS.labels(writer).inc(rows)


def writer_dropped_observe(writer: str, reason: str, rows: int) -> None:
    WRITER_ROWS_DROPPED.labels(writer, reason).inc(rows)


class Active:
    """Counts a request (and, with ``stream``, a stream) as in flight: ``with metrics.Active(...)``."""

    __slots__ = ("endpoint", "streaming")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.streaming = False

    def __enter__(self) -> Active:
        IN_FLIGHT.labels(self.endpoint).inc()
        return self

    def stream_started(self) -> None:
        if not self.streaming:
            self.streaming = True
            ACTIVE_STREAMS.labels(self.endpoint).inc()

    def __exit__(self, *exc: object) -> None:
        IN_FLIGHT.labels(self.endpoint).dec()
        if self.streaming:
            self.streaming = False
            ACTIVE_STREAMS.labels(self.endpoint).dec()


# Scrape-time gauges ---------------------------------------------------------------------

_callbacks: dict[str, tuple[str, Callable[[], float | None]]] = {}
_callbacks_lock = threading.Lock()


def gauge_callback(name: str, documentation: str, read: Callable[[], float | None]) -> None:
    """Report ``read()`` as gauge ``name`` at each scrape (``None``: no sample). Replaces an earlier one.

    For values the whole platform shares (e.g. ``llmp_audit_export_lag_seconds`` from the
    audit export's last success); ``read`` runs in the scraping request's thread and may
    use the ORM, so keep it to one cheap query.
    """
    with _callbacks_lock:
        _callbacks[name] = (documentation, read)


class _CallbackCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        with _callbacks_lock:
            items = list(_callbacks.items())
        for name, (documentation, read) in items:
            family = GaugeMetricFamily(name, documentation)
            try:
                value = read()
            except Exception:
                logger.exception("metrics callback %s failed", name)
                value = None
            if value is not None:
                family.add_metric([], float(value))
            yield family


_callback_collector = _CallbackCollector()


def exposition() -> bytes:
    """The text exposition format of every process's metrics plus the scrape-time gauges."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (REGISTRY,):
            registry.register(collector)
    registry.register(_callback_collector)
    return generate_latest(registry)


def process_exit() -> None:
    """Forget this process's live gauges (call at exit, multiprocess mode only)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def serve_port(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on its own port from a daemon thread (for the worker, or a private port)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            return

    server = ThreadingHTTPServer((addr, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics", addr, port)
