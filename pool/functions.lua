#!lua name=ridpool
--[[
The server-side steps of ridpool, one Redis Function library (Redis >= 7.0), loaded with FUNCTION LOAD REPLACE.

Every step that must be atomic lives here and nowhere else. Every key a function touches arrives in KEYS (Redis
Cluster needs that) and all keys of one call share one hash tag. Time is always Redis server time (TIME), so
replicas on hosts with skewed clocks agree on what has expired.

An entry is stored as a msgpack array: {version, resourceId, appid, cname, uid, pool, sentAt_ms, expiresAt_ms,
requestId}; it sits in a queue (zset) scored by expiresAt_ms, the server time at which it stops being offered.
Every key that holds an ID expires (PEXPIREAT) with the longest-lived ID it holds, so Redis forgets every ID by
itself even when no daemon runs.
]]

local LIBRARY_VERSION = '3'
-- How every entry of the version this library reads starts: a 9-element msgpack array (0x99) whose first
-- element, the version, is 1.
local ENTRY_HEAD = '\153\001'
local MAX_LIFE_MS = 300000 -- Agora's five minutes: no entry may claim to live longer

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

--[[
Arguments from any client, checked before anything is read or written: a function given keys that do not belong
together, or an argument out of range, answers 'BAD_ARGUMENT ...' and changes nothing. These cost comparisons,
never a command.
]]

-- A key's hash tag part ('PREFIX:{POOL}' or 'PREFIX:{acct:NAME}') and what follows it (':meta', ':q:room-1').
-- Prefixes and names never hold braces (keys.py), so the first '}' closes the tag.
local function key_parts(key)
  local open_at = string.find(key, '{', 1, true)
  local close_at = open_at and string.find(key, '}', open_at, true)
  if not close_at then
    return nil, nil
  end
  return string.sub(key, 1, close_at), string.sub(key, close_at + 1)
end

-- The queue key of a channel of the pool whose tag is `tag` ('' : the template pool's one queue), as keys.py
-- builds it: '%' and ':' in the cname percent-encoded.
local function queue_of(tag, cname)
  if cname == '' then
    return tag .. ':q'
  end
  return tag .. ':q:' .. string.gsub(cname, '[%%:]', { ['%'] = '%25', [':'] = '%3A' })
end

-- Nil when every key has the tag of keys[1] and the suffix `rests[i]` asks for ('' skips a key the caller
-- checks itself, such as a queue); else the error reply naming the first key that does not fit.
local function check_keys(keys, rests)
  local tag = key_parts(keys[1] or '')
  if not tag then
    return redis.error_reply('BAD_ARGUMENT KEYS[1] is not a ridpool key (no {hash tag})')
  end
  for i, rest in ipairs(rests) do
    local key = keys[i]
    if key == nil then
      return redis.error_reply('BAD_ARGUMENT expected ' .. #rests .. ' keys, got ' .. #keys)
    end
    local key_tag, key_rest = key_parts(key)
    if key_tag ~= tag or (rest ~= '' and key_rest ~= rest) then
      local want = rest ~= '' and (tag .. rest) or ('a key of ' .. tag)
      return redis.error_reply('BAD_ARGUMENT KEYS[' .. i .. '] must be ' .. want)
    end
  end
  return nil
end

-- A whole number from `low` to `high` (NaN, infinities and fractions fail), or nil.
local function whole(text, low, high)
  local n = text and tonumber(text)
  if n == nil or n ~= n or n ~= math.floor(n) or n < low or n > high then
    return nil
  end
  return n
end

-- Keep a zset's own expiry at its highest score (the longest-lived member), or drop it when empty.
local function expire_with_top(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', key, top[2])
  else
    redis.call('DEL', key)
  end
end

-- Drop the entries of a queue that have stopped being offered. Not counted here: Redis may expire a whole
-- queue before any call sees its dead entries, so "expired unused" is derived instead (added - pops - dropped -
-- live).
local function purge_dead(queue, now)
  if redis.call('ZREMRANGEBYSCORE', queue, '-inf', now) > 0 then
    expire_with_top(queue)
  end
end

-- The identity of the data set this library runs on: the run_id of this redis-server process, read on the first
-- call after the library is loaded (INFO costs a few microseconds; a library-level local lives as long as the
-- loaded library, and a restarted or promoted server loads the library anew).
-- A restart (from RDB or AOF), the promotion of a replica, or a slot moved to another Cluster node all serve the
-- data under another run_id.
local instance_id = false
local function instance()
  if not instance_id then
    instance_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  end
  return instance_id
end

-- Make sure a queue's entries were stored in the data set being served now; if not, drop them. Entries that
-- outlived a restore or a failover may have been popped already in the lost history, so none of them can be
-- offered again. `mark` is the meta field recording where the queue was filled ('e:' .. slot); `seen` its value
-- when the caller read it already. Returns false when the queue is current, else how many entries were dropped
-- (counted in stats as 'dropped'; 0 is still true in Lua: the queue was not current).
-- The queue (and its wake-up list) go first: a failure between the writes leaves the mark stale, never a stale
-- queue marked current.
local function check_data_set(meta, stats, queue, ready, mark, seen)
  if seen == nil then
    seen = redis.call('HGET', meta, mark)
  end
  local here = instance()
  if seen == here then
    return false
  end
  local dropped = redis.pcall('ZCARD', queue)
  if ready then
    redis.call('DEL', queue, ready)
  else
    redis.call('DEL', queue)
  end
  redis.call('HSET', meta, mark, here)
  if type(dropped) ~= 'number' then
    dropped = 0
  elseif dropped > 0 then
    redis.pcall('HINCRBY', stats, 'dropped', dropped)
  end
  return dropped
end

-- Put back an entry a pop took out but cannot hand out; the caller made sure the user may ZADD. If the queue was
-- emptied by the take, ZADD made a new key without an expiry: give it the entry's.
local function put_back(queue, member, score)
  redis.call('ZADD', queue, score, member)
  local ttl = redis.pcall('PTTL', queue)
  if type(ttl) ~= 'number' or ttl < 0 then
    redis.pcall('PEXPIREAT', queue, score)
  end
end

-- Count a pop; if the count is refused (the stats key damaged, a user without HINCRBY), put the entry back.
-- Returns nil, or the error to return.
local function count_pop(stats, queue, member, score)
  local counted = redis.pcall('HINCRBY', stats, 'pops', 1)
  if type(counted) == 'table' then
    put_back(queue, member, score)
    return counted
  end
  return nil
end

-- The pop's checks and take (see take_entry). Returns member, expires_at, now; or nil, error reply; or nil, nil.
-- A pop that fails removes nothing: checks and reads come first; whether the user may put an entry back (ZADD) is
-- asked before anything is taken; whatever fails after a take puts the entry back. Out of memory is refused by
-- Redis before the function starts (it is not flagged allow-oom).
local function take_checked(keys, args)
  local meta, stats, queue = keys[1], keys[2], keys[3]
  local cname = args[1]
  local min_ttl = tonumber(args[2])
  if min_ttl == nil or min_ttl < 0 or min_ttl >= MAX_LIFE_MS then
    return nil, redis.error_reply('BAD_ARGUMENT min_ttl_ms must be a number from 0 to below 300000')
  end
  local known = redis.call('HMGET', meta, 'mode', 'c:' .. cname, 'e:' .. cname)
  local mode = known[1]
  if not mode then
    return nil, redis.error_reply('UNKNOWN_POOL no daemon has published this pool (after a Redis restart, '
      .. 'a running daemon publishes it again within a second)')
  end
  if mode == 'template' then
    if cname ~= '' then
      return nil, redis.error_reply('CNAME_NOT_SERVED this pool labels each entry itself; pop without a cname')
    end
  elseif cname == '' then
    return nil, redis.error_reply('CNAME_REQUIRED this pool serves named channels; pop with the cname to record')
  elseif mode == 'announced' then
    if not (keys[4] and redis.call('ZSCORE', keys[4], cname)) and redis.call('EXISTS', queue) == 0 then
      return nil, redis.error_reply('CNAME_NOT_SERVED this channel was not announced (or its announcement ended)')
    end
  elseif not known[2] then
    return nil, redis.error_reply('CNAME_NOT_SERVED this pool does not serve that channel')
  end
  -- The common case, the same data set, is told without a call.
  if known[3] ~= (instance_id or instance()) and check_data_set(meta, stats, queue, nil, 'e:' .. cname, known[3]) then
    return nil, nil
  end
  if not redis.acl_check_cmd('ZADD', queue, '0', '') then
    return nil, redis.error_reply('NOPERM this user may not run ZADD on the queue (a pop needs it to put back '
      .. 'an entry it cannot hand out)')
  end

  local now = now_ms()
  local least = math.max(now + min_ttl, now + 1)
  -- The common case, in one step: the oldest entry is alive, has the life asked for and is of this version.
  -- Taking the head never changes the queue's expiry (the longest-lived entry stays, or the queue is gone).
  local head = redis.call('ZPOPMIN', queue)
  if not head[2] then
    return nil, nil
  end
  local score = tonumber(head[2])
  if score >= least and string.sub(head[1], 1, 2) == ENTRY_HEAD then
    local refused = count_pop(stats, queue, head[1], score)
    if refused then
      return nil, refused
    end
    return head[1], score, now
  end
  -- Otherwise put the head back (atomically: nobody saw it gone) unless it is dead, and look further: the oldest
  -- entry with the life asked for, and whether another lives longer (then the queue's expiry stays as it is).
  if score > now then
    put_back(queue, head[1], score)
  end
  redis.pcall('ZREMRANGEBYSCORE', queue, '-inf', now) -- the other dead entries (tidying: may be refused)
  local found = redis.call('ZRANGEBYSCORE', queue, least, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
  if not found[1] then
    return nil, nil
  end
  if string.sub(found[1], 1, 2) ~= ENTRY_HEAD then
    -- Left in place, not wasted: a client of the version that wrote it can still take it.
    return nil, redis.error_reply('BAD_ENTRY an entry of an unknown format is queued; upgrade this client')
  end
  local expires_at = tonumber(found[2])
  redis.call('ZREM', queue, found[1])
  local refused = count_pop(stats, queue, found[1], expires_at)
  if refused then
    return nil, refused
  end
  if not found[3] then
    -- It was the longest-lived entry: the queue's expiry moves to the next one. Past the count nothing may fail
    -- the pop; a user not allowed to move the expiry leaves it a little long, never loses the entry.
    local top = redis.pcall('ZRANGE', queue, -1, -1, 'WITHSCORES')
    if type(top) == 'table' and top[2] then
      redis.pcall('PEXPIREAT', queue, top[2])
    end
  end
  return found[1], expires_at, now
end

-- The pop itself, shared by ridpool_pop and ridpool_pop_packed: checks, then takes the entry out.
-- Returns member, expires_at, now; or nil, error reply; or nil, nil for a miss (counted when ARGV[3] is '1').
local function take_entry(keys, args)
  local member, expires_at, now = take_checked(keys, args)
  if member == nil and expires_at == nil and args[3] == '1' then
    redis.call('HINCRBY', keys[2], 'misses', 1)
  end
  return member, expires_at, now
end

--[[
ridpool_pop: hand out the oldest entry that still has at least min_ttl to live; never the same one twice.
KEYS[1] meta   PREFIX:{POOL}:meta
KEYS[2] stats  PREFIX:{POOL}:stats
KEYS[3] queue  PREFIX:{POOL}:q (template pool) or PREFIX:{POOL}:q:<encoded cname> (named channel, see keys.py)
KEYS[4] ann    PREFIX:{POOL}:ann (only read for an `announced` pool; may be left out for the others)
ARGV[1] cname        '' for a template pool, else the channel to pop for (as written, not encoded)
ARGV[2] min_ttl_ms   the least remaining life the caller accepts (integer ms, 0 <= min_ttl_ms < 300000)
ARGV[3] record_miss  '1' to count an empty answer as a miss ('0' for the early tries of a waiting pop)
Reply: a flat array of field/value pairs: resourceId, appid, cname, uid, pool, sentAt (server ms), expiresAt
(server ms), expiresIn (ms), requestId; or nil when nothing fresh enough is there.
Errors: 'UNKNOWN_POOL ...', 'CNAME_REQUIRED ...', 'CNAME_NOT_SERVED ...', 'BAD_ARGUMENT ...', 'BAD_ENTRY ...';
Redis's own (WRONGTYPE, OOM, a command the user may not run): in every case nothing was removed.
The first pop on a queue filled in another data set (see check_data_set) drops its entries and misses.
]]
local function pop(keys, args)
  local member, expires_at, now = take_entry(keys, args)
  if not member then
    return expires_at
  end
  local e = cmsgpack.unpack(member)
  return {
    'resourceId', e[2], 'appid', e[3], 'cname', e[4], 'uid', e[5], 'pool', e[6],
    'sentAt', e[7], 'expiresAt', expires_at, 'expiresIn', expires_at - now, 'requestId', e[9],
  }
end

--[[
ridpool_pop_packed: ridpool_pop for clients that read msgpack (the Python client): same KEYS, ARGV and errors.
Reply: {entry as stored (msgpack, see the top of this file), expiresIn ms}; or nil. Cheaper on both sides than
eighteen fields: no unpacking in Redis, two elements to parse in the client.
]]
local function pop_packed(keys, args)
  local member, expires_at, now = take_entry(keys, args)
  if not member then
    return expires_at
  end
  return {member, expires_at - now}
end

--[[
ridpool_add: store one acquired entry, once; release the lease it was acquired under.
KEYS[1] stats     KEYS[2] ledger    KEYS[3] queue    KEYS[4] ready    KEYS[5] inflight    KEYS[6] uids
KEYS[7] meta      KEYS[8] quota     PREFIX:{POOL}:ann:left: a channel with a field there (what its announcement
                                    still lacks) uses one of it up
ARGV[1] entry     msgpack entry (see the top of this file); its expiresAt is ARGV[3]
ARGV[2] resourceId
ARGV[3] expires_at_ms  server time at which the entry stops being offered
ARGV[4] lease token ('' for none)
ARGV[5] uid to hold in the uids zset until the entry expires ('' when the pool's uid is fixed)
ARGV[6] slot      the queue's channel as written ('' for a template pool): names its data-set mark, and the
                  channel whose quota the entry uses up
Reply: 'ADDED'; 'EXISTS' (this very entry is already queued: a retried add); 'REFUSED' (the ID was added
before and popped or replaced: never offered twice); 'EXPIRED' (already past its time: not stored).
Errors: 'BAD_ARGUMENT ...' (keys of another pool or channel, no resourceId, an expiry out of range).
A queue filled in another data set (a restore, a failover) is dropped before the entry joins it.
]]
local function add(keys, args)
  local bad = check_keys(keys, { ':stats', ':ledger', '', '', ':inflight', ':uids', ':meta', ':ann:left' })
  local slot = args[6] or ''
  local tag = key_parts(keys[1])
  if not bad and (keys[3] ~= queue_of(tag, slot) or keys[4] ~= keys[3] .. ':ready') then
    bad = redis.error_reply('BAD_ARGUMENT KEYS[3] and KEYS[4] must be the queue of slot ' .. slot .. ' and its :ready')
  end
  if bad then
    return bad
  end
  local stats, ledger, queue, ready, inflight, uids = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local entry, rid, token, uid = args[1], args[2], args[4] or '', args[5] or ''
  local expires_at = whole(args[3], 0, 1e15)
  if not entry or not rid or rid == '' or expires_at == nil then
    return redis.error_reply('BAD_ARGUMENT an entry needs a resourceId and an expiry')
  end
  local now = now_ms()
  if expires_at - now > MAX_LIFE_MS then
    return redis.error_reply('BAD_ARGUMENT an entry cannot live more than five minutes')
  end
  if token ~= '' then
    redis.call('ZREM', inflight, token)
  end
  check_data_set(keys[7], stats, queue, ready, 'e:' .. slot)
  local digest = redis.sha1hex(rid)
  redis.call('ZREMRANGEBYSCORE', ledger, '-inf', now)
  if redis.call('ZSCORE', ledger, digest) then
    if redis.call('ZSCORE', queue, entry) then
      return 'EXISTS'
    end
    redis.call('HINCRBY', stats, 'refused', 1)
    return 'REFUSED'
  end
  if expires_at <= now then
    redis.call('HINCRBY', stats, 'late', 1)
    return 'EXPIRED'
  end
  redis.call('ZADD', ledger, expires_at, digest)
  expire_with_top(ledger)
  redis.call('ZADD', queue, expires_at, entry)
  expire_with_top(queue)
  if uid ~= '' then
    redis.call('ZADD', uids, expires_at, uid)
    expire_with_top(uids)
  end
  redis.call('HINCRBY', stats, 'added', 1)
  if redis.call('HGET', keys[8], slot) then
    redis.call('HINCRBY', keys[8], slot, -1)
  end
  -- Wake one waiting pop. Never more tokens than queued entries: a waiter woken for nothing loops anyway
  -- (see the README), but an idle pool does not pile up stale tokens.
  redis.call('RPUSH', ready, '1')
  redis.call('LTRIM', ready, -redis.call('ZCARD', queue), -1)
  redis.call('PEXPIREAT', ready, expires_at)
  return 'ADDED'
end

-- The uid and slot a lease token carries: what lies between its tabs, and what follows the second.
local function lease_parts(token)
  local first = string.find(token, '\t', 1, true)
  local second = first and string.find(token, '\t', first + 1, true)
  if not second then
    return nil, nil
  end
  return string.sub(token, first + 1, second - 1), string.sub(token, second + 1)
end

--[[
ridpool_reserve: lease acquires for one channel of a pool, up to what it lacks, so that replicas never overfill.
KEYS[1] queue     the channel's queue (PREFIX:{POOL}:q, or :q:<encoded cname> for the slot in ARGV[1])
KEYS[2] inflight  KEYS[3] uids    KEYS[4] hold (set while the pool backs off)    KEYS[5] stats
KEYS[6] quota     PREFIX:{POOL}:ann:left: a channel with a field there (what its announcement still lacks) never
                  gets more leases than that field says
ARGV[1] slot         the channel ('' for a template pool); leases are counted per slot and capped per pool
ARGV[2] target       entries to keep ready in this slot
ARGV[3] consumable   of the target, how many pops use up (a warm-up's, an announcement's): the pool's pops since
                     the caller read ARGV[4] come off them (the caller's plan may predate pops made since, and a
                     popped entry of such a demand must not be acquired again)
ARGV[4] pops_seen    the pool's `pops` counter when the caller planned
ARGV[5] cap          acquires in flight for the whole pool, across replicas
ARGV[6] want         the most leases this caller takes now
ARGV[7] lease_ms     how long a lease holds; a crashed replica's leases lapse after it
ARGV[8] token_base   unique per call; tokens are token_base:i (a re-sent call gets its own leases back)
ARGV[9..] uid candidates, tried in order, for a uid_range pool (none for a fixed uid)
Reply: a flat array of token, uid pairs (uid '' for a fixed-uid pool); empty when nothing is needed or the
pool is held.
Errors: 'BAD_ARGUMENT ...' (keys of another pool or channel, a number out of range).
A lease token is '<token_base>:<i>\t<uid>\t<slot>' (the slot last: a web label may hold anything but a tab).
]]
local function reserve(keys, args)
  local bad = check_keys(keys, { '', ':inflight', ':uids', ':hold', ':stats', ':ann:left' })
  local slot = args[1] or ''
  local tag = key_parts(keys[1])
  if not bad and keys[1] ~= queue_of(tag, slot) then
    bad = redis.error_reply('BAD_ARGUMENT KEYS[1] must be the queue of slot ' .. slot)
  end
  if bad then
    return bad
  end
  local target, consumable, seen = whole(args[2], 0, 1e9), whole(args[3], 0, 1e9), whole(args[4], 0, 1e15)
  local cap, want, lease = whole(args[5], 0, 1e6), whole(args[6], 0, 1e6), whole(args[7], 1, MAX_LIFE_MS)
  if not (target and consumable and seen and cap and want and lease and args[8]) then
    return redis.error_reply('BAD_ARGUMENT reserve takes slot, target, consumable, pops_seen, cap, want, lease_ms, '
      .. 'token_base as whole numbers in range')
  end
  local queue, inflight, uids = keys[1], keys[2], keys[3]
  if redis.call('EXISTS', keys[4]) == 1 then
    return {}
  end
  if consumable > 0 then
    local popped = tonumber(redis.call('HGET', keys[5], 'pops') or '0') - seen
    target = target - math.max(0, math.min(consumable, popped))
  end
  local base = args[8]
  local now = now_ms()
  purge_dead(queue, now)
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', uids, '-inf', now)
  local leases = redis.call('ZRANGE', inflight, 0, -1)
  local mine = 0
  local again = {}
  local prefix = base .. ':'
  for _, token in ipairs(leases) do
    local uid, lease_of = lease_parts(token)
    if lease_of == slot then
      mine = mine + 1
    end
    if string.sub(token, 1, #prefix) == prefix then
      -- This very call ran before and its reply was lost (the client re-sent it): hand back those leases
      -- rather than leave them held by nobody until they lapse.
      again[#again + 1] = token
      again[#again + 1] = uid
    end
  end
  if #again > 0 then
    return again
  end
  local n = math.min(target - redis.call('ZCARD', queue) - mine, cap - #leases, want)
  local quota = redis.call('HGET', keys[6], slot)
  if quota then
    -- Never more than the channel's announcement still lacks (a plan made before a pop is stale).
    n = math.min(n, tonumber(quota) - mine)
  end
  local out = {}
  if n <= 0 then
    return out
  end
  local candidate = 9
  for i = 1, n do
    local uid = ''
    if #args >= 9 then
      while args[candidate] and redis.call('ZSCORE', uids, args[candidate]) do
        candidate = candidate + 1
      end
      if not args[candidate] then
        break -- out of free uid candidates: take fewer leases, the next round brings new candidates
      end
      uid = args[candidate]
      candidate = candidate + 1
      redis.call('ZADD', uids, now + lease, uid)
    end
    local token = base .. ':' .. i .. '\t' .. uid .. '\t' .. slot
    redis.call('ZADD', inflight, now + lease, token)
    out[#out + 1] = token
    out[#out + 1] = uid
  end
  expire_with_top(inflight)
  if #args >= 9 then
    expire_with_top(uids)
  end
  return out
end

--[[
ridpool_release: give back a lease whose acquire failed, and the uid it held.
KEYS[1] inflight   KEYS[2] uids
ARGV[1] token      ARGV[2] uid ('' for none)
Reply: 1 if the lease was still held, else 0.
]]
local function release(keys, args)
  local removed = redis.call('ZREM', keys[1], args[1])
  if args[2] ~= '' then
    redis.call('ZREM', keys[2], args[2])
  end
  return removed
end

--[[
ridpool_sweep: drop a queue's dead entries (all of them if it was filled in another data set) and report what is
left.
KEYS[1] queue    KEYS[2] meta    KEYS[3] ready    KEYS[4] stats
ARGV[1] slot     the queue's channel as written ('' for a template pool)
Reply: {live entries, server now ms, expiresAt ms of the oldest live entry or -1, entries dropped because the
queue was filled in another data set}.
]]
local function sweep(keys, args)
  local now = now_ms()
  local dropped = check_data_set(keys[2], keys[4], keys[1], keys[3], 'e:' .. args[1]) or 0
  purge_dead(keys[1], now)
  local oldest = redis.call('ZRANGE', keys[1], 0, 0, 'WITHSCORES')
  return {redis.call('ZCARD', keys[1]), now, tonumber(oldest[2] or -1), dropped}
end

--[[
ridpool_publish: publish a pool's configuration, unless another live replica publishes a different one.
KEYS[1] meta
ARGV[1] owner        the publishing replica's id
ARGV[2] fingerprint  of the configuration (replicas with the same config publish the same fingerprint); '' to
                     release: the owner leaving, its publication no longer counts as live
ARGV[3] live_ms      a publication younger than this, by another owner, of another fingerprint, wins
ARGV[4..] field, value pairs to publish (mode, appid, size, max_age_ms, cnames, c:<cname>...)
Reply: {'PUBLISHED', owner}, {'CONFLICT', the owner whose publication stands} or {'RELEASED', owner}.
Every field is replaced except the data-set marks (e:<slot>), which belong to the queues (check_data_set).
]]
local function publish(keys, args)
  local meta = keys[1]
  local now = now_ms()
  local held = redis.call('HMGET', meta, 'owner', 'fingerprint', 'published_at_ms')
  if args[2] == '' then
    -- A replica leaving: its publication stops counting as live, so a successor with another config (the same
    -- service restarted after a config change) takes over at once.
    if held[1] == args[1] then
      redis.call('HSET', meta, 'published_at_ms', 0)
    end
    return {'RELEASED', args[1]}
  end
  if held[2] and held[2] ~= args[2] and held[1] ~= args[1]
      and now - (tonumber(held[3]) or 0) < tonumber(args[3]) then
    return {'CONFLICT', held[1]}
  end
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', meta)) do
    if string.sub(field, 1, 2) ~= 'e:' then
      stale[#stale + 1] = field
    end
  end
  if #stale > 0 then
    redis.call('HDEL', meta, unpack(stale))
  end
  local fields = {'owner', args[1], 'fingerprint', args[2]}
  for i = 4, #args do
    fields[#fields + 1] = args[i]
  end
  fields[#fields + 1] = 'published_at_ms'
  fields[#fields + 1] = now
  redis.call('HSET', meta, unpack(fields))
  return {'PUBLISHED', args[1]}
end

--[[
ridpool_take: draw one request from an account's shared budget: at most `limit` grants in any `window_ms`,
and grants at least 0.9 * window_ms / limit apart.
A sliding log, not a token bucket: a ceiling on every window, even when requests reach Agora bunched together.
The spacing keeps grants from leaving in bursts, which the network and the senders bunch up the most.
KEYS[1] rate       PREFIX:{acct:NAME}:rate
KEYS[2] cooldown   PREFIX:{acct:NAME}:cooldown
ARGV[1] limit      grants per window (integer >= 1)
ARGV[2] window_ms  the window (integer ms)
ARGV[3] member     a unique id for this grant
Reply: 0 when granted, else the ms to wait before asking again.
]]
local function take(keys, args)
  local rate, cooldown = keys[1], keys[2]
  local limit, window = tonumber(args[1]), tonumber(args[2])
  local wait = redis.call('PTTL', cooldown)
  if wait > 0 then
    return wait
  end
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local window_us = window * 1000
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now_us - window_us)
  local newest = redis.call('ZRANGE', rate, -1, -1, 'WITHSCORES')
  -- 90% of the even spacing: smooth enough against bursts, and a grant that came late (a sleeper woken late)
  -- lets the next come a little sooner. The ceiling itself is the log below, not the spacing.
  local spaced = newest[2] and tonumber(newest[2]) + 0.9 * window_us / limit or now_us
  if spaced > now_us then
    return math.max(1, math.ceil((spaced - now_us) / 1000))
  end
  if redis.call('ZCARD', rate) < limit then
    redis.call('ZADD', rate, now_us, args[3])
    redis.call('PEXPIRE', rate, window)
    return 0
  end
  local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(oldest[2]) + window_us - now_us) / 1000))
end

--[[
ridpool_hold and ridpool_cooldown: make every replica wait at least `ms` from now, in one atomic step that never
shortens a longer wait another replica set. ridpool_hold holds a pool after failed acquires (its hold key stops
ridpool_reserve); ridpool_cooldown pauses an account's budget after a 429 (its cooldown key stops ridpool_take).
KEYS[1] hold       PREFIX:{POOL}:hold, or PREFIX:{acct:NAME}:cooldown for ridpool_cooldown
ARGV[1] ms         how long to wait (integer > 0)
Reply: the wait now in force, ms.
Errors: 'BAD_ARGUMENT ...'.
]]
local function wait_at_least(keys, args)
  local ms = tonumber(args[1])
  if ms == nil or ms <= 0 then
    return redis.error_reply('BAD_ARGUMENT the wait must be a positive number of ms')
  end
  if redis.call('PTTL', keys[1]) < ms then
    redis.call('SET', keys[1], '1', 'PX', ms)
  end
  return redis.call('PTTL', keys[1])
end

--[[
ridpool_report: a starter says how `start` went with a popped entry, so failure rates by ID age can be seen
and max_age tuned on evidence rather than argued.
KEYS[1] starts   PREFIX:{POOL}:starts (hash of counters; holds no ID)
KEYS[2] meta     PREFIX:{POOL}:meta (only a published pool takes reports)
ARGV[1] sent_at_ms   the entry's sentAt
ARGV[2] outcome      'ok' or 'failed'
ARGV[3] code         Agora's error code for a failure ('' when none): an integer, else counted as 'other'
Fields counted: '<outcome>:<age bucket>' with buckets of 30 s by age at report time ('0-29', '30-59', ...,
'300+'), and 'code:<code>' for failures; once the hash holds MAX_FIELDS fields, new codes count as 'code:other'.
The hash expires REPORTS_KEPT_MS after the last report. Reply: the age in ms.
Errors: 'UNKNOWN_POOL ...', 'BAD_ARGUMENT ...'.
]]
local MAX_FIELDS = 64
local REPORTS_KEPT_MS = 7 * 24 * 3600 * 1000
local function report(keys, args)
  local sent = tonumber(args[1])
  local outcome = args[2]
  if sent == nil or (outcome ~= 'ok' and outcome ~= 'failed') then
    return redis.error_reply("BAD_ARGUMENT report takes sent_at_ms and 'ok' or 'failed'")
  end
  if redis.call('EXISTS', keys[2]) == 0 then
    return redis.error_reply('UNKNOWN_POOL no daemon has published this pool; reports are kept only for pools')
  end
  local age = math.max(0, now_ms() - sent)
  local low = math.floor(age / 30000) * 30
  local bucket = low >= 300 and '300+' or (low .. '-' .. (low + 29))
  redis.call('HINCRBY', keys[1], outcome .. ':' .. bucket, 1)
  if outcome == 'failed' and args[3] ~= '' then
    local code = string.match(args[3], '^-?%d%d?%d?%d?%d?%d?%d?%d?%d?$') and args[3] or 'other'
    local field = 'code:' .. code
    if redis.call('HEXISTS', keys[1], field) == 0 and redis.call('HLEN', keys[1]) >= MAX_FIELDS then
      field = 'code:other'
    end
    redis.call('HINCRBY', keys[1], field, 1)
  end
  redis.call('PEXPIRE', keys[1], REPORTS_KEPT_MS)
  return age
end

-- Announcements: channels named at run time, to be ready at an instant. They hold no ID: three small keys of the
-- pool (ann: cname -> until, ann:at: cname -> at, ann:left: cname -> entries still to acquire), all expiring
-- with the last announcement's end.
local MAX_LEAD_MS = 7 * 24 * 3600 * 1000
local CHANNEL = '^[%w !#%$%%&%(%)%+%-:;<=%.>%?@%[%]%^_{}|~,]+$' -- Agora's channel-name characters

local function expire_announcements(ann, at, left)
  local top = redis.call('ZRANGE', ann, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', ann, top[2])
    redis.call('PEXPIREAT', at, top[2])
    redis.call('PEXPIREAT', left, top[2])
  else
    redis.call('DEL', ann, at, left)
  end
end

-- Forget the announcements that have ended.
local function end_announcements(ann, at, left, now)
  local ended = redis.call('ZRANGEBYSCORE', ann, '-inf', now)
  if #ended > 0 then
    redis.call('ZREM', ann, unpack(ended))
    redis.call('ZREM', at, unpack(ended))
    redis.call('HDEL', left, unpack(ended))
    expire_announcements(ann, at, left)
  end
end

--[[
ridpool_announce: announce that channel CNAME of an `announced` pool is to be recorded at AT: the daemon
acquires COUNT entries for it to be ready then. Announcing a channel again replaces its announcement.
KEYS[1] meta      PREFIX:{POOL}:meta
KEYS[2] ann       PREFIX:{POOL}:ann
KEYS[3] ann:at    PREFIX:{POOL}:ann:at
KEYS[4] ann:left  PREFIX:{POOL}:ann:left
ARGV[1] cname     the channel, checked against Agora's rules for the pool's scene
ARGV[2] at        Unix time in ms (Redis server clock), or '+MS': that many ms from now; at most 7 days ahead,
                  and an instant already past is served as soon as possible
ARGV[3] count     entries to have ready (1 to 1000)
Reply: {at ms, until ms}: the instant (server ms) and the end of the announcement (at + the pool's grace);
pops use its entries up, and one about to expire unpopped is replaced until then.
Errors: 'UNKNOWN_POOL ...', 'NOT_ANNOUNCED ...' (the pool does not take announcements), 'BAD_CNAME ...',
'BAD_ARGUMENT ...'.
]]
local function announce(keys, args)
  local meta, ann, at_key, left = keys[1], keys[2], keys[3], keys[4]
  local cname, when, count = args[1], args[2], tonumber(args[3])
  local known = redis.call('HMGET', meta, 'mode', 'scene', 'grace_ms')
  if not known[1] then
    return redis.error_reply('UNKNOWN_POOL no daemon has published this pool')
  end
  if known[1] ~= 'announced' then
    return redis.error_reply('NOT_ANNOUNCED this pool does not take announcements (configure it with announced = true)')
  end
  local scene = tonumber(known[2] or '0')
  local longest = scene == 1 and 128 or 63
  if #cname == 0 or #cname > longest then
    return redis.error_reply('BAD_CNAME must be 1 to ' .. longest .. ' bytes for scene ' .. scene)
  end
  if scene ~= 1 and not string.find(cname, CHANNEL) then
    return redis.error_reply('BAD_CNAME has characters Agora refuses in a channel name')
  end
  if count == nil or count ~= math.floor(count) or count < 1 or count > 1000 then
    return redis.error_reply('BAD_ARGUMENT count must be an integer from 1 to 1000')
  end
  local now = now_ms()
  local at
  if string.sub(when, 1, 1) == '+' then
    local delay = tonumber(string.sub(when, 2))
    at = delay and now + delay
  else
    at = tonumber(when)
  end
  if at == nil or at ~= math.floor(at) then
    return redis.error_reply("BAD_ARGUMENT at must be Unix ms or '+ms' from now")
  end
  if at > now + MAX_LEAD_MS then
    return redis.error_reply('BAD_ARGUMENT at must be at most 7 days ahead')
  end
  end_announcements(ann, at_key, left, now)
  local ends = math.max(at, now) + tonumber(known[3] or '300000')
  redis.call('ZADD', ann, ends, cname)
  redis.call('ZADD', at_key, at, cname)
  redis.call('HSET', left, cname, count)
  expire_announcements(ann, at_key, left)
  return {at, ends}
end

--[[
ridpool_announced: the daemon's view of announced channels, before it plans. While a channel's announcement is
pending, an entry that would expire within AHEAD ms is retired (it counts as expired unused) and one more is to
be acquired, so the channel keeps its count of live entries until the announcement ends; popped entries are not
replaced.
KEYS[1] ann       KEYS[2] ann:at    KEYS[3] ann:left
KEYS[4..] the channels' queues, PREFIX:{POOL}:q:<cname>, in the order of ARGV[2..]
ARGV[1] ahead ms  ARGV[2..] the channels
Reply: {server now ms, then per channel: live entries, left to acquire, at ms, until ms}; left, at and until
are -1 for a channel with no pending announcement.
]]
local function announced(keys, args)
  local ann, at_key, left = keys[1], keys[2], keys[3]
  local ahead = tonumber(args[1])
  local now = now_ms()
  end_announcements(ann, at_key, left, now)
  local out = {now}
  for i = 2, #args do
    local cname, queue = args[i], keys[i + 2]
    purge_dead(queue, now)
    local ends = tonumber(redis.call('ZSCORE', ann, cname) or '-1')
    if ends >= 0 then
      local retired = redis.call('ZREMRANGEBYSCORE', queue, '-inf', math.min(now + ahead, ends))
      if retired > 0 then
        expire_with_top(queue)
        redis.call('HINCRBY', left, cname, retired)
      end
    end
    out[#out + 1] = redis.call('ZCARD', queue)
    out[#out + 1] = ends < 0 and -1 or tonumber(redis.call('HGET', left, cname) or '0')
    out[#out + 1] = ends < 0 and -1 or tonumber(redis.call('ZSCORE', at_key, cname) or '-1')
    out[#out + 1] = ends
  end
  return out
end

--[[
ridpool_announcements: every pending announcement of a pool (the daemon plans with it, `status` shows it).
KEYS[1] ann       KEYS[2] ann:at    KEYS[3] ann:left
Reply: {server now ms, cname, at ms, until ms, left, cname, ...} ordered by at.
]]
local function announcements(keys, args)
  local now = now_ms()
  end_announcements(keys[1], keys[2], keys[3], now)
  local out = {now}
  local by_at = redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES')
  for i = 1, #by_at, 2 do
    local cname = by_at[i]
    out[#out + 1] = cname
    out[#out + 1] = tonumber(by_at[i + 1])
    out[#out + 1] = tonumber(redis.call('ZSCORE', keys[1], cname))
    out[#out + 1] = tonumber(redis.call('HGET', keys[3], cname) or '0')
  end
  return out
end

--[[
ridpool_sample: write one step (a minute) of a pool's demand history: what was added, popped, missed and
expired unused since the last sample. Counters only, never an ID. The first caller in a step writes it; any
other replica calling in the same step gets -1, so replicas need no election of their own.
KEYS[1] stats     PREFIX:{POOL}:stats
KEYS[2] history   PREFIX:{POOL}:history (hash: '<step>' -> 'added pops misses expired'; 'last', 'at:*' snapshot)
KEYS[3..] the pool's queues (live entries are not expired ones)
ARGV[1] step_ms       60000 (a minute); tests use shorter steps
ARGV[2] retention_ms  how long the history is kept (the key's TTL; the step that old is dropped)
Reply: the step written (server ms / step_ms, floored), or -1 when this step was already written.
]]
local function sample(keys, args)
  local stats, history = keys[1], keys[2]
  local step, retention = tonumber(args[1]), tonumber(args[2])
  local now = now_ms()
  local index = math.floor(now / step)
  local last = tonumber(redis.call('HGET', history, 'last') or -1)
  if last >= index then
    return -1
  end
  local live = 0
  for i = 3, #keys do
    live = live + redis.call('ZCOUNT', keys[i], '(' .. now, '+inf')
  end
  local c = redis.call('HMGET', stats, 'added', 'pops', 'misses')
  local added, pops, misses = tonumber(c[1] or 0), tonumber(c[2] or 0), tonumber(c[3] or 0)
  local current = {added, pops, misses, math.max(0, added - pops - live)}
  local names = {'at:added', 'at:pops', 'at:misses', 'at:expired'}
  local before = redis.call('HMGET', history, unpack(names))
  if before[1] then
    local delta = {}
    for i = 1, 4 do
      -- A counter that went down was reset (a flushed stats hash): count from zero.
      local d = current[i] - tonumber(before[i])
      delta[i] = d >= 0 and d or current[i]
    end
    redis.call('HSET', history, tostring(index), table.concat(delta, ' '))
  end
  for i = 1, 4 do
    redis.call('HSET', history, names[i], current[i])
  end
  redis.call('HSET', history, 'last', index)
  redis.call('HDEL', history, tostring(index - math.floor(retention / step)))
  redis.call('PEXPIRE', history, retention)
  return index
end

--[[
ridpool_hold_uid: hold a uid of a uid_range pool for an ID acquired on the spot (pop_or_acquire), so that no
pooled entry gets the same uid while that ID can live.
KEYS[1] uids      PREFIX:{POOL}:uids
ARGV[1] hold ms   ARGV[2..] candidates, tried in order
Reply: the uid held, or '' when every candidate is taken (ask again with others).
]]
local function hold_uid(keys, args)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  for i = 2, #args do
    if not redis.call('ZSCORE', keys[1], args[i]) then
      redis.call('ZADD', keys[1], now + tonumber(args[1]), args[i])
      expire_with_top(keys[1])
      return args[i]
    end
  end
  return ''
end

redis.register_function('ridpool_pop', pop)
redis.register_function('ridpool_pop_packed', pop_packed)
redis.register_function('ridpool_report', report)
redis.register_function('ridpool_add', add)
redis.register_function('ridpool_reserve', reserve)
redis.register_function('ridpool_release', release)
redis.register_function('ridpool_sweep', sweep)
redis.register_function('ridpool_publish', publish)
redis.register_function('ridpool_take', take)
redis.register_function('ridpool_cooldown', wait_at_least)
redis.register_function('ridpool_hold', wait_at_least)
redis.register_function('ridpool_announce', announce)
redis.register_function('ridpool_announced', announced)
redis.register_function('ridpool_announcements', announcements)
redis.register_function('ridpool_hold_uid', hold_uid)
redis.register_function('ridpool_sample', sample)
redis.register_function{
  function_name = 'ridpool_version',
  callback = function() return LIBRARY_VERSION end,
  flags = {'no-writes'},
}
