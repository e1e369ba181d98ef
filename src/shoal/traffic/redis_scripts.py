"""The Lua scripts behind :class:`~shoal.traffic.redis_limits.RedisLimiter`.

Each script runs atomically inside Redis and reads the server's clock (``TIME``), so
clients on different hosts never compare their own clocks. Times are milliseconds.

Keys (one hash tag, so a cluster keeps them on one slot): ``holders`` (sorted set:
holder id -> lease expiry), ``rpm`` (sorted set: holder id -> admission time),
``tpm`` (sorted set: holder id -> admission time), ``tpm_tokens`` (hash: holder id ->
tokens), ``tpm_used`` (the window's token sum), ``cap`` (a shared concurrency cap,
written by adaptive concurrency; below a configured cap it wins, above it never),
``waiters`` (sorted set: process id -> expiry, processes with queued calls), ``yield``
(the process that just gave a slot away for fairness) and ``ceiling`` (the learned
ceiling written with ``cap``).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CAP_TTL_MS", "RELEASE", "RENEW", "SETTLE", "SET_CAP", "TRANSFER", "YIELD_MS"]

CAP_TTL_MS = 86_400_000  # a learned shared cap is forgotten after a day without writes
YIELD_MS = 50  # how long a yielding process stands back while others wait

# KEYS: holders, rpm, tpm, tpm_tokens, tpm_used, cap, waiters, yield, ceiling
# acquire(holder, lease, max concurrency (0 = none), rpm (0), tpm (0), tokens, window,
#         process, more waiting in that process (1/0), waiter ttl)
# -> {granted, wait ms, cap in force (0 = none), holders after, reason, ceiling (0 = none)}
# reason: 1 concurrency, 2 rpm, 3 tpm, 4 yielding to other processes (what blocked;
# wait ms = until it may pass).
# Fairness: ``waiters`` lists processes with queued calls; a process that released a
# slot to share it (``yield`` = its id) is refused while another process waits, until
# one of them takes a slot (or the yield expires).
_ACQUIRE_FN = """
local function acquire(holder, lease, maxc, rpm, tpm, tokens, window, proc, more, wttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local ceil = tonumber(redis.call('GET', KEYS[9]) or '0')
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
  local cap = maxc
  local shared = redis.call('GET', KEYS[6])
  if shared then
    cap = tonumber(shared)
    -- a configured cap is a hard ceiling: a learned cap left under this key (by an
    -- adaptive run, or another deployment) never lifts it
    if maxc > 0 and cap > maxc then cap = maxc end
  end
  local held = redis.call('ZCARD', KEYS[1])
  local yielded = redis.call('GET', KEYS[8])
  if yielded == proc then
    local others = redis.call('ZCARD', KEYS[7])
    if redis.call('ZSCORE', KEYS[7], proc) then others = others - 1 end
    if others > 0 then
      redis.call('ZADD', KEYS[7], now + wttl, proc)
      return {0, 2, cap, held, 4, ceil}
    end
  end
  if cap > 0 and held >= cap then
    redis.call('ZADD', KEYS[7], now + wttl, proc)
    redis.call('PEXPIRE', KEYS[7], wttl)
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, math.ceil(tonumber(first[2]) - now), cap, held, 1, ceil}
  end
  local cutoff = now - window
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
    local n = redis.call('ZCARD', KEYS[2])
    if n >= rpm then
      redis.call('ZADD', KEYS[7], now + wttl, proc)
      redis.call('PEXPIRE', KEYS[7], wttl)
      local e = redis.call('ZRANGE', KEYS[2], n - rpm, n - rpm, 'WITHSCORES')
      return {0, math.ceil(tonumber(e[2]) + window - now), cap, held, 2, ceil}
    end
  end
  local used = 0
  if tpm > 0 then
    used = tonumber(redis.call('GET', KEYS[5]) or '0')
    local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff)
    if #old > 0 then
      for _, id in ipairs(old) do
        used = used - tonumber(redis.call('HGET', KEYS[4], id) or '0')
        redis.call('HDEL', KEYS[4], id)
      end
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
      redis.call('SET', KEYS[5], used)
    end
    if used + tokens > tpm then
      redis.call('ZADD', KEYS[7], now + wttl, proc)
      redis.call('PEXPIRE', KEYS[7], wttl)
      local excess = used + tokens - tpm
      local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
      for i = 1, #entries, 2 do
        excess = excess - tonumber(redis.call('HGET', KEYS[4], entries[i]) or '0')
        if excess <= 0 then
          return {0, math.ceil(tonumber(entries[i + 1]) + window - now), cap, held, 3, ceil}
        end
      end
      return {0, math.ceil(window), cap, held, 3, ceil}
    end
  end
  redis.call('ZADD', KEYS[1], now + lease, holder)
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * lease))
  if more == 1 then
    redis.call('ZADD', KEYS[7], now + wttl, proc)
    redis.call('PEXPIRE', KEYS[7], wttl)
  else
    redis.call('ZREM', KEYS[7], proc)
  end
  if yielded and yielded ~= proc then redis.call('DEL', KEYS[8]) end
  local keep = math.ceil(window) + 1000
  if rpm > 0 then
    redis.call('ZADD', KEYS[2], now, holder)
    redis.call('PEXPIRE', KEYS[2], keep)
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[3], now, holder)
    redis.call('HSET', KEYS[4], holder, tokens)
    redis.call('SET', KEYS[5], used + tokens, 'PX', keep)
    redis.call('PEXPIRE', KEYS[3], keep)
    redis.call('PEXPIRE', KEYS[4], keep)
  end
  return {1, 0, cap, held + 1, 0, ceil}
end
local function acquire_argv()
  return acquire(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                 tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8],
                 tonumber(ARGV[9]), tonumber(ARGV[10]))
end
"""

# ARGV: holder, lease ms, max concurrency, rpm, tpm, tokens, window ms, process,
# more waiting (1/0), waiter ttl ms
ACQUIRE = _ACQUIRE_FN + "return acquire_argv()\n"

# Release ARGV[11] and, in the same step, try to admit ARGV[1] (the releasing process's
# next waiter); when that fails the freed slot is announced on channel ARGV[12].
TRANSFER = _ACQUIRE_FN + """
local removed = redis.call('ZREM', KEYS[1], ARGV[11])
local result = acquire_argv()
if result[1] == 0 and removed > 0 then redis.call('PUBLISH', ARGV[12], '1') end
return result
"""

# KEYS: holders, waiters, yield; ARGV: holder, notify channel, yielding process ('' when
# not yielding), yield ms
RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
if n > 0 then redis.call('PUBLISH', ARGV[2], '1') end
if ARGV[3] ~= '' then
  local others = redis.call('ZCARD', KEYS[2])
  if redis.call('ZSCORE', KEYS[2], ARGV[3]) then others = others - 1 end
  if others > 0 then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
end
return n
"""

# KEYS: tpm_tokens, tpm_used; ARGV: holder, actual tokens, notify channel
SETTLE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local delta = tonumber(ARGV[2]) - tonumber(old)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], delta)
if delta < 0 then redis.call('PUBLISH', ARGV[3], '1') end
return 1
"""

# KEYS: holders, cap; ARGV: lease ms, max concurrency (0 = none), holder...
# -> {recovered, lost}. A holder still listed is renewed (even just past its expiry: no
# acquire pruned it, so nobody took its place). One already pruned (the process stalled
# longer than the lease) is put back when the cap has room (recovered), else it is lost:
# its call runs on, over the cap, until it ends.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[1])
local maxc = tonumber(ARGV[2])
local cap = maxc
local shared = redis.call('GET', KEYS[2])
if shared then
  cap = tonumber(shared)
  if maxc > 0 and cap > maxc then cap = maxc end
end
local back, lost = {}, {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if cap <= 0 or redis.call('ZCARD', KEYS[1]) < cap then
      redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
      table.insert(back, ARGV[i])
    else
      table.insert(lost, ARGV[i])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * lease))
return {back, lost}
"""

# KEYS: cap, ceiling; ARGV: n, only-if-absent (1/0), ttl ms, notify channel, ceiling
# ('' = none learned) -> {cap in force, ceiling in force (0 = none)}. A seed (only if
# absent) leaves both alone when a cap is already set.
SET_CAP = """
local written
if ARGV[2] == '1' then
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3])
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
if written then
  if ARGV[5] == '' then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[3])
  end
end
redis.call('PUBLISH', ARGV[4], '1')
return {tonumber(redis.call('GET', KEYS[1])), tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
