"""When the database goes away, keys already seen keep working and unseen keys get 503, never 401."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import openai
import pytest
from django.db import connection

from tests import live


@pytest.fixture
def postgres_only(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs a database server whose connection can be cut (PostgreSQL); SQLite is a local file")


def test_seen_keys_keep_working_and_unseen_keys_get_503_while_the_database_is_down(
    postgres_only, tmp_path, owner, key_factory, deployment_factory
):
    deployment_factory()
    seen, unseen = key_factory(owner, "seen"), key_factory(owner, "unseen")
    url = urlsplit(live.test_database_url())
    proxy = live.TcpProxy((url.hostname or "127.0.0.1", url.port or 5432))
    proxied = urlunsplit(
        url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}" if url.username else f"127.0.0.1:{proxy.port}")
    )
    with live.daphne_server(tmp_path, DATABASE_URL=proxied, KEY_CACHE_TTL="0.2", DB_CONNECT_TIMEOUT="1") as server:
        clients = {
            name: openai.OpenAI(base_url=f"{server.url}/v1", api_key=issued.secret, max_retries=0)
            for name, issued in (("seen", seen), ("unseen", unseen))
        }
        hello = [{"role": "user", "content": "hi"}]
        assert clients["seen"].chat.completions.create(model="gpt-4o-mini", messages=hello).choices
        proxy.cut()
        time.sleep(0.3)  # the cached entry is no longer fresh: only the stale path can serve it
        for _ in range(3):  # past the fresh TTL: served from the stale entry
            assert clients["seen"].chat.completions.create(model="gpt-4o-mini", messages=hello).choices
        with pytest.raises(openai.InternalServerError) as unavailable:
            clients["unseen"].chat.completions.create(model="gpt-4o-mini", messages=hello)
        assert unavailable.value.status_code == 503
        assert unavailable.value.body["code"] == "auth_backend_unavailable"
