"""The quota scripts' lean Redis connection: reply parsing, pipelining against the real Redis,
the EVAL fallback, and what a dropped or silent connection does."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from django.conf import settings

from tenants.quota.lean_redis import (
    _INCOMPLETE,
    RedisReplyError,
    Script,
    command_bytes,
    reply_parse,
    script_connection_for,
)


def test_command_bytes_is_resp_array_of_bulk_strings():
    assert command_bytes("GET", "k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert command_bytes("INCRBY", "clé", -12) == b"*3\r\n$6\r\nINCRBY\r\n$4\r\ncl\xc3\xa9\r\n$3\r\n-12\r\n"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b":42\r\n", 42),
        (b":-3\r\n", -3),
        (b"+OK\r\n", b"OK"),
        (b"$5\r\nhe\r\nl\r\n", b"he\r\nl"),
        (b"$-1\r\n", None),
        (b"*3\r\n:0\r\n:7\r\n$-1\r\n", [0, 7, None]),
        (b"*2\r\n*1\r\n:1\r\n+x\r\n", [[1], b"x"]),
        (b"*0\r\n", []),
    ],
)
def test_reply_parse_whole_and_split_at_every_byte(raw, value):
    assert reply_parse(raw + b":9\r\n", 0) == (value, len(raw))
    for cut in range(len(raw)):
        assert reply_parse(raw[:cut], 0) == (_INCOMPLETE, 0)


def test_reply_parse_returns_error_replies_as_exceptions():
    error, end = reply_parse(b"-NOSCRIPT No matching script.\r\n", 0)
    assert isinstance(error, RedisReplyError)
    assert str(error) == "NOSCRIPT No matching script."
    assert end == 31


def test_only_plain_urls_get_the_lean_connection():
    connection = script_connection_for("redis://user:secret@redis.internal:6390/4")
    assert connection is not None
    assert (connection.host, connection.port, connection.db) == ("redis.internal", 6390, 4)
    assert (connection.username, connection.password) == ("user", "secret")
    assert script_connection_for("unix:///run/redis.sock?db=2").path == "/run/redis.sock"
    # TLS and extra client options stay with redis-py, which knows them.
    assert script_connection_for("rediss://redis.internal:6390/0") is None
    assert script_connection_for("redis://redis.internal:6390/0?health_check_interval=5") is None


async def test_a_silent_server_times_out_instead_of_hanging():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    try:
        connection = script_connection_for(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout=0.2)
        with pytest.raises(TimeoutError):
            await connection.call("PING")
    finally:
        listener.close()


async def test_nothing_listening_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        await script_connection_for(f"redis://127.0.0.1:{port}/0", timeout=0.5).call("PING")


@pytest.fixture
def redis_url():
    if not settings.REDIS_URL:
        pytest.skip("needs a real Redis (REDIS_URL)")
    return settings.REDIS_URL


async def test_pipelined_calls_each_get_their_own_reply(redis_url):
    connection = script_connection_for(redis_url)
    key = f"test:lean:{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(*(connection.call("INCRBY", key, 1) for _ in range(300)))
        # Sent back to back on one socket: Redis ran them in order, and each caller got its own.
        assert replies == list(range(1, 301))
    finally:
        await connection.call("DEL", key)
        connection.close()


async def test_unknown_script_falls_back_to_eval_then_runs_by_sha(redis_url):
    connection = script_connection_for(redis_url)
    # A script this Redis has never seen (unique text), so the first EVALSHA gets NOSCRIPT.
    script = Script(f"-- {uuid.uuid4().hex}\nreturn {{tonumber(ARGV[1]) + 1, #KEYS}}")
    try:
        assert await connection.call("SCRIPT", "EXISTS", script.sha) == [0]
        assert await connection.evalsha(script, ["a", "b"], [41]) == [42, 2]
        assert await connection.call("SCRIPT", "EXISTS", script.sha) == [1]
        assert await connection.evalsha(script, [], [1]) == [2, 0]
        with pytest.raises(RedisReplyError):
            await connection.call("INCRBY", "k", "not-a-number")
        assert await connection.call("PING") == b"PONG"  # an error reply leaves the stream usable
    finally:
        connection.close()


async def test_selects_the_urls_database(redis_url):
    connection = script_connection_for(redis_url)
    try:
        info = await connection.call("CLIENT", "INFO")
        assert f" db={connection.db} ".encode() in info
    finally:
        connection.close()


async def test_a_killed_connection_is_noticed_and_the_next_call_reconnects(redis_url):
    connection = script_connection_for(redis_url)
    try:
        own_id = await connection.call("CLIENT", "ID")
        killer = script_connection_for(redis_url)
        try:
            assert await killer.call("CLIENT", "KILL", "ID", own_id) == 1  # clients killed
        finally:
            killer.close()
        for _ in range(100):  # the server closes the socket; the loop sees it shortly after
            if connection._protocol.lost:
                break
            await asyncio.sleep(0.02)
        assert connection._protocol.lost
        assert await connection.call("PING") == b"PONG"
        assert await connection.call("CLIENT", "ID") != own_id
    finally:
        connection.close()
