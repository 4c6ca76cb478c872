"""Django settings, read from the environment in one place (every setting: docs/configuration.md)."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from llm_platform import settings_values
from llm_platform.env import env_bool, env_commands, env_float, env_int, env_list, env_secret, env_str
from llm_platform.private_files import PRIVATE_UMASK
from routing.strategies import RoutingStrategy

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the platform writes under VAR_DIR (the SQLite database with its sessions, the
# generated secrets, logs, broker files, dead letters, audit exports) is for the service's user
# alone: every process that loads these settings (web, worker, beat, manage.py) creates files
# 0600 and directories 0700, and VAR_DIR is made (or tightened to) 0700 when the apps are
# ready (llm_platform.apps), not here: importing the settings writes nothing.
os.umask(PRIVATE_UMASK)
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

# litellm downloads its price map at import time unless told not to; a gateway must not
# phone home (or stall for seconds offline) when it starts.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

DATABASE_URL = env_secret("DATABASE_URL")
REDIS_URL = env_secret("REDIS_URL")
EMBEDDED = not DATABASE_URL

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = settings_values.secret_key(env_secret("SECRET_KEY"), embedded=EMBEDDED, var_dir=VAR_DIR)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "llm_platform.admin_site.PlatformAdminConfig",  # django.contrib.admin, guarded (llm_platform.admin_site)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # serves the API docs' Swagger UI from local static files, not a CDN
    "django_celery_beat",
    "observability",
    "audit",
    "tenants",
    "routing",
    "mcp_gateway",
    "llm_platform",
    "axes",
]

MIDDLEWARE = [
    "llm_platform.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused for a lockout into the lockout page (llm_platform.login_throttle).
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "llm_platform.login_throttle.ThrottledLoginBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "llm_platform.urls"
ASGI_APPLICATION = "llm_platform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if DATABASE_URL:
    try:
        _db = dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
            # A pooled connection that died (a restart, a balancer's idle cut) is found and replaced
            # before a query, instead of failing that query.
            conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", True),
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from exc
    _db.setdefault("OPTIONS", {})
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["OPTIONS"].setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 3, minimum=1))
        # On a partition (packets dropped, nothing refused) a query on an open connection would
        # wait for TCP to give up, which takes minutes: libpq gives up after DB_TCP_USER_TIMEOUT
        # of unacknowledged data, and keepalives find a dead peer of an idle connection.
        _db["OPTIONS"].setdefault("tcp_user_timeout", int(env_float("DB_TCP_USER_TIMEOUT", 10.0, minimum=0) * 1000))
        _db["OPTIONS"].setdefault("keepalives", 1)
        _db["OPTIONS"].setdefault("keepalives_idle", env_int("DB_KEEPALIVES_IDLE", 10, minimum=1))
        _db["OPTIONS"].setdefault("keepalives_interval", 2)
        _db["OPTIONS"].setdefault("keepalives_count", 3)
    elif _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["OPTIONS"] = {**settings_values.SQLITE_OPTIONS, **_db["OPTIONS"]}
        _db["CONN_MAX_AGE"] = 0
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "db.sqlite3"),
        "OPTIONS": settings_values.SQLITE_OPTIONS,
        # A file (not :memory:) so that a live server process in the tests sees the test data.
        "TEST": {"NAME": str(VAR_DIR / "test_db.sqlite3")},
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "llmp")
# Redis on the request path (routing state, change notices, MCP sessions, the cache): a reply
# takes well under a millisecond, so a socket that says nothing for this long is treated as
# an outage (and no retries: the store's circuit breaker decides when to try again).
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.25, minimum=0.01)
# After a store (Redis, the database) failed, this process leaves it alone this long before one
# caller, mostly a background refresh, tries it again; its success closes the breaker.
STORE_RETRY_INTERVAL = env_float("STORE_RETRY_INTERVAL", 1.0, minimum=0.05)


if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": settings_values.redis_cache_options(REDIS_SOCKET_TIMEOUT),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{CACHE_KEY_PREFIX}:asgi"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "KEY_PREFIX": CACHE_KEY_PREFIX}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- admin login throttling (django-axes; counted in the database, so shared by every process) ---
# After ADMIN_LOGIN_FAILURE_LIMIT failures, a username is locked out from that client address for
# ADMIN_LOGIN_COOLOFF seconds, doubled for each lockout that follows the previous one within a day,
# up to ADMIN_LOGIN_COOLOFF_MAX. Failures, lockouts and admin logins are audited (platform chain).
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
ADMIN_LOGIN_COOLOFF = env_float("ADMIN_LOGIN_COOLOFF", 900.0, minimum=1)
ADMIN_LOGIN_COOLOFF_MAX = env_float("ADMIN_LOGIN_COOLOFF_MAX", 86400.0, minimum=1)
AXES_HANDLER = "llm_platform.login_throttle.LoginThrottleHandler"
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = "llm_platform.login_throttle.cooloff"
# By username and address together: someone elsewhere cannot lock the real admin out.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_USERNAME_CALLABLE = "llm_platform.login_throttle.login_username"
AXES_CLIENT_IP_CALLABLE = "llm_platform.login_throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "llm_platform.login_throttle.lockout_response"
# Attempts during a lockout neither extend it nor count as a new lockout (the backoff counts lockouts).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # successful logins are in the audit trail
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # The admin's CSS and JS are public: readable by a proxy that serves STATIC_ROOT, whatever the umask.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage",
        "OPTIONS": {"file_permissions_mode": 0o644, "directory_permissions_mode": 0o755},
    },
}
SERVE_STATIC = env_bool("SERVE_STATIC", True)

# --- deployment security: behind a TLS-terminating proxy (BEHIND_TLS_PROXY=true) ---
# The proxy says how the client connected in X-Forwarded-Proto; it must set (not pass on) that header.
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# Behind TLS the session and CSRF cookies never travel in clear, a plain-HTTP page request is
# redirected to HTTPS, and browsers are told (HSTS) never to try plain HTTP again.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", BEHIND_TLS_PROXY)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_TLS_PROXY)
# Load balancers probe these over plain HTTP; they carry nothing a redirect would protect.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000 if BEHIND_TLS_PROXY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading commits the whole domain to HTTPS in browsers for good: the domain owner's decision.
# Stating it either way (HSTS_PRELOAD=true or false) is that decision, so check --deploy's
# reminder (security.W021) is then silenced.
SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = ["security.W021"] if "HSTS_PRELOAD" in os.environ and not SECURE_HSTS_PRELOAD else []
SESSION_COOKIE_HTTPONLY = True

FERNET_KEYS = settings_values.fernet_keys(env_list("FERNET_KEYS"), secret_key=SECRET_KEY)

# Hot path tuning.
KEY_CACHE_TTL = env_float("KEY_CACHE_TTL", 30.0, minimum=0)
KEY_CACHE_STALE_TTL = env_float("KEY_CACHE_STALE_TTL", 3600.0, minimum=0)
KEY_REVOCATION_POLL = env_float("KEY_REVOCATION_POLL", 1.0, minimum=0)
QUOTA_FAIL_MODE = env_str("QUOTA_FAIL_MODE", "open").lower()
if QUOTA_FAIL_MODE not in ("open", "closed"):
    raise ImproperlyConfigured(f"QUOTA_FAIL_MODE={QUOTA_FAIL_MODE!r} must be 'open' or 'closed'.")
QUOTA_DEFAULT_OUTPUT_TOKENS = env_int("QUOTA_DEFAULT_OUTPUT_TOKENS", 256, minimum=0)
# Where quota counters live: REDIS_URL unless set apart (in-process counters without either).
QUOTA_REDIS_URL = env_secret("QUOTA_REDIS_URL") or REDIS_URL
# The quota store on the request path: each call gets this long and no retry; the first one
# unanswered opens a breaker (requests then follow QUOTA_FAIL_MODE at once), probed this often.
QUOTA_STORE_TIMEOUT = env_float("QUOTA_STORE_TIMEOUT", 0.25, minimum=0.01)
QUOTA_BREAKER_RETRY = env_float("QUOTA_BREAKER_RETRY", 1.0, minimum=0.05)
# The client that runs the quota scripts: lean (a pipelined connection of our own) or redis-py.
QUOTA_REDIS_CLIENT = env_str("QUOTA_REDIS_CLIENT", "lean").lower()
if QUOTA_REDIS_CLIENT not in ("lean", "redis-py"):
    raise ImproperlyConfigured(f"QUOTA_REDIS_CLIENT={QUOTA_REDIS_CLIENT!r} must be 'lean' or 'redis-py'.")
# A concurrency slot is a lease its process renews (every third of it): a dead process's slots free after this.
QUOTA_PARALLEL_LEASE = env_float("QUOTA_PARALLEL_LEASE", 60.0, minimum=0.3)
# Budget counters are set from the usage records (every interval, 0 = never; and after an outage)
# for the requests started more than QUOTA_RECONCILE_LAG seconds ago (longer than a request can run).
QUOTA_RECONCILE_INTERVAL = env_float("QUOTA_RECONCILE_INTERVAL", 60.0, minimum=0)
QUOTA_RECONCILE_LAG = env_float("QUOTA_RECONCILE_LAG", 660.0, minimum=0)
DEPLOYMENT_CACHE_TTL = env_float("DEPLOYMENT_CACHE_TTL", 10.0, minimum=0)
# Database reads of the hot path (key lookups, deployments, route and smart groups, the MCP
# catalogue) run on DB_READ_THREADS threads of their own; a request waits at most DB_READ_WAIT
# seconds for one (then a key it cannot serve gets 503 auth_backend_unavailable), and each
# query there is cut by PostgreSQL after DB_STATEMENT_TIMEOUT seconds (0: no limit).
DB_READ_THREADS = env_int("DB_READ_THREADS", 4, minimum=1)
DB_READ_WAIT = env_float("DB_READ_WAIT", 1.0, minimum=0.01)
DB_STATEMENT_TIMEOUT = env_float("DB_STATEMENT_TIMEOUT", 5.0, minimum=0)
UPSTREAM_TIMEOUT = env_float("UPSTREAM_TIMEOUT", 600.0, minimum=0.1)
UPSTREAM_CONNECT_TIMEOUT = env_float("UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.1)
USAGE_FLUSH_INTERVAL = env_float("USAGE_FLUSH_INTERVAL", 1.0, minimum=0.01)
USAGE_RETENTION_DAYS = env_int("USAGE_RETENTION_DAYS", 30, minimum=0)
USAGE_FLUSH_BATCH = env_int("USAGE_FLUSH_BATCH", 500, minimum=1)
# batch: usage rows wait in memory for the next flush, so a killed process (SIGKILL, OOM, power)
# loses up to USAGE_FLUSH_INTERVAL of answered requests. journal: each answered request's row
# is appended and fsync'd to VAR_DIR/usage-journal before the response's last bytes, and a
# restarted process writes what a dead one left there.
USAGE_DURABILITY = env_str("USAGE_DURABILITY", "batch").lower()
if USAGE_DURABILITY not in ("batch", "journal"):
    raise ImproperlyConfigured(f"USAGE_DURABILITY={USAGE_DURABILITY!r} must be 'batch' or 'journal'.")
# Longest a response waits for its journal append; beyond it, it is sent as under batch.
USAGE_JOURNAL_TIMEOUT = env_float("USAGE_JOURNAL_TIMEOUT", 1.0, minimum=0.001)
# Rows the database refuses are kept per writer in VAR_DIR/dead-letter/<writer>.jsonl, each
# file up to this size (beyond it they are counted in llmp_writer_rows_dropped_total and lost).
DEAD_LETTER_MAX_BYTES = env_int("DEAD_LETTER_MAX_MB", 100, minimum=1) * 1024 * 1024
# The batch writers, by dotted path (manage.py dead_letters replays through them).
BATCH_WRITERS = [
    "routing.usage.usage_writer",
    "audit.services.deferred_audit",
    "routing.ml.samples.sample_writer",
    "tenants.quota.settle_batch",
]
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 20 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

# Celery: Redis when configured; otherwise a filesystem broker under var/ so the embedded
# worker and beat need no service.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = settings_values.broker_transport_options(VAR_DIR / "broker")
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULER = "llm_platform.beat:LeaderScheduler"
CELERY_TIMEZONE = TIME_ZONE

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()

NINJA_PAGINATION_PER_PAGE = 100

# --- audit ---
# Durable audit export: JSONL segments + manifests, to a local directory unless a bucket is set.
AUDIT_EXPORT_DIR = Path(env_str("AUDIT_EXPORT_DIR", str(VAR_DIR / "audit-export")))
AUDIT_EXPORT_SEGMENT_EVENTS = env_int("AUDIT_EXPORT_SEGMENT_EVENTS", 10_000, minimum=1)
AUDIT_EXPORT_S3_BUCKET = env_str("AUDIT_EXPORT_S3_BUCKET", "")
AUDIT_EXPORT_S3_PREFIX = env_str("AUDIT_EXPORT_S3_PREFIX", "audit-export").strip("/")
AUDIT_EXPORT_S3_ENDPOINT_URL = env_str("AUDIT_EXPORT_S3_ENDPOINT_URL", "")
AUDIT_EXPORT_S3_REGION = env_str("AUDIT_EXPORT_S3_REGION", "")
AUDIT_EXPORT_S3_ACCESS_KEY_ID = env_secret("AUDIT_EXPORT_S3_ACCESS_KEY_ID", "")
AUDIT_EXPORT_S3_SECRET_ACCESS_KEY = env_secret("AUDIT_EXPORT_S3_SECRET_ACCESS_KEY", "")
if AUDIT_EXPORT_S3_BUCKET and bool(AUDIT_EXPORT_S3_ACCESS_KEY_ID) != bool(AUDIT_EXPORT_S3_SECRET_ACCESS_KEY):
    raise ImproperlyConfigured(
        "Set both AUDIT_EXPORT_S3_ACCESS_KEY_ID and AUDIT_EXPORT_S3_SECRET_ACCESS_KEY, or neither "
        "(then boto3's default credential chain is used)."
    )

# Refusals (bad keys, denied scopes, quota refusals) are audited in bounded space: per
# interval the first of each kind is written, the rest as one summary with a count.
AUDIT_DENIAL_INTERVAL = env_float("AUDIT_DENIAL_INTERVAL", 60.0, minimum=0.01)
AUDIT_DENIAL_MAX_BUCKETS = env_int("AUDIT_DENIAL_MAX_BUCKETS", 1000, minimum=1)

# --- scheduler leader, periodic jobs and secret rotation ---
BEAT_LEASE_BACKEND = env_str("BEAT_LEASE_BACKEND", "redis" if REDIS_URL else "database").lower()
if BEAT_LEASE_BACKEND not in ("redis", "database"):
    raise ImproperlyConfigured(f"BEAT_LEASE_BACKEND={BEAT_LEASE_BACKEND!r} must be 'redis' or 'database'.")
if BEAT_LEASE_BACKEND == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("BEAT_LEASE_BACKEND=redis needs REDIS_URL.")
# A standby takes over at most BEAT_LEASE_TTL + BEAT_LEASE_POLL seconds after the leader dies.
BEAT_LEASE_TTL = env_float("BEAT_LEASE_TTL", 10.0, minimum=1.0)
BEAT_LEASE_POLL = env_float("BEAT_LEASE_POLL", 1.0, minimum=0.05)
# A period of a job that ended without a run (its leader died, or beat was down) is run when
# a leader notices, under its own period key: at most this many of the latest missed periods
# per job (0: none). Jobs whose run covers all before it (audit export, secret rotation,
# usage prune) run the latest missed period only.
BEAT_CATCH_UP_PERIODS = env_int("BEAT_CATCH_UP_PERIODS", 3, minimum=0)
AUDIT_EXPORT_INTERVAL = env_int("AUDIT_EXPORT_INTERVAL", 5, minimum=1)
SECRET_ROTATION_INTERVAL = env_int("SECRET_ROTATION_INTERVAL", 60, minimum=1)
SECRET_ROTATION_BATCH = env_int("SECRET_ROTATION_BATCH", 200, minimum=1)
API_KEY_ROTATION_GRACE_HOURS = env_float("API_KEY_ROTATION_GRACE_HOURS", 24.0, minimum=0)
# The periodic jobs seeded into the admin's schedule (llm_platform.jobs.periodic_tasks_seed).
CELERY_BEAT_SCHEDULE = {
    "usage-prune": {"task": "routing.tasks.usage_prune", "schedule": 3600.0},
    **(
        {"quota-reconcile": {"task": "tenants.tasks.quota_reconcile", "schedule": QUOTA_RECONCILE_INTERVAL}}
        if QUOTA_REDIS_URL and QUOTA_RECONCILE_INTERVAL
        else {}
    ),
    "audit-export": {"task": "audit.tasks.audit_export", "schedule": AUDIT_EXPORT_INTERVAL * 60.0},
    "secret-rotate": {"task": "tenants.tasks.secret_rotate", "schedule": SECRET_ROTATION_INTERVAL * 60.0},
}

# --- observability and operations ---
# Tracing is configured by the standard OTEL_* variables (observability.telemetry); these
# are the platform's own knobs for logs, metrics, readiness and the drain.
# OTEL_FAST_PATH=false: the SDK's own spans, batch processor and OTLP exporter instead of
# lean spans and the export child (for comparison, or when a collector disagrees with ours).
OTEL_FAST_PATH = env_bool("OTEL_FAST_PATH", True)
LOG_FORMAT = env_str("LOG_FORMAT", "text" if EMBEDDED else "json").lower()
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be 'text' or 'json'.")
REQUEST_LOG = env_bool("REQUEST_LOG", True)
LOGGING = settings_values.logging_config(level=LOG_LEVEL, log_format=LOG_FORMAT, request_log=REQUEST_LOG)
METRICS_TOKEN = env_secret("METRICS_TOKEN")
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)
METRICS_PORT = env_int("METRICS_PORT", 0, minimum=0)
METRICS_TENANT_LABEL = env_bool("METRICS_TENANT_LABEL", True)
READYZ_CACHE_SECONDS = env_float("READYZ_CACHE_SECONDS", 1.0, minimum=0)
DRAIN_TIMEOUT = env_float("DRAIN_TIMEOUT", 30.0, minimum=0)
# Streamed responses (manage.py serve): a connection buffers at most STREAM_BUFFER_BYTES the
# client has not read; while it is full the stream (and its upstream) waits, and a client that
# leaves it full for STREAM_STALL_TIMEOUT seconds is cut. See docs/operations.md, "Slow clients".
STREAM_BACKPRESSURE = env_bool("STREAM_BACKPRESSURE", True)
STREAM_BUFFER_BYTES = env_int("STREAM_BUFFER_BYTES", 65536, minimum=1024)
if STREAM_BUFFER_BYTES > 64 * 1024 * 1024:
    raise ImproperlyConfigured(f"STREAM_BUFFER_BYTES={STREAM_BUFFER_BYTES} must be at most 67108864 (64 MiB).")
STREAM_STALL_TIMEOUT = env_float("STREAM_STALL_TIMEOUT", 30.0, minimum=0.1)
# Changes to private parts of Twisted, daphne's HTTP layer (llm_platform.asgi): a cache on its
# Content-Type parser and JSON answers to oversized request heads. Off leaves Twisted as it is,
# e.g. to rule them out after a Twisted upgrade.
TWISTED_PATCHES = env_bool("TWISTED_PATCHES", True)

# --- ML routing ---
# Seconds a process keeps its smart groups before re-reading them (a promotion or edit
# reaches every process sooner, through the shared epoch polled every KEY_REVOCATION_POLL).
ML_ROUTER_CACHE_TTL = env_float("ML_ROUTER_CACHE_TTL", 30.0, minimum=0.0)
# Worker threads per process for router inference (kept off the event loop).
ML_ROUTER_THREADS = env_int("ML_ROUTER_THREADS", 2, minimum=1)

# --- routing ---
# Defaults for model names without a route group (admin "Route groups" or loadconfig's
# router_settings); names follow LiteLLM Router's.
ROUTING_STRATEGIES = tuple(RoutingStrategy.values)  # the one list, in routing/strategies.py
ROUTING_DEFAULT_STRATEGY = env_str("ROUTING_DEFAULT_STRATEGY", "simple-shuffle")
if ROUTING_DEFAULT_STRATEGY not in ROUTING_STRATEGIES:
    raise ImproperlyConfigured(
        f"ROUTING_DEFAULT_STRATEGY={ROUTING_DEFAULT_STRATEGY!r} must be one of {', '.join(ROUTING_STRATEGIES)}."
    )
ROUTING_NUM_RETRIES = env_int("ROUTING_NUM_RETRIES", 2, minimum=0)
ROUTING_RETRY_AFTER = env_float("ROUTING_RETRY_AFTER", 0.05, minimum=0)
ROUTING_MAX_BACKOFF = env_float("ROUTING_MAX_BACKOFF", 5.0, minimum=0)
ROUTING_MAX_ATTEMPTS = env_int("ROUTING_MAX_ATTEMPTS", 10, minimum=1)
ROUTING_ALLOWED_FAILS = env_int("ROUTING_ALLOWED_FAILS", 3, minimum=0)
ROUTING_COOLDOWN_TIME = env_float("ROUTING_COOLDOWN_TIME", 5.0, minimum=0)
# How old a process's view of the shared routing state (Redis) may get before it is
# refreshed in the background (one round trip per group per interval, not per request),
# and how old before a request waits for the refresh.
ROUTING_STATE_SYNC = env_float("ROUTING_STATE_SYNC", 0.05, minimum=0)
ROUTING_STATE_MAX_STALE = env_float("ROUTING_STATE_MAX_STALE", 1.0, minimum=0)
ROUTING_LATENCY_WINDOW = env_int("ROUTING_LATENCY_WINDOW", 20, minimum=1)

# --- MCP gateway ---
# Hosts and CIDRs upstream MCP servers may resolve to although they are loopback, private or
# link-local (joined with the admin's SSRF allow-list), e.g. "127.0.0.1,10.0.0.0/8".
SSRF_ALLOWLIST = env_list("SSRF_ALLOWLIST", [])
# Browsers' Origin values allowed besides the server's own host (DNS-rebinding defence).
MCP_ALLOWED_ORIGINS = env_list("MCP_ALLOWED_ORIGINS", [])
MCP_SESSION_IDLE_TIMEOUT = env_float("MCP_SESSION_IDLE_TIMEOUT", 1800.0, minimum=1)
MCP_SSE_HEARTBEAT = env_float("MCP_SSE_HEARTBEAT", 15.0, minimum=0.1)
MCP_MAX_STREAMS_PER_TENANT = env_int("MCP_MAX_STREAMS_PER_TENANT", 1000, minimum=1)
MCP_UPSTREAM_TIMEOUT = env_float("MCP_UPSTREAM_TIMEOUT", 60.0, minimum=0.1)
MCP_CATALOG_TTL = env_float("MCP_CATALOG_TTL", 30.0, minimum=0)
# Local (stdio) upstreams: only the commands the operator names here can be started, by name;
# admins pick one of these names, never a command line. JSON: {"name": ["argv0", "arg", ...]}.
MCP_STDIO_COMMANDS = env_commands("MCP_STDIO_COMMANDS")
# Address-space limit of each stdio upstream process (MiB; 0 = no limit) and its open files.
MCP_STDIO_MEMORY_MB = env_int("MCP_STDIO_MEMORY_MB", 1024, minimum=0)
MCP_STDIO_MAX_FILES = env_int("MCP_STDIO_MAX_FILES", 256, minimum=16)
# How a POST's answer is sent: "auto" streams it as SSE when there is something to relay
# before the response (progress of a tools/call that asked for it), else one JSON body.
MCP_POST_RESPONSE = env_str("MCP_POST_RESPONSE", "auto").lower()
if MCP_POST_RESPONSE not in ("auto", "json", "sse"):
    raise ImproperlyConfigured("MCP_POST_RESPONSE must be auto, json or sse.")
# Events kept per SSE stream for Last-Event-ID resumption, and for how long after the last one.
MCP_EVENT_HISTORY = env_int("MCP_EVENT_HISTORY", 256, minimum=1)
MCP_EVENT_TTL = env_float("MCP_EVENT_TTL", 600.0, minimum=1)
# Messages in one JSON-RPC batch (2025-03-26): a longer batch is refused whole, before it is parsed past the limit.
MCP_MAX_BATCH = env_int("MCP_MAX_BATCH", 100, minimum=1)
# Bytes of JSON in the answer to one request or batch: an answer (or a batch's next item) past this is replaced
# by a -32003 error, and a batch's remaining items are answered with that error without being run.
MCP_MAX_RESPONSE_BYTES = env_int("MCP_MAX_RESPONSE_BYTES", 16 * 1024 * 1024, minimum=4096)
