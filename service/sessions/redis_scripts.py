"""The Lua scripts behind ``RedisStore``: each write is one script, so it is atomic.

Keys are as ``service.sessions.redis_store`` lays them out. ``CREATE`` also reads the
records named in the owner's index (their keys are built from ``ARGV[9]``, the record key
prefix), so on one Redis it touches keys of several sessions. On Redis Cluster
(``service.sessions.redis_cluster``) ``CREATE``, ``SAVE``, ``EVICT`` and ``DELETE`` are called
without the owner index (``KEYS[4]`` absent, no per-owner limit in the script), so each
touches the keys of one session only, all in one slot; ``RESERVE`` keeps the owner index,
in the owner's slot. ``SAVE_MANY`` (one Redis only) builds its keys from the prefix.
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

_SAVE_ONE = """
local function save(krec, ktomb, klive, kowner, s)
  local cur = redis.call('HMGET', krec, 'r', 'c')
  if not cur[1] then
    local reason = redis.call('HGET', ktomb, 'reason')
    if reason then return {2, reason} end
    return {3}
  end
  if cur[1] ~= s[1] or (cur[2] and cur[2] ~= s[2]) then return {0} end
  redis.call('DEL', krec)
  redis.call('HSET', krec, unpack(s, 9))
  redis.call('PEXPIRE', krec, s[4])
  if redis.call('PEXPIRE', ktomb, s[5]) == 0 then
    redis.call('HSET', ktomb, 'reason', 'expired', 'owner', s[7])
    redis.call('PEXPIRE', ktomb, s[5])
  end
  redis.call('ZADD', klive, s[3], s[6])
  if kowner then
    redis.call('SADD', kowner, s[6])
    if redis.call('PTTL', kowner) < tonumber(s[4]) then
      redis.call('PEXPIRE', kowner, s[4])
    end
  end
  return {1}
end
"""

SAVE = (
    _SAVE_ONE
    + """
return save(KEYS[1], KEYS[2], KEYS[3], KEYS[4], cmsgpack.unpack(ARGV[1]))
"""
)
"""KEYS: record, tombstone, live[, owner index]. ARGV[1]: the save as one MessagePack array
of strings (``redis_codec.save_args``): the compare-and-set's expected revision and
incarnation, ``expires_at``, the record's and the tombstone's TTL in milliseconds, the id,
the owner, the kind, then the record's fields as name, value, ... One argument, decoded by
Redis's built-in ``cmsgpack`` in C: redis-py's asyncio client packs every argument in
Python, and splitting one string into fields in Lua costs Redis more than the writes
themselves (docs/performance.md). The incarnation is field ``c``; a record without it,
written by an older version, is not checked.
Returns {1} saved, {0} revision or incarnation mismatch, {2, reason} tombstone, {3} no
such session."""

SAVE_MANY = (
    _SAVE_ONE
    + """
local p = ARGV[1]
local function save_packed(packed)
  local s = cmsgpack.unpack(packed)
  local id = s[6]
  return save(p .. 's:' .. id, p .. 't:' .. id, p .. 'live', p .. 'o:' .. s[8] .. ':' .. s[7], s)
end
local out = {}
for i = 2, #ARGV do
  local ok, res = pcall(save_packed, ARGV[i])
  if ok then
    out[i - 1] = res
  elseif type(res) == 'table' and res.err then
    out[i - 1] = res
  else
    out[i - 1] = redis.error_reply('ERR ' .. tostring(res))
  end
end
return out
"""
)
"""One Redis only (not Redis Cluster): ``SAVE`` of several sessions in one call, one command
and one reply for a batch's saves. No KEYS: ARGV[1] is the key prefix and each session's
keys are built from it as ``RedisStore`` lays them out (``{p}s:{id}``, ``{p}t:{id}``,
``{p}live``, ``{p}o:{kind}:{owner}``), then one argument per session, as ``SAVE``'s: four
keys per session would be four more arguments for redis-py to pack in Python. Returns one
``SAVE`` reply per session, in order; a session whose save fails (``WRONGTYPE`` on its
keys) has an error in its place, and the others are saved."""

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
