"""Django settings, read from the environment in one place (see README's configuration table)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from llm_platform.env import env_bool, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# litellm downloads its price map at import time unless told not to; a gateway must not
# phone home (or stall for seconds offline) when it starts.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

DATABASE_URL = env_secret("DATABASE_URL")
REDIS_URL = env_secret("REDIS_URL")
EMBEDDED = not DATABASE_URL

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = env_secret("SECRET_KEY")
    if key:
        return key
    if not EMBEDDED:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) to a long random string; "
            "it is only generated automatically in the embedded mode (DATABASE_URL unset)."
        )
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # serves the API docs' Swagger UI from local static files, not a CDN
    "django_celery_beat",
    "audit",
    "tenants",
    "routing",
    "mcp_gateway",
    "llm_platform",
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

_SQLITE_OPTIONS = {
    # WAL lets the API read while the usage writer and the admin write.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from exc
    _db.setdefault("OPTIONS", {})
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["OPTIONS"].setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 3, minimum=1))
    elif _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["OPTIONS"] = {**_SQLITE_OPTIONS, **_db["OPTIONS"]}
        _db["CONN_MAX_AGE"] = 0
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": _SQLITE_OPTIONS,
        # A file (not :memory:) so that a live server process in the tests sees the test data.
        "TEST": {"NAME": str(VAR_DIR / "test_db.sqlite3")},
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "llmp")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
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
SERVE_STATIC = env_bool("SERVE_STATIC", True)

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None


def _fernet_keys() -> list[str]:
    keys = env_list("FERNET_KEYS")
    if keys:
        from cryptography.fernet import Fernet

        for index, key in enumerate(keys):
            try:
                Fernet(key)
            except ValueError:
                raise ImproperlyConfigured(
                    f"FERNET_KEYS entry {index + 1} is not a Fernet key (32 url-safe base64 bytes); make one with "
                    '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.'
                ) from None
        return keys
    # Derived from SECRET_KEY so the embedded mode needs no extra setting; production sets
    # FERNET_KEYS explicitly so SECRET_KEY can change without losing provider credentials.
    return [base64.urlsafe_b64encode(hashlib.sha256(f"fernet:{SECRET_KEY}".encode()).digest()).decode()]


FERNET_KEYS = _fernet_keys()

# Hot path tuning.
KEY_CACHE_TTL = env_float("KEY_CACHE_TTL", 30.0, minimum=0)
KEY_CACHE_STALE_TTL = env_float("KEY_CACHE_STALE_TTL", 3600.0, minimum=0)
KEY_REVOCATION_POLL = env_float("KEY_REVOCATION_POLL", 1.0, minimum=0)
QUOTA_FAIL_MODE = env_str("QUOTA_FAIL_MODE", "open").lower()
if QUOTA_FAIL_MODE not in ("open", "closed"):
    raise ImproperlyConfigured(f"QUOTA_FAIL_MODE={QUOTA_FAIL_MODE!r} must be 'open' or 'closed'.")
QUOTA_DEFAULT_OUTPUT_TOKENS = env_int("QUOTA_DEFAULT_OUTPUT_TOKENS", 256, minimum=0)
DEPLOYMENT_CACHE_TTL = env_float("DEPLOYMENT_CACHE_TTL", 10.0, minimum=0)
UPSTREAM_TIMEOUT = env_float("UPSTREAM_TIMEOUT", 600.0, minimum=0.1)
UPSTREAM_CONNECT_TIMEOUT = env_float("UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.1)
USAGE_FLUSH_INTERVAL = env_float("USAGE_FLUSH_INTERVAL", 1.0, minimum=0.01)
USAGE_RETENTION_DAYS = env_int("USAGE_RETENTION_DAYS", 30, minimum=0)
USAGE_FLUSH_BATCH = env_int("USAGE_FLUSH_BATCH", 500, minimum=1)
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 20 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

# Celery: Redis when configured; otherwise a filesystem broker under var/ so the embedded
# worker and beat need no service.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    CELERY_BROKER_URL = "filesystem://"
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "out").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE = {
    "usage-prune": {"task": "routing.tasks.usage_prune", "schedule": 3600.0},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}

NINJA_PAGINATION_PER_PAGE = 100

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
