"""The Lua scripts that make the backend's writes atomic, each with its change-log entry.

Redis runs a script as one command: nothing else runs in between ("Scripting with Lua", atomicity). Each
script is registered with ``register_script`` and called by EVALSHA (redis-py loads it again after a
NOSCRIPT reply, e.g. once the server restarted), so a write is one round trip whatever it does: the change,
its seq, its log entry, the retention trim and the PUBLISH to the room's channel.

**Writes that log** start with :data:`PRELUDE` and share its calling convention::

    KEYS[1] epoch   KEYS[2] head   KEYS[3] log   KEYS[4…] the script's own
    ARGV[1] a new epoch, used if the store has none   ARGV[2] the room's channel   ARGV[3] max changes kept
    ARGV[4] the cutoff time (13-digit ms: older entries are dropped)   ARGV[5] how long the log outlives
    its last append (ms)   ARGV[6] the entry's prefix (13-digit ms, 2-digit kind)   ARGV[7] the Change's
    head   ARGV[8] its tail format   ARGV[9] the webhook outbox's messages ('' for none;
    :func:`room_gateway_plugins.redis.outbox.spec`)   ARGV[10…] the script's own

The gateway encodes the Change without what the store assigns (:func:`gateway.core.wire.head`: epoch, a
variable's version, seq); the script completes it with :func:`gateway.core.wire.tail_format` filled in.
Lua never decodes nor re-encodes a value — Redis' cjson would turn integers into doubles and empty objects
into arrays. The epoch is the store's, created here when it has none (the first write, or Redis lost its
data), so a flushed Redis starts a new epoch with no round trip to learn it; every script answers it.

Every key a script touches is passed in ``KEYS``, except the webhook outbox's (``ARGV[9]`` of the logging
scripts; CLAIM, SETTLE, REPLAY, PRUNE): :mod:`room_gateway_plugins.redis.outbox` says which and why.
"""

from __future__ import annotations


def _epoch(argv: int) -> str:
    """Lua setting ``epoch`` to the store's epoch, created from ``ARGV[argv]`` if it has none (KEYS[1])."""
    return f"""
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[{argv}]
  redis.call('SET', KEYS[1], epoch)
end
"""


#: The common head of every logging script: the store's epoch, and ``append(version)``, which assigns the
#: next seq, completes the record, logs it (trimmed by count and age) and publishes it; it returns the seq
#: and the record.
PRELUDE = (
    _epoch(1)
    + """
local function keep(entry)
  local max = tonumber(ARGV[3])
  if max <= 0 then
    return
  end
  local n = redis.call('RPUSH', KEYS[3], entry)
  if n > max then
    redis.call('LTRIM', KEYS[3], n - max, -1)
  end
  -- Fixed-width times compare as strings. Bounded per append: retention may lag, a write may not stall.
  for _ = 1, 100 do
    local oldest = redis.call('LINDEX', KEYS[3], 0)
    if not oldest or string.sub(oldest, 1, 13) >= ARGV[4] then
      break
    end
    redis.call('LPOP', KEYS[3])
  end
  -- An idle room's log expires whole once its newest entry is too old to keep.
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end

local function complete(head, seq, version)
  if version then
    return head .. string.format(ARGV[8], epoch, version, seq)
  end
  return head .. string.format(ARGV[8], epoch, seq)
end

-- The webhook outbox: a message per endpoint of the change, written in this same script. ``previous`` is
-- the variable's record before a write (SET_VARIABLE sets it when an endpoint takes the write).
local outbox = false
if ARGV[9] ~= '' then
  local id, due, created, to, n, rest = string.match(
    ARGV[9], '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([0-9]+)\t(.*)$')
  n = tonumber(n)
  local targets = {}
  for one in string.gmatch(to, '[^,]+') do
    targets[#targets + 1] = one
  end
  outbox = {id = id, due = due, created = created, to = targets, keys = string.sub(rest, 1, n),
    room = string.sub(rest, n + 1)}
end
local previous = false

local function enqueue(seq, record)
  if not outbox then
    return
  end
  local id = outbox.id .. '-' .. seq
  for _, endpoint in ipairs(outbox.to) do
    local base = outbox.keys .. endpoint
    local key = base .. ':m:' .. id
    redis.call('HSET', key, 'room', outbox.room, 'payload', record, 'status', 'pending', 'attempts', 0,
      'due', outbox.due, 'created', outbox.created, 'log', '[]')
    if previous then
      redis.call('HSET', key, 'previous', previous)
    end
    redis.call('ZADD', base .. ':due', outbox.due, id)
    redis.call('ZADD', base .. ':all', outbox.created, id)
  end
end

local function append(version)
  local seq = redis.call('INCR', KEYS[2])
  local record = complete(ARGV[7], seq, version)
  keep(ARGV[6] .. record)
  redis.call('PUBLISH', ARGV[2], record)
  enqueue(seq, record)
  return seq, record
end
"""
)

#: Overwrite the room at KEYS[4] with ARGV[10], or answer {0, epoch} if there is no such room.
_SAVE_EXISTING = """
if not redis.call('SET', KEYS[4], ARGV[10], 'XX') then
  return {0, epoch}
end
"""

#: Create a room unless its id was ever used (a deleted room stays as a tombstone, so its id stays taken),
#: list it, and log ROOM_CREATED. KEYS[4] room, KEYS[5] rooms. ARGV[10] room JSON, ARGV[11] room id.
#: Returns {1, epoch, seq}, or {0, epoch} if the id was taken.
CREATE_ROOM = (
    PRELUDE
    + """
if not redis.call('SET', KEYS[4], ARGV[10], 'NX') then
  return {0, epoch}
end
redis.call('ZADD', KEYS[5], 0, ARGV[11])
return {1, epoch, (append())}
"""
)

#: Overwrite an existing room and log its change (ROOM_UPDATED, ROOM_CLOSED). KEYS[4] room. ARGV[10] room
#: JSON. Returns {1, epoch, seq}, or {0, epoch} if there is no such room.
SAVE_ROOM = PRELUDE + _SAVE_EXISTING + "return {1, epoch, (append())}\n"

#: Write or delete one variable: compare-and-set, version bump, log entry and notification in one step, so
#: listeners receive the changes of a variable in version order.
#:
#: The version comes from the ``versions`` hash, which keeps a deleted variable's last version so that
#: versions never repeat; the variable is *set* while it has a record in ``vars``. The record, stored,
#: logged and published, is the wire bytes of the Change (VARIABLE_SET).
#:
#: KEYS[4] vars, KEYS[5] versions. ARGV[10] name, ARGV[11] expected version ('' for none; '0' means
#: "unset"), ARGV[12] '1' to delete. Returns {1, epoch, seq, version}; {1, epoch, 0, 0} when deleting an
#: unset variable (nothing done); {0, epoch, 0, current version} when the expected version does not match.
SET_VARIABLE = (
    PRELUDE
    + """
local name = ARGV[10]
local last = tonumber(redis.call('HGET', KEYS[5], name) or '0')
local current = 0
if redis.call('HEXISTS', KEYS[4], name) == 1 then
  current = last
end
if ARGV[11] ~= '' and tonumber(ARGV[11]) ~= current then
  return {0, epoch, 0, current}
end
local delete = ARGV[12] == '1'
if delete and current == 0 then
  return {1, epoch, 0, 0}
end
local version = redis.call('HINCRBY', KEYS[5], name, 1)
if outbox and current ~= 0 then
  previous = redis.call('HGET', KEYS[4], name)
end
local seq, record = append(version)
if delete then
  redis.call('HDEL', KEYS[4], name)
else
  redis.call('HSET', KEYS[4], name, record)
end
return {1, epoch, seq, version}
"""
)

#: Log a Change that changes nothing else (EVENT, CONNECTIONS_INVALIDATED) and publish it.
#: Returns {1, epoch, seq}.
APPEND = PRELUDE + "return {1, epoch, (append())}\n"

#: Delete a room: store its tombstone, wipe its variables, log, head and presence, and publish ROOM_DELETED
#: at the old head's seq + 1 without logging it (the log is gone: it is the room's last change). KEYS[4]
#: room, KEYS[5] vars, KEYS[6] versions, KEYS[7] users, KEYS[8] members. ARGV[10] the tombstone's JSON.
#: Returns {1, epoch, seq}, or {0, epoch} if there is no such room.
DELETE_ROOM = (
    PRELUDE
    + _SAVE_EXISTING
    + """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
local record = complete(ARGV[7], seq)
redis.call('PUBLISH', ARGV[2], record)
enqueue(seq, record)
return {1, epoch, seq}
"""
)

#: Lua answering {0, epoch} unless the instance ARGV[13] is alive (in the heartbeat set KEYS[8]).
_ALIVE_ONLY = """
if not redis.call('ZSCORE', KEYS[8], ARGV[13]) then
  return {0, epoch}
end
"""

#: One more connection of a user in a room on an instance; the user's first on any instance logs
#: MEMBER_JOINED. Nothing when the instance is not alive (in the heartbeat set): it rejoins after its next
#: heartbeat.
#:
#: KEYS[4] held (this instance, this room), KEYS[5] holds (this instance), KEYS[6] users, KEYS[7] members,
#: KEYS[8] instances. ARGV[10] user id, ARGV[11] member JSON, ARGV[12] room id, ARGV[13] instance (ARGV[14]
#: is PRESENCE_REJOIN's).
#: Returns {1, epoch, seq} when logged, else {0, epoch}.
PRESENCE_JOIN = (
    PRELUDE
    + _ALIVE_ONLY
    + """
local user = ARGV[10]
redis.call('HINCRBY', KEYS[4], user, 1)
redis.call('SADD', KEYS[5], ARGV[12])
if redis.call('HINCRBY', KEYS[6], user, 1) == 1 then
  redis.call('HSET', KEYS[7], user, ARGV[11])
  return {1, epoch, (append())}
end
return {0, epoch}
"""
)

#: Count exactly ARGV[14] connections of a user in a room on an alive instance, whatever it counted there
#: before (an expired instance rejoining, or settling a count a failed write left unsure): MEMBER_JOINED
#: when the user goes from none on any instance to some, MEMBER_LEFT from some to none (the Change of
#: ARGV[6…8] is the one that can happen: JOINED for a count above 0, LEFT for 0). The keys and other
#: arguments are PRESENCE_JOIN's. Returns {1, epoch, seq} when logged, else {0, epoch}.
PRESENCE_REJOIN = (
    PRELUDE
    + _ALIVE_ONLY
    + """
local user, wanted = ARGV[10], tonumber(ARGV[14])
local mine = tonumber(redis.call('HGET', KEYS[4], user) or '0')
local before = tonumber(redis.call('HGET', KEYS[6], user) or '0')
if wanted > 0 then
  redis.call('HSET', KEYS[4], user, wanted)
  redis.call('SADD', KEYS[5], ARGV[12])
else
  if mine <= 0 then
    return {0, epoch}
  end
  redis.call('HDEL', KEYS[4], user)
  if redis.call('HLEN', KEYS[4]) == 0 then
    redis.call('SREM', KEYS[5], ARGV[12])
  end
end
local after = before + wanted - mine
if after > 0 then
  redis.call('HSET', KEYS[6], user, after)
else
  redis.call('HDEL', KEYS[6], user)
  redis.call('HDEL', KEYS[7], user)
end
if before <= 0 and after > 0 then
  redis.call('HSET', KEYS[7], user, ARGV[11])
  return {1, epoch, (append())}
end
if before > 0 and after <= 0 then
  return {1, epoch, (append())}
end
return {0, epoch}
"""
)

#: One connection fewer; the user's last on any instance logs MEMBER_LEFT. A leave the instance never
#: counted, or of a room deleted (or an instance swept) meanwhile, changes nothing shared.
#:
#: KEYS[4] held, KEYS[5] holds, KEYS[6] users, KEYS[7] members. ARGV[10] user id, ARGV[11] room id.
#: Returns {1, epoch, seq} when logged, else {0, epoch}.
PRESENCE_LEAVE = (
    PRELUDE
    + """
local user = ARGV[10]
local mine = tonumber(redis.call('HGET', KEYS[4], user) or '0')
if mine <= 0 then
  return {0, epoch}
end
if mine == 1 then
  redis.call('HDEL', KEYS[4], user)
  if redis.call('HLEN', KEYS[4]) == 0 then
    redis.call('SREM', KEYS[5], ARGV[11])
  end
else
  redis.call('HINCRBY', KEYS[4], user, -1)
end
local total = tonumber(redis.call('HGET', KEYS[6], user) or '0')
if total <= 0 then
  return {0, epoch}
end
if total == 1 then
  redis.call('HDEL', KEYS[6], user)
  redis.call('HDEL', KEYS[7], user)
  return {1, epoch, (append())}
end
redis.call('HINCRBY', KEYS[6], user, -1)
return {0, epoch}
"""
)

#: Drop a dead instance's connections in one room, logging MEMBER_LEFT for each user whose last connections
#: they were, each with its own Change head (ARGV[7] is unused). Safe to run twice, or on two instances at
#: once: the second finds nothing left to drop.
#:
#: KEYS[4] held (dead instance, room), KEYS[5] holds (dead instance), KEYS[6] users, KEYS[7] members.
#: ARGV[10] room id, then per user: user id, entry prefix, Change head. Returns {1, epoch, seqs logged}.
PRESENCE_SWEEP = (
    PRELUDE
    + """
local seqs = {}
for i = 11, #ARGV, 3 do
  local user = ARGV[i]
  local mine = tonumber(redis.call('HGET', KEYS[4], user) or '0')
  if mine > 0 then
    redis.call('HDEL', KEYS[4], user)
    local total = tonumber(redis.call('HGET', KEYS[6], user) or '0')
    if total > mine then
      redis.call('HINCRBY', KEYS[6], user, -mine)
    elseif total > 0 then
      redis.call('HDEL', KEYS[6], user)
      redis.call('HDEL', KEYS[7], user)
      local seq = redis.call('INCR', KEYS[2])
      local record = complete(ARGV[i + 2], seq)
      keep(ARGV[i + 1] .. record)
      redis.call('PUBLISH', ARGV[2], record)
      enqueue(seq, record)
      seqs[#seqs + 1] = seq
    end
  end
end
if redis.call('HLEN', KEYS[4]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[10])
end
return {1, epoch, seqs}
"""
)

#: A presence heartbeat: push this instance's deadline. KEYS[1] instances, KEYS[2] expiring. ARGV[1]
#: instance, ARGV[2] its new deadline (ms). Returns 1 if it was alive; 0 if it was not (first heartbeat, or
#: expired: it is added now) or is still being expired (it is not added until that is done).
HEARTBEAT = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 0
end
return 1 - redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
"""

#: Move the instances past their deadline from the heartbeat set to the expiring set: from then on none of
#: their joins counts, and each is swept room by room (PRESENCE_SWEEP), then forgotten (FORGET_INSTANCE).
#: KEYS[1] instances, KEYS[2] expiring. ARGV[1] now (ms). Returns {the earliest deadline left ('' if none),
#: every expiring instance…} — an expiry that did not finish is finished by the next.
EXPIRE = """
for _, instance in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) do
  redis.call('ZREM', KEYS[1], instance)
  redis.call('SADD', KEYS[2], instance)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = {first[2] or ''}
for _, instance in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = instance
end
return out
"""

#: Forget a swept instance once it holds connections nowhere. KEYS[1] expiring, KEYS[2] holds. ARGV[1]
#: instance. Returns 1 if forgotten.
FORGET_INSTANCE = """
if redis.call('SCARD', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""

#: A slice of a room's log with its bounds and the epoch, in one step.
#: KEYS[1] epoch, KEYS[2] head, KEYS[3] log. ARGV[1] a new epoch if the store has none, ARGV[2] after seq,
#: ARGV[3] limit, ARGV[4] kinds to keep as ``,01,07,`` ('' for all). Returns {head, first seq, epoch,
#: entries…}, each entry with its 15-byte prefix.
READ_CHANGES = (
    _epoch(1)
    + """
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = redis.call('LLEN', KEYS[3])
local first = head - n + 1
local start = tonumber(ARGV[2]) - first + 1
if start < 0 then
  start = 0
end
local limit = tonumber(ARGV[3])
local out = {head, first, epoch}
if limit <= 0 or start >= n then
  return out
end
if ARGV[4] == '' then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[3], start, start + limit - 1)) do
    out[#out + 1] = entry
  end
  return out
end
local taken = 0
while taken < limit and start < n do
  for _, entry in ipairs(redis.call('LRANGE', KEYS[3], start, start + 99)) do
    if string.find(ARGV[4], ',' .. string.sub(entry, 14, 15) .. ',', 1, true) then
      out[#out + 1] = entry
      taken = taken + 1
      if taken == limit then
        return out
      end
    end
  end
  start = start + 100
end
return out
"""
)

#: Every set variable of a room with the log position, in one step. KEYS[1] epoch, KEYS[2] head, KEYS[3]
#: vars. ARGV[1] a new epoch if the store has none. Returns {epoch, head, name, record, name, record, …}.
GET_CONTENTS = (
    _epoch(1)
    + """
local out = {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
for _, item in ipairs(redis.call('HGETALL', KEYS[3])) do
  out[#out + 1] = item
end
return out
"""
)

#: The store's epoch, created if it has none. KEYS[1] epoch. ARGV[1] a new epoch.
EPOCH = _epoch(1) + "return epoch\n"

# -- the webhook outbox: per endpoint, {prefix}wh:{endpoint}:due (sorted set: pending id -> due ms),
# :all (every id -> created ms), :m:{id} (hash: the message), :state (hash: the endpoint's state) -----------

#: Claim due messages: each one's due time moves to the lease's end and its attempts grow by one, in one
#: step, so two instances never claim one attempt. KEYS[1] due. ARGV[1] now (ms), ARGV[2] the lease's end
#: (ms), ARGV[3] limit, ARGV[4] the messages' key prefix. Returns an empty list when none is due, else one
#: JSON array (cjson), :data:`CLAIMED_FIELDS` (seven) items a message: its id, its attempts (this one
#: counted), then its room, payload, previous, created and log (``false`` when absent). A message in
#: ``:due`` is pending, and its due time is the lease's end: neither is read back.
#:
#: Why one JSON string: redis-py's reply parser without hiredis is pure Python, a dozen calls for each
#: string of a reply; HGETALL's lists of 16 made a claim of 64 messages 1,100 strings, and its parsing
#: was the largest part of a claim (bench/webhooks_instructions.py drain, session 8). The stored strings
#: are only quoted here (cjson encodes them, never decodes a value), so what is read back is what was
#: written; orjson parses the array in one call.
CLAIM = """
local limit = tonumber(ARGV[3])
if limit <= 0 then
  return {}
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)) do
  local key = ARGV[4] .. id
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'due', ARGV[2])
  local f = redis.call('HMGET', key, 'room', 'payload', 'previous', 'created', 'log')
  out[#out + 1] = id
  out[#out + 1] = attempts
  for i = 1, 5 do
    out[#out + 1] = f[i]
  end
end
if #out == 0 then
  return {}
end
return cjson.encode(out)
"""
#: The number of items :data:`CLAIM`'s array has a message.
CLAIMED_FIELDS = 7

#: Settle claimed attempts of one endpoint, in their order, each if it is still the message's latest and
#: the message is pending, recording each outcome in the endpoint's state. KEYS[1] due, KEYS[2] the state.
#: ARGV[1] the messages' key prefix, ARGV[2] a JSON array (every item a string) of
#: :data:`SETTLED_FIELDS` (seven) items an attempt: the message's id, the attempt's number, the new status,
#: the next due time (ms; '' when settled), the log, '1' for a success and the attempt's time (ms).
#: Returns {a string of '1' (recorded) or '0' (stale) an attempt, then the state's fields after the
#: batch}. One script, one argument and one state for a batch: a script per attempt, pipelined, packed
#: seven arguments and parsed the state's eight fields for each (the pure-Python parser, as for CLAIM).
#: cjson decodes only strings here (the log stays its text), so nothing is turned into a double.
SETTLE = """
local prefix, settled, stride = ARGV[1], cjson.decode(ARGV[2]), 7
local done = {}
for i = 1, #settled, stride do
  local id = settled[i]
  local key = prefix .. id
  local status, attempts = unpack(redis.call('HMGET', key, 'status', 'attempts'))
  if status ~= 'pending' or attempts ~= settled[i + 1] then
    done[#done + 1] = '0'
  else
    local due = settled[i + 3]
    redis.call('HSET', key, 'status', settled[i + 2], 'log', settled[i + 4], 'due', due)
    if due == '' then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], due, id)
    end
    if settled[i + 5] == '1' then
      redis.call('HDEL', KEYS[2], 'failing_since')
      redis.call('HSET', KEYS[2], 'last_success', settled[i + 6])
    else
      redis.call('HSETNX', KEYS[2], 'failing_since', settled[i + 6])
    end
    done[#done + 1] = '1'
  end
end
return {table.concat(done), redis.call('HGETALL', KEYS[2])}
"""
#: The number of items :data:`SETTLE`'s array has an attempt.
SETTLED_FIELDS = 7

#: Make a message pending and due now. KEYS[1] due, KEYS[2] the message. ARGV[1] the id, ARGV[2] now (ms).
#: Returns 1, or 0 when there is no such message.
RETRY = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], 'status', 'pending', 'due', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

#: Copy every message created since a time under new ids, pending and due now. KEYS[1] due, KEYS[2] all.
#: ARGV[1] since (ms), ARGV[2] now (ms), ARGV[3] the messages' key prefix, ARGV[4] the new ids' prefix.
#: Returns how many were copied.
REPLAY = """
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf')) do
  local fields = redis.call('HGETALL', ARGV[3] .. id)
  if #fields > 0 then
    n = n + 1
    local copy = ARGV[4] .. '-' .. n
    local key = ARGV[3] .. copy
    redis.call('HSET', key, unpack(fields))
    redis.call('HSET', key, 'status', 'pending', 'attempts', 0, 'due', ARGV[2], 'created', ARGV[2])
    redis.call('HSET', key, 'log', '[]')
    redis.call('ZADD', KEYS[1], ARGV[2], copy)
    redis.call('ZADD', KEYS[2], ARGV[2], copy)
  end
end
return n
"""

#: Delete settled messages created before their status' cutoff, oldest first, never a pending one. KEYS[1]
#: all. ARGV[1] the delivered ones' cutoff (ms), ARGV[2] the failed ones', ARGV[3] how many at most,
#: ARGV[4] the messages' key prefix. Looks at ten times that many at most (pending messages among the old
#: ones are stepped over), so that one call stays short. Returns how many were deleted.
PRUNE = """
local delivered, failed, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local latest = math.max(delivered, failed)
local pruned, kept, seen = 0, 0, 0
while pruned < limit and seen < limit * 10 do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. latest, 'WITHSCORES', 'LIMIT', kept, 100)
  if #page == 0 then
    break
  end
  for i = 1, #page, 2 do
    local id, created = page[i], tonumber(page[i + 1])
    local status = redis.call('HGET', ARGV[4] .. id, 'status')
    seen = seen + 1
    if (status == 'delivered' and created < delivered) or (status == 'failed' and created < failed)
        or not status then
      redis.call('DEL', ARGV[4] .. id)
      redis.call('ZREM', KEYS[1], id)
      pruned = pruned + 1
      if pruned == limit then
        break
      end
    else
      kept = kept + 1
    end
  end
end
return pruned
"""
