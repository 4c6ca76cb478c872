"""The lean Redis connection behind the quota reserve: replies, script loading, errors, reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from django.conf import settings

from tenants.resp import RespConnection, RespError, resp_command

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="talks to a real Redis (REDIS_URL)")

SCRIPT = "return {redis.call('INCRBY', KEYS[1], ARGV[1]), tonumber(ARGV[2])}"


@pytest.fixture
def key() -> str:
    name = f"test:resp:{uuid.uuid4().hex}"
    yield name
    redis.Redis.from_url(settings.REDIS_URL).delete(name)


def test_resp_command_encodes_an_array_of_bulk_strings() -> None:
    assert resp_command("GET", b"k", 12) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"


async def test_evalsha_loads_the_script_when_redis_lacks_it_and_returns_integers(key: str) -> None:
    redis.Redis.from_url(settings.REDIS_URL).script_flush()
    connection = RespConnection(settings.REDIS_URL)
    try:
        assert await connection.evalsha(SCRIPT, [key], [5, 7]) == [5, 7]
        assert await connection.evalsha(SCRIPT, [key], [2, -1]) == [7, -1]
    finally:
        connection.close()


async def test_the_url_database_is_selected(key: str) -> None:
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    connection = RespConnection(f"{base}/5")
    try:
        await connection.call(resp_command("SET", key, "in-five"))
        assert redis.Redis.from_url(f"{base}/5").get(key) == b"in-five"
        assert redis.Redis.from_url(f"{base}/4").get(key) is None
    finally:
        redis.Redis.from_url(f"{base}/5").delete(key)
        connection.close()


async def test_an_error_reply_raises_and_the_connection_stays_usable(key: str) -> None:
    connection = RespConnection(settings.REDIS_URL)
    try:
        await connection.call(resp_command("SET", key, "text"))
        with pytest.raises(RespError, match="not an integer"):
            await connection.evalsha(SCRIPT, [key], [1, 0])
        assert await connection.call(resp_command("GET", key)) == b"text"
    finally:
        connection.close()


async def test_an_error_inside_an_array_is_a_value_not_a_desynchronised_stream(key: str) -> None:
    connection = RespConnection(settings.REDIS_URL)
    try:
        await connection.call(resp_command("SET", key, "text"))
        await connection.call(resp_command("MULTI"))
        await connection.call(resp_command("INCR", key))
        await connection.call(resp_command("GET", key))
        reply = await connection.call(resp_command("EXEC"))
        assert isinstance(reply[0], RespError)
        assert reply[1] == b"text"
        assert await connection.call(resp_command("PING")) == b"PONG"
    finally:
        connection.close()


async def test_a_killed_connection_is_replaced_on_the_next_call(key: str) -> None:
    connection = RespConnection(settings.REDIS_URL)
    try:
        await connection.call(resp_command("CLIENT", "SETNAME", "resp-test-victim"))
        admin = redis.Redis.from_url(settings.REDIS_URL)
        victim = next(c for c in admin.client_list() if c.get("name") == "resp-test-victim")
        admin.client_kill_filter(_id=victim["id"])
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, OSError)):
            await connection.call(resp_command("PING"))
        assert await connection.call(resp_command("PING")) == b"PONG"
    finally:
        connection.close()


async def test_an_unreachable_server_fails_within_the_timeout() -> None:
    connection = RespConnection("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(OSError):
        await connection.call(resp_command("PING"))


def test_only_tcp_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RespConnection("unix:///var/run/redis.sock")
