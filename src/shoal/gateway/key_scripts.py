"""The Lua scripts behind :class:`~shoal.gateway.key_limits.RedisKeyLimits`.

Each script runs atomically inside Redis and reads the server's clock (``TIME``), so
replicas on different hosts never compare their own clocks. Times are milliseconds.

Keys of one virtual key (one hash tag, so a cluster keeps them on one slot):
``held`` (sorted set: grant id -> lease expiry; its size is the key's calls in flight),
``res`` (hash: grant id -> USD reserved), ``rpm`` (sorted set: grant id -> admission
time), ``tpm`` (sorted set: grant id -> admission time), ``tpm_tok`` (hash: grant id ->
tokens), ``tpm_used`` (the window's token sum) and ``spend:<period>`` (USD settled in
the period, seeded from the store when absent).

A grant whose lease lapses (its replica died and stopped renewing) leaves ``held`` and
``res`` on the next admission: its concurrency slot and budget reservation come back.
"""

from __future__ import annotations

__all__ = ["ADMIT", "NEED_SEED", "RENEW", "SETTLE"]

NEED_SEED = 9  # the admit reason asking the client for the period's spend from the store

# KEYS: held, res, rpm, tpm, tpm_tok, tpm_used, spend
# ARGV: grant, lease, max concurrency (0 none), rpm (0), tpm (0), tokens, window,
#       budget (-1 none), cost, seed ('' unknown), spend ttl (s)
# -> {granted, reason, wait ms, spend, reserved}; reason 1 concurrency, 2 rpm, 3 tpm,
#    4 budget, 9 the spend must be seeded (call again with seed)
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grant, lease = ARGV[1], tonumber(ARGV[2])
local maxc, rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local budget, cost = tonumber(ARGV[8]), tonumber(ARGV[9])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(lapsed) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if maxc > 0 and redis.call('ZCARD', KEYS[1]) >= maxc then
  return {0, 1, 1000, '0', '0'}
end
local cutoff = now - window
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
  local n = redis.call('ZCARD', KEYS[3])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[3], n - rpm, n - rpm, 'WITHSCORES')
    return {0, 2, math.ceil(tonumber(e[2]) + window - now), '0', '0'}
  end
end
local used = 0
if tpm > 0 then
  used = tonumber(redis.call('GET', KEYS[6]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cutoff)
  for _, id in ipairs(old) do
    used = used - tonumber(redis.call('HGET', KEYS[5], id) or '0')
    redis.call('HDEL', KEYS[5], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', cutoff)
  if used < 0 then used = 0 end
  redis.call('SET', KEYS[6], used, 'PX', window)
  if used + tokens > tpm then
    local wait = window
    local entries = redis.call('ZRANGE', KEYS[4], 0, 999, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[5], entries[i]) or '0')
      if used - freed + tokens <= tpm then
        wait = tonumber(entries[i + 1]) + window - now
        break
      end
    end
    return {0, 3, math.ceil(wait), '0', '0'}
  end
end
if budget >= 0 then
  local spent = redis.call('GET', KEYS[7])
  if not spent then
    if ARGV[10] == '' then return {0, 9, 0, '0', '0'} end
    spent = ARGV[10]
    redis.call('SET', KEYS[7], spent, 'EX', tonumber(ARGV[11]))
  end
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
  if tonumber(spent) + reserved + cost > budget + 1e-9 then
    return {0, 4, 0, tostring(spent), tostring(reserved)}
  end
  redis.call('HSET', KEYS[2], grant, cost)
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
redis.call('ZADD', KEYS[1], now + lease, grant)
redis.call('PEXPIRE', KEYS[1], lease * 2)
if rpm > 0 then
  redis.call('ZADD', KEYS[3], now, grant)
  redis.call('PEXPIRE', KEYS[3], window)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[4], now, grant)
  redis.call('HSET', KEYS[5], grant, tokens)
  redis.call('SET', KEYS[6], used + tokens, 'PX', window)
  redis.call('PEXPIRE', KEYS[4], window)
  redis.call('PEXPIRE', KEYS[5], window)
end
return {1, 0, 0, '0', '0'}
"""

# KEYS: held, res, tpm, tpm_tok, tpm_used, spend
# ARGV: grant, real tokens, real cost
# The slot and the reservation go; the TPM window counts the real tokens; the cost moves
# the period's spend (left absent when absent: the next admission seeds it from the
# store, which already holds this call).
SETTLE = """
local grant = ARGV[1]
redis.call('ZREM', KEYS[1], grant)
redis.call('HDEL', KEYS[2], grant)
if redis.call('ZSCORE', KEYS[3], grant) then
  local old = tonumber(redis.call('HGET', KEYS[4], grant) or '0')
  local used = redis.call('GET', KEYS[5])
  redis.call('HSET', KEYS[4], grant, ARGV[2])
  if used then
    local now = tonumber(used) - old + tonumber(ARGV[2])
    if now < 0 then now = 0 end
    redis.call('SET', KEYS[5], now, 'KEEPTTL')
  end
end
local cost = tonumber(ARGV[3])
if cost > 0 and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('INCRBYFLOAT', KEYS[6], ARGV[3])
end
return 1
"""

# KEYS: held, res; ARGV: lease, grant ids -> the ids whose lease had already lapsed
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return lost
"""
