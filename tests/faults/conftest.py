"""The stores (PostgreSQL and Redis) behind proxies the tests can black-hole, for servers started on them."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connection

from tests import live
from tests.faults.stores import Proxy, Stores, proxied


@pytest.fixture(scope="module")
def stores(django_db_setup: None) -> Iterator[Stores]:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("store outages need PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) to black-hole")
    db = urlsplit(live.test_database_url())
    redis = urlsplit(settings.REDIS_URL)
    database_proxy = Proxy((db.hostname or "127.0.0.1", db.port or 5432))
    redis_proxy = Proxy((redis.hostname or "127.0.0.1", redis.port or 6379))
    env = {
        "DATABASE_URL": proxied(live.test_database_url(), database_proxy),
        "REDIS_URL": proxied(settings.REDIS_URL, redis_proxy),
        # The production shape: changes reach the servers through the background poller.
        "KEY_REVOCATION_POLL": "0.2",
        "DB_CONNECT_TIMEOUT": "1",
        "STORE_RETRY_INTERVAL": "0.5",
        "REQUEST_LOG": "false",
    }
    yield Stores(database_proxy, redis_proxy, env)
    database_proxy.restore()
    redis_proxy.restore()
