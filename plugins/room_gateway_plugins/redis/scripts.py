"""The Lua scripts that make the backend's writes atomic.

Redis runs a script as one command: nothing else runs in between ("Scripting with Lua", atomicity). Each
script is registered with ``register_script`` and called by EVALSHA (redis-py loads it again after a
NOSCRIPT reply, e.g. once the server restarted). Every key a script touches is passed in ``KEYS``.
"""

from __future__ import annotations

#: Create a room unless its id was ever used: the room's key is set only if absent (a deleted room stays
#: as a tombstone, so its id stays taken), and its id joins the sorted set used for listing in the same
#: step. KEYS: room, rooms. ARGV: room JSON, room id. Returns 1 if created, 0 if the id was taken.
CREATE_ROOM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  return 1
end
return 0
"""

#: Write or delete one variable: compare-and-set, version bump and notification in one step, so listeners
#: receive the changes of a variable in version order.
#:
#: The version comes from the ``versions`` hash, which keeps a deleted variable's last version so that
#: versions never repeat; the variable is *set* while it has a record in ``vars``. The record, stored and
#: published, is the wire message of the write (:mod:`gateway.core.wire`): the head made by the gateway
#: (``wire.variable_head``) completed with ``wire.VERSION_TAIL`` — Lua never decodes the value.
#:
#: KEYS: vars, versions. ARGV: name, expected version ('' for none; '0' means "unset"), '1' to delete,
#: message head, channel. Returns {1, version}; {1, 0} when deleting an unset variable (nothing done);
#: {0, current version} when the expected version does not match.
SET_VARIABLE = """
local name = ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[2], name) or '0')
local current = 0
if redis.call('HEXISTS', KEYS[1], name) == 1 then
  current = last
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {0, current}
end
local delete = ARGV[3] == '1'
if delete and current == 0 then
  return {1, 0}
end
local version = redis.call('HINCRBY', KEYS[2], name, 1)
local record = ARGV[4] .. string.format('"version":%d}', version)
if delete then
  redis.call('HDEL', KEYS[1], name)
else
  redis.call('HSET', KEYS[1], name, record)
end
redis.call('PUBLISH', ARGV[5], record)
return {1, version}
"""
