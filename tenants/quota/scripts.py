"""The Lua scripts that reserve, settle, renew and read the quota counters in Redis, each in one atomic call."""

from __future__ import annotations

from tenants.quota.lean_redis import Script

# How a limit is kept in the store: "c" an integer counter of a window, "b" a budget hash
# (spend per start minute), "p" the sorted set of the requests in flight (leases).
COUNTER, BUDGET, SLOTS = "c", "b", "p"

# The server's clock, the same for every process: leases and deadlines are measured by it.
CLOCK_LUA = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# How the usage script tells a counter's kind: by its name (see ``counter_base`` and ``budget_key``).
KIND_LUA = """
local function kind_of(key)
  if string.sub(key, -6) == ':slots' then return 'p' end
  if string.find(key, ':spend:[dM]%d+$') then return 'b' end
  return 'c'
end
"""

# Reserves for several requests in one call. ARGV[1] = the caller's deadline in the server's
# clock (ms; 0 = none), ARGV[2] = number of requests; then, per request, its number of checks
# n, their store kinds as one string (e.g. "ccpb"), and per check limit, amount, ttl_ms and,
# for a budget or the concurrency set, one more value (the start minute; the request's member).
# KEYS are the counters in the same order. Each request is all or nothing, independently of
# the others. Per request the reply holds: failing index (1-based) and that counter's value
# before the request, or 0 followed by the counters' new values.
RESERVE_LUA = (
    CLOCK_LUA
    + """
local now = now_ms()
-- Run after the caller gave up waiting (held in a network that dropped it for a while): the
-- caller admitted its requests without a reservation and charges them when they end, so
-- reserving now would count them twice.
if tonumber(ARGV[1]) > 0 and now > tonumber(ARGV[1]) then return {} end
local out = {}
local k, a = 1, 3
local function undo(key, kind, p)
  local amount = tonumber(ARGV[p + 1])
  if kind == 'p' then
    redis.call('ZREM', key, ARGV[p + 3])
  elseif kind == 'b' then
    redis.call('HINCRBY', key, 't', -amount)
    redis.call('HINCRBY', key, ARGV[p + 3], -amount)
  else
    redis.call('DECRBY', key, amount)
  end
end
for _ = 1, tonumber(ARGV[2]) do
  local n, kinds = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  local values, starts, failed, seen = {}, {}, 0, 0
  for i = 0, n - 1 do
    local key, p = KEYS[k + i], a
    local kind = string.sub(kinds, i + 1, i + 1)
    local limit, amount = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
    starts[i + 1] = p
    a = a + (kind == 'c' and 3 or 4)
    local value
    if kind == 'p' then
      value = redis.call('ZCARD', key) + amount
      if value > limit then
        -- Full, counting leases that may have run out (by the server's clock, the same for
        -- every process): drop those and count again. Under the limit they do no harm.
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        value = redis.call('ZCARD', key) + amount
      end
      if value <= limit then
        redis.call('ZADD', key, now + tonumber(ARGV[p + 2]), ARGV[p + 3])
        -- A new set gets a lease-long life; from then on every process holding a member renews
        -- it with its leases (a third of a lease apart), so under steady load it never lapses.
        if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      end
    elseif kind == 'b' then
      -- Increment first and undo on a refusal: one call when the request fits (the usual case).
      value = redis.call('HINCRBY', key, 't', amount)
      -- value == amount: the hash was just created (or was at zero), so give it its window.
      if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      if value <= limit then
        redis.call('HINCRBY', key, ARGV[p + 3], amount)
      else
        redis.call('HINCRBY', key, 't', -amount)
      end
    else
      value = redis.call('INCRBY', key, amount)
      if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      if value > limit then redis.call('DECRBY', key, amount) end
    end
    values[i + 1] = value
    if value > limit then
      failed, seen = i + 1, value - amount
      -- skip the arguments of the checks not reached
      for j = i + 1, n - 1 do
        a = a + (string.sub(kinds, j + 1, j + 1) == 'c' and 3 or 4)
      end
      break
    end
  end
  if failed > 0 then
    for i = 1, failed - 1 do
      undo(KEYS[k + i - 1], string.sub(kinds, i, i), starts[i])
    end
    out[#out + 1] = failed
    out[#out + 1] = seen
  else
    out[#out + 1] = 0
    for i = 1, n do
      out[#out + 1] = values[i]
    end
  end
  k = k + n
end
return out
"""
)

# KEYS: counters. ARGV[1]: the caller's deadline as for the reserve (a settlement run after
# it is kept by the caller and sent again: applying it now would count it twice); ARGV[2]:
# the counters' store kinds as one string; then per counter: delta and ttl_ms for a window
# counter; delta, ttl_ms and the start minute for a budget; for the concurrency set, the
# number of members to release, ttl_ms and the members. A counter never drops below zero.
# Each counter is settled on its own (pcall): one the script cannot change (a key holding
# something else, an overflow) is left as it is and its position returned, and every other
# one is settled.
SETTLE_LUA = (
    CLOCK_LUA
    + """
local function release(key, first, last)
  for i = first, last, 1000 do
    redis.call('ZREM', key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end
local function settle(key, kind, delta, ttl, extra)
  if kind == 'b' then
    -- The spend of requests started before the watermark is what the usage records say,
    -- already in the total: a late adjustment to it would count it twice.
    local watermark = redis.call('HGET', key, 'w')
    if watermark and tonumber(extra) < tonumber(watermark) then return end
    if redis.call('HINCRBY', key, extra, delta) < 0 then redis.call('HSET', key, extra, 0) end
    if redis.call('HINCRBY', key, 't', delta) < 0 then redis.call('HSET', key, 't', 0) end
  elseif redis.call('INCRBY', key, delta) < 0 then
    redis.call('SET', key, 0, 'KEEPTTL')
  end
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end
if tonumber(ARGV[1]) > 0 and now_ms() > tonumber(ARGV[1]) then return {} end
local refused = {}
local kinds, p = ARGV[2], 3
for i = 1, #KEYS do
  local kind = string.sub(kinds, i, i)
  local ok
  if kind == 'p' then
    local n = tonumber(ARGV[p])
    ok = pcall(release, KEYS[i], p + 2, p + 1 + n)
    p = p + 2 + n
  else
    ok = pcall(settle, KEYS[i], kind, tonumber(ARGV[p]), ARGV[p + 1], ARGV[p + 2])
    p = p + (kind == 'c' and 2 or 3)
  end
  if not ok then refused[#refused + 1] = i end
end
return refused
"""
)

# Renews the leases of the requests a process has in flight. ARGV[1] = lease in ms; then,
# per key, its number of members followed by them. A member the store dropped meanwhile (an
# outage longer than the lease, a flushed Redis) is added again: it is still in flight.
LEASE_LUA = (
    CLOCK_LUA
    + """
local expires = now_ms() + tonumber(ARGV[1])
local a = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  for j = 1, n do
    redis.call('ZADD', KEYS[i], expires, ARGV[a + j])
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  a = a + n + 1
end
return #KEYS
"""
)

# The current value of each counter, for the usage page.
USAGE_LUA = (
    CLOCK_LUA
    + KIND_LUA
    + """
local out = {}
local now = false
for i = 1, #KEYS do
  local kind = kind_of(KEYS[i])
  if kind == 'p' then
    if not now then now = now_ms() end
    out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  elseif kind == 'b' then
    out[i] = tonumber(redis.call('HGET', KEYS[i], 't') or 0)
  else
    out[i] = tonumber(redis.call('GET', KEYS[i]) or 0)
  end
end
return out
"""
)

RESERVE, SETTLE, LEASE, USAGE = Script(RESERVE_LUA), Script(SETTLE_LUA), Script(LEASE_LUA), Script(USAGE_LUA)
