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
local function parse(meta, data)
  local s = {}
  local idlen, ownerlen
  s.rev, s.inc, s.expires_at, s.ttl_ms, s.tomb_ms, idlen, ownerlen, s.kind, s.lengths =
    string.match(meta, '^(%d+) (%S+) (%S+) (%d+) (%d+) (%d+) (%d+) (%S+) (.*)$')
  idlen, ownerlen = tonumber(idlen), tonumber(ownerlen)
  s.id = string.sub(data, 1, idlen)
  s.owner = string.sub(data, idlen + 1, idlen + ownerlen)
  s.at = idlen + ownerlen + 1
  return s
end

local function save(krec, ktomb, klive, kowner, s, data)
  local cur = redis.call('HMGET', krec, 'r', 'c')
  if not cur[1] then
    local reason = redis.call('HGET', ktomb, 'reason')
    if reason then return {2, reason} end
    return {3}
  end
  if cur[1] ~= s.rev or (cur[2] and cur[2] ~= s.inc) then return {0} end
  local fields = {}
  local at = s.at
  local pos = at
  for nlen in string.gmatch(s.lengths, '(%d+):') do
    pos = pos + tonumber(nlen)
  end
  for nlen, vlen in string.gmatch(s.lengths, '(%d+):(%d+)') do
    nlen, vlen = tonumber(nlen), tonumber(vlen)
    fields[#fields + 1] = string.sub(data, at, at + nlen - 1)
    fields[#fields + 1] = string.sub(data, pos, pos + vlen - 1)
    at, pos = at + nlen, pos + vlen
  end
  redis.call('DEL', krec)
  redis.call('HSET', krec, unpack(fields))
  redis.call('PEXPIRE', krec, s.ttl_ms)
  if redis.call('PEXPIRE', ktomb, s.tomb_ms) == 0 then
    redis.call('HSET', ktomb, 'reason', 'expired', 'owner', s.owner)
    redis.call('PEXPIRE', ktomb, s.tomb_ms)
  end
  redis.call('ZADD', klive, s.expires_at, s.id)
  if kowner then
    redis.call('SADD', kowner, s.id)
    if redis.call('PTTL', kowner) < tonumber(s.ttl_ms) then
      redis.call('PEXPIRE', kowner, s.ttl_ms)
    end
  end
  return {1}
end
"""

SAVE = (
    _SAVE_ONE
    + """
return save(KEYS[1], KEYS[2], KEYS[3], KEYS[4], parse(ARGV[1], ARGV[2]), ARGV[2])
"""
)
"""KEYS: record, tombstone, live[, owner index]. ARGV: the save's two arguments
(``redis_codec.save_args``): ``"{expected revision} {expected incarnation} {expires_at}
{ttl_ms} {tomb_ms} {id length} {owner length} {kind} {name:value,...}"``, the byte lengths
of each field's name and value; and the id, the owner, the fields' names and the fields'
values, end to end. The incarnation is field ``c``; a record without it, written by an
older version, is not checked. Two arguments, not two per field: redis-py's asyncio
client packs every argument in Python, and that was the largest cost of a step.
Returns {1} saved, {0} revision or incarnation mismatch, {2, reason} tombstone, {3} no
such session."""

SAVE_MANY = (
    _SAVE_ONE
    + """
local p = ARGV[1]
local out = {}
for i = 1, (#ARGV - 1) / 2 do
  local meta, data = ARGV[2 * i], ARGV[2 * i + 1]
  local ok, res = pcall(function()
    local s = parse(meta, data)
    return save(p .. 's:' .. s.id, p .. 't:' .. s.id, p .. 'live',
                p .. 'o:' .. s.kind .. ':' .. s.owner, s, data)
  end)
  if ok then
    out[i] = res
  elseif type(res) == 'table' and res.err then
    out[i] = res
  else
    out[i] = redis.error_reply('ERR ' .. tostring(res))
  end
end
return out
"""
)
"""One Redis only (not Redis Cluster): ``SAVE`` of several sessions in one call, one command
and one reply for a batch's saves. No KEYS: ARGV[1] is the key prefix and each session's
keys are built from it as ``RedisStore`` lays them out (``{p}s:{id}``, ``{p}t:{id}``,
``{p}live``, ``{p}o:{kind}:{owner}``), then two arguments per session, as ``SAVE``'s: four
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
