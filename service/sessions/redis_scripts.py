"""The Lua scripts behind ``RedisStore``: each write is one script, so it is atomic.

Keys are as ``service.sessions.redis_store`` lays them out. ``CREATE`` also reads the
records named in the owner's index (their keys are built from ``ARGV[9]``, the record key
prefix), so on one Redis it touches keys of several sessions. On Redis Cluster
(``service.sessions.redis_cluster``) ``CREATE``, ``SAVE``, ``EVICT`` and ``DELETE`` are called
without the owner index (``KEYS[4]`` absent, no per-owner limit in the script), so each
touches the keys of one session only, all in one slot; ``RESERVE`` keeps the owner index,
in the owner's slot.
"""

from __future__ import annotations

CREATE = """
local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then
  return {0, pruned}
end
local per_owner = tonumber(ARGV[8])
if per_owner > 0 then
  local held = 0
  for _, sid in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    if redis.call('EXISTS', ARGV[9] .. sid) == 1 then
      held = held + 1
    else
      redis.call('SREM', KEYS[4], sid)
    end
  end
  if held >= per_owner then
    return {2, pruned}
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', 'expired', 'owner', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[3])
  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[4], ARGV[5])
  end
end
return {1, pruned}
"""
"""KEYS: record, tombstone, live[, owner index].
ARGV: now, max_sessions, id, expires_at, ttl_ms, tomb_ms, owner, max_per_owner (0: none),
record key prefix, then field, value, ...
Returns {1, pruned} created, {0, pruned} at ``max_sessions``, {2, pruned} at the owner's
limit; ``pruned`` is how many expired ids left the live set."""

SAVE = """
local rev, inc, expires_at, ttl_ms, tomb_ms =
  string.match(ARGV[1], '^(%d+) (%S+) (%S+) (%d+) (%d+)$')
local cur = redis.call('HMGET', KEYS[1], 'r', 'c')
if not cur[1] then
  local reason = redis.call('HGET', KEYS[2], 'reason')
  if reason then return {2, reason} end
  return {3}
end
if cur[1] ~= rev or (cur[2] and cur[2] ~= inc) then return {0} end
local fields = {}
local names, values = ARGV[4], ARGV[6]
local at, pos = 1, 1
for nlen, vlen in string.gmatch(ARGV[5], '(%d+):(%d+)') do
  nlen, vlen = tonumber(nlen), tonumber(vlen)
  fields[#fields + 1] = string.sub(names, at, at + nlen - 1)
  fields[#fields + 1] = string.sub(values, pos, pos + vlen - 1)
  at, pos = at + nlen, pos + vlen
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', 'expired', 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[2], tomb_ms)
redis.call('ZADD', KEYS[3], expires_at, ARGV[2])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[2])
  if redis.call('PTTL', KEYS[4]) < tonumber(ttl_ms) then
    redis.call('PEXPIRE', KEYS[4], ttl_ms)
  end
end
return {1}
"""
"""KEYS: record, tombstone, live[, owner index].
ARGV: ``"{expected revision} {expected incarnation} {expires_at} {ttl_ms} {tomb_ms}"``
(the incarnation is field ``c``; a record without it, written by an older version, is not
checked), id, owner, then the record's fields as three arguments (``redis_codec.packed``):
their names end to end, the length of each name and value (``name:value,...``), and their
values end to end. Few arguments, not two per field: redis-py's asyncio client packs every
argument in Python, and that was the largest cost of a step (41 against 9 us a save).
Returns {1} saved, {0} revision or incarnation mismatch, {2, reason} tombstone, {3} no
such session."""

EVICT = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local f = redis.call('HMGET', KEYS[1], 'o', 'ttl', 'k')
if not f[1] then return 0 end
local ttl = tonumber(f[2])
if not ttl or ttl < 1 then ttl = 1 end
if ttl > 2147483647 then ttl = 2147483647 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', ARGV[2], 'owner', f[1])
redis.call('PEXPIRE', KEYS[2], math.floor(ttl * 1000))
redis.call('ZREM', KEYS[3], ARGV[1])
return {1, f[1], f[3] or 'session'}
"""
"""KEYS: record, tombstone, live. ARGV: id, reason. Returns 0, or {1, owner, kind} if a
record was evicted."""

DELETE = """
local f = {false, false}
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  f = redis.call('HMGET', KEYS[1], 'o', 'k')
end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if n == 0 then return 0 end
return {1, f[1] or '', f[2] or 'session'}
"""
"""KEYS: record, tombstone, live. ARGV: id. Returns 0, or {1, owner, kind} if a record was
deleted (owner empty if the record did not say)."""

RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[4])
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[2])
    and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
"""
"""Redis Cluster only. KEYS: the owner index (a sorted set id -> expires_at, in the owner's
slot). ARGV: now, id, expires_at, max_per_owner (0: none), ttl_ms. Drops the ids whose
recorded expiry has passed, then adds ``id`` unless the owner already holds
``max_per_owner``. Returns 1 reserved, 0 at the owner's limit."""
