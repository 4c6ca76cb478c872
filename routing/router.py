"""Deployment routing: strategies over a model group and the shared state they read.

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
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from django.conf import settings

from core.breaker import redis_breaker, redis_options
from core.errors import NotFound, PlatformError, RateLimited, ServiceUnavailable
from observability import metrics
from routing.pricing import token_prices
from routing.selectors import DeploymentTarget, GroupPolicy, deployment_cache
from tenants.auth import KeyContext

logger = logging.getLogger(__name__)

T = TypeVar("T")
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

    def usage_at(self, minute: int) -> tuple[int, int]:
        return (self.rpm_used, self.tpm_used) if self.minute == minute else (0, 0)


def _minute(now: float) -> int:
    return int(now // 60)


class LocalRouteState:
    """Routing state in this process only (the embedded default, or Redis unreachable)."""

    shared = False

    def __init__(self) -> None:
        self.states: dict[int, DeploymentState] = {}

    def _state(self, deployment_id: int) -> DeploymentState:
        state = self.states.get(deployment_id)
        if state is None:
            state = self.states[deployment_id] = DeploymentState()
        return state

    async def view(self, targets: list[DeploymentTarget]) -> dict[int, DeploymentState]:
        return {target.id: self._state(target.id) for target in targets}

    def begin(self, deployment_id: int, tokens: int) -> None:
        state = self._state(deployment_id)
        state.inflight += 1
        minute = _minute(time.time())
        if state.minute != minute:
            state.minute, state.rpm_used, state.tpm_used = minute, 0, 0
        state.rpm_used += 1
        state.tpm_used += tokens

    def end(self, deployment_id: int, *, latency_ms: float | None, ttft_ms: float | None, tokens: int) -> None:
        state = self._state(deployment_id)
        state.inflight = max(0, state.inflight - 1)
        if tokens and state.minute == _minute(time.time()):
            state.tpm_used += tokens
        if latency_ms is not None:
            state.latencies.append(latency_ms)
        if ttft_ms is not None:
            state.ttfts.append(ttft_ms)

    async def fail(self, deployment_id: int, policy: GroupPolicy) -> float:
        """Count a failure; returns when the cooldown it started ends (0: none started)."""
        state = self._state(deployment_id)
        now = time.time()
        state.fails = [at for at in state.fails if at > now - policy.fail_window]
        state.fails.append(now)
        if len(state.fails) > policy.allowed_fails and policy.cooldown_time > 0:
            state.fails = []
            state.cooldown_until = now + policy.cooldown_time
            return state.cooldown_until
        return 0.0


class RedisRouteState(LocalRouteState):
    """Routing state shared through Redis; ``states`` is this process's snapshot of it."""

    shared = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._fetched: dict[int, float] = {}
        self._fetching: dict[frozenset[int], asyncio.Future[None]] = {}
        # Changes not yet sent: in-flight and usage deltas, latency samples.
        self._inflight: dict[int, int] = {}
        self._usage: dict[tuple[int, int], list[int]] = {}  # (id, minute) -> [requests, tokens]
        self._latencies: dict[tuple[int, str], list[float]] = {}
        self._scheduled = False
        self.round_trips = 0  # for the benchmark: Redis calls made by this process
        self._warned_at = 0.0

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio as redis

            client = cast(Any, redis.Redis.from_url(self.url, **redis_options()))
            client.fail_script = client.register_script(FAIL_LUA)
            self._clients[loop] = client
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
                    return {target.id: self._state(target.id) for target in targets}
                pending = self._fetching[ids] = asyncio.ensure_future(self._refresh(ids))
            if max(ages) >= settings.ROUTING_STATE_MAX_STALE and redis_breaker.closed:
                # Never longer than one Redis reply may take: past that, the local state routes.
                # A trial while the breaker is open is not waited for at all.
                try:
                    await asyncio.wait_for(asyncio.shield(pending), settings.REDIS_SOCKET_TIMEOUT)
                except TimeoutError:
                    pass
        return {target.id: self._state(target.id) for target in targets}

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
            state = self._state(deployment_id)
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
            self._state(deployment_id).cooldown_until = int(until) / 1000
            return int(until) / 1000
        return 0.0

    def _flush_later(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_soon)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self.flush())
        _flushing.add(task)
        task.add_done_callback(_flushing.discard)

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


_flushing: set[asyncio.Task[None]] = set()
_state: LocalRouteState | None = None


def route_state() -> LocalRouteState:
    global _state
    if _state is None:
        _state = RedisRouteState(settings.REDIS_URL) if settings.REDIS_URL else LocalRouteState()
    return _state


def _mean(values: deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _price(target: DeploymentTarget) -> float | None:
    params = target.extra_params
    if "input_cost_per_token" in params or "output_cost_per_token" in params:
        return float(params.get("input_cost_per_token") or 0) + float(params.get("output_cost_per_token") or 0)
    prices = token_prices(target.litellm_model)
    return None if prices is None else prices.input + prices.output


@dataclass(slots=True)
class Choice:
    """One selection: the deployment picked (None: no candidate left) and why."""

    target: DeploymentTarget | None
    candidates: list[dict[str, Any]]
    retry_in: float = 0.0  # when every candidate is cooling down: seconds until the first recovers
    no_capacity: bool = False  # usage-based: every candidate is at its rpm/tpm


def deployment_choose(
    policy: GroupPolicy,
    targets: list[DeploymentTarget],
    states: dict[int, DeploymentState],
    *,
    stream: bool,
    tokens: int,
    tried: frozenset[int] = frozenset(),
) -> Choice:
    """Pick a deployment of a group by its strategy; cooling deployments are left out.

    Deployments already tried by this request are used again only when nothing else is
    left. A group of one deployment never cools down (as in LiteLLM): there is nothing
    to route around, so its failures are reported rather than hidden.
    """
    now = time.time()
    strategy = policy.routing_strategy
    minute = _minute(now)
    candidates: list[dict[str, Any]] = []
    usable: list[tuple[DeploymentTarget, float, dict[str, Any]]] = []
    retry_in = float("inf")
    capacity_left = False
    for target in targets:
        state = states[target.id]
        entry: dict[str, Any] = {"id": target.id, "model": target.litellm_model}
        candidates.append(entry)
        if len(targets) > 1 and state.cooldown_until > now:
            entry["excluded"] = "cooldown"
            retry_in = min(retry_in, state.cooldown_until - now)
            continue
        if strategy == "usage-based-routing-v2":
            rpm, tpm = state.usage_at(minute)
            rpm_limit, tpm_limit = target.extra_params.get("rpm"), target.extra_params.get("tpm")
            if rpm_limit is not None and rpm + 1 > rpm_limit:
                entry["excluded"] = f"rpm {rpm}/{rpm_limit}"
                continue
            if tpm_limit is not None and tpm + tokens > tpm_limit:
                entry["excluded"] = f"tpm {tpm}/{tpm_limit}"
                continue
            capacity_left = True
            score: float = float(tpm)
        elif strategy == "least-busy":
            score = float(state.inflight)
        elif strategy == "latency-based-routing":
            # No samples yet scores 0 so a new deployment gets traffic and a measurement.
            score = _mean(state.ttfts if stream else state.latencies) or 0.0
        elif strategy == "cost-based-routing":
            price = _price(target)
            score = price * 1e6 if price is not None else float("inf")  # USD per 1M tokens (in + out)
        else:
            weight = target.extra_params.get("weight", 1)
            score = float(weight if isinstance(weight, int | float) else 1)
            if score <= 0:
                entry["score"] = score
                entry["excluded"] = "weight 0"
                continue
        # JSON (and so the decision record) has no infinity: an unknown price is recorded as null.
        entry["score"] = round(score, 6) if math.isfinite(score) else None
        if target.id in tried:
            entry["excluded"] = "failed in this request"
            continue
        usable.append((target, score, entry))
    if not usable:
        # Everything left was tried already: retry among those rather than give up.
        usable = [
            (t, e["score"] if e.get("score") is not None else float("inf"), e)
            for t, e in zip(targets, candidates, strict=True)
            if e.get("excluded") == "failed in this request"
        ]
        for _, _, entry in usable:
            del entry["excluded"]
    if not usable:
        return Choice(
            None,
            candidates,
            retry_in=0.0 if retry_in == float("inf") else retry_in,
            no_capacity=strategy == "usage-based-routing-v2" and not capacity_left,
        )
    if len(usable) == 1:
        chosen = usable[0][0]
    elif strategy == "simple-shuffle":
        chosen = random.choices([t for t, _, _ in usable], weights=[s for _, s, _ in usable])[0]
    else:
        best = min(score for _, score, _ in usable)
        chosen = random.choice([t for t, score, _ in usable if score == best])
    return Choice(chosen, candidates)


def _retry_kind(exc: PlatformError) -> str:
    """How a failed attempt is handled: retried, a special fallback, or returned as is."""
    if exc.code == "context_window_exceeded":
        return "context_window"
    if exc.code == "content_policy_violation":
        return "content_policy"
    if exc.status == 429 or exc.status >= 500:
        return "retry"
    return "fatal"


def _retry_after_header(exc: PlatformError) -> float:
    try:
        return float(exc.headers.get("Retry-After") or 0)
    except ValueError:
        return 0.0


class RouteRun:
    """Routes one request: chooses a deployment, retries, falls back, and keeps the record.

    ``start`` resolves the model group and makes the first choice (the quota reservation
    prices the request with it); ``execute`` calls the upstream through ``call`` until an
    attempt succeeds or every option is spent. The chosen deployment stays counted as
    busy until ``release``.
    """

    def __init__(self, *, key: KeyContext, stream: bool, tokens: int) -> None:
        self.key = key
        self.stream = stream
        self.tokens = tokens
        self.state = route_state()
        self.decision_s = 0.0
        self.wait_s = 0.0  # time spent in failed attempts and backoff: upstream time, not overhead
        self.served: DeploymentTarget | None = None
        self.served_model = ""
        self.fallbacks: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.record: dict[str, Any] = {}
        self._active: DeploymentTarget | None = None
        self._attempt_started = 0.0
        self._model = ""
        self._targets: list[DeploymentTarget] = []
        self._policy: GroupPolicy | None = None
        self._first: Choice | None = None

    async def start(self, model: str) -> DeploymentTarget:
        """Resolve ``model`` and choose; returns the deployment to price the request with."""
        started = time.perf_counter()
        targets, policy = await deployment_cache.group(model)
        if not targets:
            raise NotFound(f"The model '{model}' does not exist.", param="model", code="model_not_found")
        if not self.key.allows_model(model):
            raise self.key.denied(
                f"This API key is not allowed to use the model '{model}'.",
                param="model",
                code="model_not_allowed",
                target=f"model:{model}",
            )
        self._model, self._targets, self._policy = model, targets, policy
        states = await self.state.view(targets)
        self._first = choice = deployment_choose(policy, targets, states, stream=self.stream, tokens=self.tokens)
        self.record = {
            "group": model,
            "strategy": policy.routing_strategy,
            "policy_version": policy.version,
            "shared_state": self.state.shared,
            "candidates": choice.candidates,
            "chosen": choice.target.id if choice.target else None,
        }
        self.decision_s += time.perf_counter() - started
        return choice.target or targets[0]

    async def execute(self, call: Callable[[DeploymentTarget], Awaitable[T]]) -> T:
        assert self._policy is not None and self._first is not None
        policy = self._policy
        outcome = await self._group_run(self._model, self._targets, policy, self._first, call)
        if outcome.done:
            return outcome.result  # type: ignore[return-value]
        options = {
            "context_window": policy.context_window_fallbacks,
            "content_policy": policy.content_policy_fallbacks,
        }.get(outcome.kind, policy.fallbacks)
        for model in options:
            if len(self.attempts) >= settings.ROUTING_MAX_ATTEMPTS:
                break
            entry: dict[str, Any] = {"model": model, "reason": outcome.kind}
            self.fallbacks.append(entry)
            if not self.key.allows_model(model):
                entry["skipped"] = "not allowed for this key"
                continue
            started = time.perf_counter()
            targets, fallback_policy = await deployment_cache.group(model)
            if not targets:
                entry["skipped"] = "no deployments"
                self.decision_s += time.perf_counter() - started
                continue
            states = await self.state.view(targets)
            choice = deployment_choose(fallback_policy, targets, states, stream=self.stream, tokens=self.tokens)
            entry["candidates"] = choice.candidates
            self.decision_s += time.perf_counter() - started
            fallback = await self._group_run(model, targets, fallback_policy, choice, call)
            if fallback.done:
                return fallback.result  # type: ignore[return-value]
            if fallback.error is not None:
                outcome.error = fallback.error
        if outcome.error is not None:
            raise outcome.error
        raise self._unavailable(self._model, self._first)

    def _unavailable(self, model: str, choice: Choice) -> PlatformError:
        if choice.no_capacity:
            wait = max(1, math.ceil(60 - time.time() % 60))
            return RateLimited(
                f"Every deployment of model '{model}' is at its rpm/tpm limit; retry in {wait} s.",
                code="deployment_capacity_exhausted",
                headers={"Retry-After": str(wait)},
            )
        wait = max(1, math.ceil(choice.retry_in))
        return ServiceUnavailable(
            f"Every deployment of model '{model}' is cooling down after failures; retry in {wait} s.",
            code="no_deployment_available",
            headers={"Retry-After": str(wait)},
        )

    async def _group_run(
        self,
        model: str,
        targets: list[DeploymentTarget],
        policy: GroupPolicy,
        choice: Choice,
        call: Callable[[DeploymentTarget], Awaitable[T]],
    ) -> _Outcome:
        target = choice.target
        if target is None:
            return _Outcome(kind="retry", error=self._unavailable(model, choice))
        tried: set[int] = set()
        error: PlatformError | None = None
        for attempt in range(policy.num_retries + 1):
            self.state.begin(target.id, self.tokens)
            self._active = target
            self._attempt_started = started = time.perf_counter()
            try:
                result = await call(target)
            except PlatformError as exc:
                elapsed = time.perf_counter() - started
                self.wait_s += elapsed
                self._active = None
                self.state.end(target.id, latency_ms=None, ttft_ms=None, tokens=0)
                kind = _retry_kind(exc)
                note: dict[str, Any] = {
                    "deployment": target.id,
                    "group": model,
                    "status": exc.status,
                    "error": exc.code or exc.type,
                    "ms": round(elapsed * 1000, 3),
                }
                self.attempts.append(note)
                metrics.upstream_error_observe(model, target.litellm_model, exc.code or exc.type)
                if kind == "fatal":
                    raise
                error = exc
                if kind != "retry":
                    return _Outcome(kind=kind, error=exc)
                if len(targets) > 1 and await self.state.fail(target.id, policy):
                    note["cooldown"] = policy.cooldown_time
                    metrics.cooldown_observe(model, target.litellm_model, exc.code or exc.type)
                tried.add(target.id)
                if attempt == policy.num_retries or len(self.attempts) >= settings.ROUTING_MAX_ATTEMPTS:
                    break
                chosen_at = time.perf_counter()
                states = await self.state.view(targets)
                retry = deployment_choose(
                    policy, targets, states, stream=self.stream, tokens=self.tokens, tried=frozenset(tried)
                )
                self.decision_s += time.perf_counter() - chosen_at
                if retry.target is None:
                    break
                if retry.target.id == target.id:
                    # Only the failed deployment is left: back off before asking it again.
                    delay = max(policy.retry_after * (2**attempt), _retry_after_header(exc))
                    delay = min(delay, settings.ROUTING_MAX_BACKOFF)
                    if delay:
                        note["backoff_ms"] = round(delay * 1000, 3)
                        await asyncio.sleep(delay)
                        self.wait_s += delay
                target = retry.target
                continue
            self.served, self.served_model = target, model
            return _Outcome(kind="", done=True, result=result)
        return _Outcome(kind="retry", error=error)

    def release(self, *, latency_ms: float | None, ttft_ms: float | None, tokens: int) -> None:
        """The served request is over (or was cancelled): free its slot and note its latency."""
        target, self._active = self._active, None
        if target is not None:
            done = self.served is not None and target.id == self.served.id
            self.state.end(
                target.id,
                latency_ms=latency_ms if done else None,
                ttft_ms=ttft_ms if done else None,
                tokens=tokens if done else 0,
            )

    def decision_record(self) -> dict[str, Any]:
        record = dict(self.record)
        record["served"] = self.served.id if self.served else None
        record["served_model"] = self.served_model or None
        record["attempts"] = self.attempts
        record["fallbacks"] = self.fallbacks
        record["decision_ms"] = round(self.decision_s * 1000, 4)
        return record

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._policy is None:
            return []
        model = self.served_model or self._model
        used = sum(1 for entry in self.fallbacks if "skipped" not in entry)
        return [
            (b"x-route-model", model.encode()),
            (b"x-route-strategy", self._policy.routing_strategy.encode()),
            (b"x-route-fallbacks", str(used).encode()),
        ]


@dataclass(slots=True)
class _Outcome:
    kind: str
    error: PlatformError | None = None
    done: bool = False
    result: Any = None
