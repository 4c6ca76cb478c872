"""The routing state (in flight, latency, usage, cooldowns): in process, or shared through Redis in batches.

The state (requests in flight, latency windows, rpm/tpm usage, failures and cooldowns)
lives in Redis when ``REDIS_URL`` is set, so every server process routes as one, and in
process memory otherwise. On the hot path a process reads its snapshot of a group's state
plus its own changes not yet sent. A snapshot older than ``ROUTING_STATE_SYNC`` is
refreshed in the background (one pipelined round trip per group, shared by every request
meanwhile); a request waits for the refresh only when the snapshot is older than
``ROUTING_STATE_MAX_STALE`` (an idle group) or missing, and then at most
``REDIS_SOCKET_TIMEOUT``. Its own changes go to Redis in one pipeline every
``FLUSH_INTERVAL``. Only a failure pays a round trip of its own: one Lua script counts it
and starts the cooldown atomically. While Redis is unreachable (its circuit breaker open)
nothing waits on it: the process routes on its own state and keeps its in-flight changes
for when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings

from core.breaker import redis_breaker, redis_options
from core.registry import Singleton

if TYPE_CHECKING:
    from routing.selectors import DeploymentTarget, GroupPolicy

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.02
INFLIGHT_TTL_S = 15 * 60  # a crashed process's in-flight count heals after this
WINDOW_TTL_S = 3600

# KEYS: fails counter, cooldown key. ARGV: allowed_fails, fail window ms, cooldown ms, now ms.
# Returns the cooldown's end (ms since the epoch) when this failure started one, else 0.
FAIL_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) and tonumber(ARGV[3]) > 0 then
  redis.call('DEL', KEYS[1])
  local untl = tonumber(ARGV[4]) + tonumber(ARGV[3])
  redis.call('SET', KEYS[2], untl, 'PX', ARGV[3])
  return untl
end
return 0
"""


@dataclass(slots=True)
class DeploymentState:
    """What routing knows about one deployment right now."""

    cooldown_until: float = 0.0  # wall clock seconds
    inflight: int = 0
    minute: int = 0
    rpm_used: int = 0
    tpm_used: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=settings.ROUTING_LATENCY_WINDOW))
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=settings.ROUTING_LATENCY_WINDOW))
    fails: list[float] = field(default_factory=list)

    def usage_at(self, now: float) -> tuple[int, int]:
        """Requests and tokens counted in the minute of ``now`` (none when the count is of an earlier minute)."""
        return (self.rpm_used, self.tpm_used) if self.minute == _minute(now) else (0, 0)


def _minute(now: float) -> int:
    return int(now // 60)


class LocalRouteState:
    """Routing state in this process only (the embedded default, or Redis unreachable)."""

    shared = False

    def __init__(self) -> None:
        self.states: dict[int, DeploymentState] = {}

    def state_of(self, deployment_id: int) -> DeploymentState:
        """This process's view of one deployment, made on first use."""
        state = self.states.get(deployment_id)
        if state is None:
            state = self.states[deployment_id] = DeploymentState()
        return state

    async def view(self, targets: list[DeploymentTarget]) -> dict[int, DeploymentState]:
        return {target.id: self.state_of(target.id) for target in targets}

    def begin(self, deployment_id: int, tokens: int) -> None:
        state = self.state_of(deployment_id)
        state.inflight += 1
        minute = _minute(time.time())
        if state.minute != minute:
            state.minute, state.rpm_used, state.tpm_used = minute, 0, 0
        state.rpm_used += 1
        state.tpm_used += tokens

    def end(self, deployment_id: int, *, latency_ms: float | None, ttft_ms: float | None, tokens: int) -> None:
        state = self.state_of(deployment_id)
        state.inflight = max(0, state.inflight - 1)
        if tokens and state.minute == _minute(time.time()):
            state.tpm_used += tokens
        if latency_ms is not None:
            state.latencies.append(latency_ms)
        if ttft_ms is not None:
            state.ttfts.append(ttft_ms)

    async def fail(self, deployment_id: int, policy: GroupPolicy) -> float:
        """Count a failure; returns when the cooldown it started ends (0: none started)."""
        state = self.state_of(deployment_id)
        now = time.time()
        state.fails = [at for at in state.fails if at > now - policy.fail_window]
        state.fails.append(now)
        if len(state.fails) > policy.allowed_fails and policy.cooldown_time > 0:
            state.fails = []
            state.cooldown_until = now + policy.cooldown_time
            return state.cooldown_until
        return 0.0

    async def drain(self) -> None:
        """Nothing to send: this process holds the only copy."""


class RedisRouteState(LocalRouteState):
    """Routing state shared through Redis; ``states`` is this process's snapshot of it."""

    shared = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._fetched: dict[int, float] = {}
        self._fetching: dict[frozenset[int], asyncio.Future[None]] = {}
        # Changes not yet sent: in-flight and usage deltas, latency samples.
        self._inflight: dict[int, int] = {}
        self._usage: dict[tuple[int, int], list[int]] = {}  # (id, minute) -> [requests, tokens]
        self._latencies: dict[tuple[int, str], list[float]] = {}
        self._scheduled = False
        self._flushing: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # for the benchmark: Redis calls made by this process
        self._warned_at = 0.0

    def _client(self) -> Any:
        clients = route_redis_clients()
        key = (self.url, asyncio.get_running_loop())
        client = clients.get(key)
        if client is None:
            import redis.asyncio as redis

            client = cast(Any, redis.Redis.from_url(self.url, **redis_options()))
            client.fail_script = client.register_script(FAIL_LUA)
            clients[key] = client
        return client

    def _key(self, deployment_id: int, part: str) -> str:
        return f"{settings.CACHE_KEY_PREFIX}:route:{deployment_id}:{part}"

    def _unavailable(self, exc: Exception) -> None:
        # Route on what this process knows rather than fail requests; say so, but not per request.
        redis_breaker.failure(exc)
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            logger.warning("routing state in Redis unavailable, routing on local state: %s", exc)

    async def view(self, targets: list[DeploymentTarget]) -> dict[int, DeploymentState]:
        """The group's state; refreshed in the background when older than ``ROUTING_STATE_SYNC``,
        and waited for only when older than ``ROUTING_STATE_MAX_STALE`` (or never read)."""
        now = time.monotonic()
        ages = [now - self._fetched.get(t.id, -1e9) for t in targets]
        if max(ages) >= settings.ROUTING_STATE_SYNC:
            ids = frozenset(t.id for t in targets)
            pending = self._fetching.get(ids)
            if pending is None:
                if not redis_breaker.allow():
                    # Redis is known to be away: route on this process's own state, at no cost.
                    return {target.id: self.state_of(target.id) for target in targets}
                pending = self._fetching[ids] = asyncio.ensure_future(self._refresh(ids))
            if max(ages) >= settings.ROUTING_STATE_MAX_STALE and redis_breaker.closed:
                # Never longer than one Redis reply may take: past that, the local state routes.
                # A trial while the breaker is open is not waited for at all.
                try:
                    await asyncio.wait_for(asyncio.shield(pending), settings.REDIS_SOCKET_TIMEOUT)
                except TimeoutError:
                    pass
        return {target.id: self.state_of(target.id) for target in targets}

    async def _refresh(self, ids: frozenset[int]) -> None:
        try:
            await self._fetch(sorted(ids))
        finally:
            del self._fetching[ids]

    async def _fetch(self, ids: list[int]) -> None:
        minute = _minute(time.time())
        window = settings.ROUTING_LATENCY_WINDOW
        try:
            pipe = self._client().pipeline(transaction=False)
            for deployment_id in ids:
                pipe.get(self._key(deployment_id, "cd"))
                pipe.get(self._key(deployment_id, "inflight"))
                pipe.get(self._key(deployment_id, f"rpm:{minute}"))
                pipe.get(self._key(deployment_id, f"tpm:{minute}"))
                pipe.lrange(self._key(deployment_id, "lat"), 0, window - 1)
                pipe.lrange(self._key(deployment_id, "ttft"), 0, window - 1)
            self.round_trips += 1
            reply = await pipe.execute()
        except Exception as exc:
            self._unavailable(exc)
            for deployment_id in ids:
                self._fetched[deployment_id] = time.monotonic()
            return
        redis_breaker.success()
        fetched = time.monotonic()
        for index, deployment_id in enumerate(ids):
            cooldown, inflight, rpm, tpm, latencies, ttfts = reply[6 * index : 6 * index + 6]
            state = self.state_of(deployment_id)
            usage = self._usage.get((deployment_id, minute), [0, 0])
            state.cooldown_until = int(cooldown) / 1000 if cooldown else 0.0
            state.inflight = max(0, int(inflight or 0) + self._inflight.get(deployment_id, 0))
            state.minute = minute
            state.rpm_used = int(rpm or 0) + usage[0]
            state.tpm_used = int(tpm or 0) + usage[1]
            state.latencies.clear()
            state.latencies.extend(float(v) for v in reversed(latencies))
            state.latencies.extend(self._latencies.get((deployment_id, "lat"), ()))
            state.ttfts.clear()
            state.ttfts.extend(float(v) for v in reversed(ttfts))
            state.ttfts.extend(self._latencies.get((deployment_id, "ttft"), ()))
            self._fetched[deployment_id] = fetched

    def begin(self, deployment_id: int, tokens: int) -> None:
        super().begin(deployment_id, tokens)
        self._inflight[deployment_id] = self._inflight.get(deployment_id, 0) + 1
        usage = self._usage.setdefault((deployment_id, _minute(time.time())), [0, 0])
        usage[0] += 1
        usage[1] += tokens
        self._flush_later()

    def end(self, deployment_id: int, *, latency_ms: float | None, ttft_ms: float | None, tokens: int) -> None:
        super().end(deployment_id, latency_ms=latency_ms, ttft_ms=ttft_ms, tokens=tokens)
        self._inflight[deployment_id] = self._inflight.get(deployment_id, 0) - 1
        if tokens:
            self._usage.setdefault((deployment_id, _minute(time.time())), [0, 0])[1] += tokens
        if latency_ms is not None:
            self._latencies.setdefault((deployment_id, "lat"), []).append(latency_ms)
        if ttft_ms is not None:
            self._latencies.setdefault((deployment_id, "ttft"), []).append(ttft_ms)
        self._flush_later()

    async def fail(self, deployment_id: int, policy: GroupPolicy) -> float:
        if not redis_breaker.allow():
            return await super().fail(deployment_id, policy)
        now = time.time()
        try:
            self.round_trips += 1
            until = await self._client().fail_script(
                keys=[self._key(deployment_id, "fails"), self._key(deployment_id, "cd")],
                args=[
                    policy.allowed_fails,
                    max(1, int(policy.fail_window * 1000)),
                    int(policy.cooldown_time * 1000),
                    int(now * 1000),
                ],
            )
        except Exception as exc:
            self._unavailable(exc)
            return await super().fail(deployment_id, policy)
        if until:
            self.state_of(deployment_id).cooldown_until = int(until) / 1000
            return int(until) / 1000
        return 0.0

    def _flush_later(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_soon)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Send this process's changes since the last flush in one pipeline."""
        self._scheduled = False
        inflight, self._inflight = self._inflight, {}
        usage, self._usage = self._usage, {}
        latencies, self._latencies = self._latencies, {}
        if not (inflight or usage or latencies):
            return
        if not redis_breaker.allow():
            self._keep(inflight, usage)
            return
        window = settings.ROUTING_LATENCY_WINDOW
        try:
            pipe = self._client().pipeline(transaction=False)
            for deployment_id, delta in inflight.items():
                if delta:
                    key = self._key(deployment_id, "inflight")
                    pipe.incrby(key, delta)
                    pipe.expire(key, INFLIGHT_TTL_S)
            for (deployment_id, minute), (requests, tokens) in usage.items():
                for part, amount in (("rpm", requests), ("tpm", tokens)):
                    if amount:
                        key = self._key(deployment_id, f"{part}:{minute}")
                        pipe.incrby(key, amount)
                        pipe.expire(key, 120)
            for (deployment_id, part), samples in latencies.items():
                key = self._key(deployment_id, part)
                pipe.lpush(key, *(round(sample, 3) for sample in samples))
                pipe.ltrim(key, 0, window - 1)
                pipe.expire(key, WINDOW_TTL_S)
            self.round_trips += 1
            await pipe.execute()
        except Exception as exc:
            self._unavailable(exc)
            self._keep(inflight, usage)
            return
        redis_breaker.success()

    async def drain(self) -> None:
        """Send every change Redis has not got yet, the flushes under way included (at shutdown)."""
        loop = asyncio.get_running_loop()
        under_way = [task for task in self._flushing if task.get_loop() is loop]
        if under_way:
            await asyncio.wait(under_way)
        await self.flush()

    def _keep(self, inflight: dict[int, int], usage: dict[tuple[int, int], list[int]]) -> None:
        """Changes Redis did not take, kept for the next flush: an in-flight +1 whose -1 is sent
        alone would leave the shared count too low (or the reverse, too high) for INFLIGHT_TTL_S.
        Usage of past minutes no longer routes anything, and latency samples are only samples."""
        for deployment_id, delta in inflight.items():
            self._inflight[deployment_id] = self._inflight.get(deployment_id, 0) + delta
        minute = _minute(time.time())
        for (deployment_id, at), (requests, tokens) in usage.items():
            if at == minute:
                kept = self._usage.setdefault((deployment_id, at), [0, 0])
                kept[0] += requests
                kept[1] += tokens


RedisClients = dict[tuple[str, asyncio.AbstractEventLoop], Any]


def _redis_clients_close(clients: RedisClients) -> None:
    """Close the clients whose loop is idle; a closed loop took its connections with it."""
    for (_, loop), client in clients.items():
        if not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(client.aclose())


# A client per (Redis URL, event loop): a connection belongs to the loop that opened it.
route_redis_clients: Singleton[RedisClients] = Singleton("routing.redis_clients", dict, close=_redis_clients_close)


def _route_state_make() -> LocalRouteState:
    return RedisRouteState(settings.REDIS_URL) if settings.REDIS_URL else LocalRouteState()


async def _route_state_drain(state: LocalRouteState) -> None:
    await state.drain()


# In Redis when there is one, so every server process routes as one; the drain sends what is pending.
route_state: Singleton[LocalRouteState] = Singleton("routing.state", _route_state_make, aflush=_route_state_drain)
