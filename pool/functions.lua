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

local LIBRARY_VERSION = '7'
-- How every entry of the version this library reads starts: a 9-element msgpack array (0x99) whose first
-- element, the version, is 1.
local ENTRY_HEAD = '\153\001'
local MAX_LIFE_MS = 300000 -- Agora's five minutes: no entry may claim to live longer

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Lower edges (s) of the age buckets start reports are counted in (ridpool_report), fine near zero to see Agora's
-- "start within two seconds"; a bucket runs to the next edge, the last to AGE_TOP. The one home of these edges:
-- the Python side reads them from this line (ridpool.ages).
local EDGES = { 0, 2, 5, 10, 20, 30, 60, 90, 120, 150, 180, 210, 240, 270 }
local AGE_TOP = 300

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

-- The most items (slots, channels, announcements, queues) one call of a function handles: each call stays short
-- (Redis runs one at a time), and no list is ever unpacked whole (Lua stops near 8,000 values). Callers loop.
local CHUNK = 1000

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

-- The entries of a queue a pop may still be given (purge_dead first): those with more than `stale` ms of their
-- life left (the rest are past the pool's effective max_age, see fresh_bound).
local function live_count(queue, now, stale)
  if stale <= 0 then
    return redis.call('ZCARD', queue)
  end
  return redis.call('ZCOUNT', queue, '(' .. (now + stale), '+inf')
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

-- What a queue's mark must say to be current: the data set (run_id) and, once a publisher wrote it, the
-- identity of the pool's config (meta field 'identity': appid, channel or template, uid, clientRequest: what
-- makes an entry what it is). Entries acquired under another identity (the config changed, another owner took
-- over) are then dropped like those of a lost history, never served.
local function current_mark(identity)
  local here = instance_id or instance()
  if identity and identity ~= '' then
    return here .. '/' .. identity
  end
  return here
end

-- Make sure a queue's entries were stored in the data set being served now, under the identity published now; if
-- not, drop them. Entries that outlived a restore or a failover may have been popped already in the lost history,
-- so none of them can be offered again. `mark` is the meta field recording where the queue was filled ('e:' ..
-- slot); `here` what it must say (current_mark); `seen` its value when the caller read it already. Returns false
-- when the queue is current, else how many entries were dropped (counted in stats as 'dropped'; 0 is still true
-- in Lua: the queue was not current).
-- The queue (and its wake-up list) go first: a failure between the writes leaves the mark stale, never a stale
-- queue marked current.
local function check_data_set(meta, stats, queue, ready, mark, here, seen)
  if seen == nil then
    seen = redis.call('HGET', meta, mark)
  end
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

-- A pop of a named or announced channel tells the daemon's change feed (KEYS[5]) which channel it emptied, so
-- the daemon refills it without looking at every channel (a template pool's one queue needs no feed: the pool's
-- counters say it). Tidying after the take: a refusal cannot fail the pop.
local function note_change(keys, mode, cname, now)
  if mode ~= 'template' and keys[5] then
    redis.pcall('ZADD', keys[5], now, cname)
  end
end

-- The effective max_age (auto_max_age): the daemon's decision, kept in the pool's meta hash (ridpool_freshen),
-- honoured by every pop whatever its language. Entries are scored by expires-at = sent-at + the configured
-- max_age, so an entry older than the effective value is one whose score is below now + max_age - effective.
-- A decision holds until `fresh_until` (the daemon renews it every minute): when no daemon decides any more, pops
-- go back to the configured max_age by themselves.
local FRESH_FIELDS = { 'max_age_ms', 'fresh_max_age_ms', 'fresh_until', 'fresh_probe', 'fresh_share', 'fresh_up_to_ms' }

-- What a pop may take, from the meta fields FRESH_FIELDS (values in `f`, from index `at`) at server time `now`;
-- `draw` in [0, 1) decides whether this pop is one of the probes' share. Returns the least score it may take
-- (nil: no bound beyond min_ttl) and how it takes: 'oldest' (the oldest entry young enough), 'youngest' (a
-- 'younger' probe: the youngest entry), or 'band' (an 'older' probe: the youngest entry past the effective value
-- and within up_to, the least risky evidence that the band is fine, and one whose start, a moment after the pop,
-- still falls in the band; when there is none, the oldest entry young enough). For 'band', the third value is the
-- score the effective value ends at. No decision, or one that lapsed: nil, 'oldest'.
local function fresh_bound(f, at, now, draw)
  local life, effective, until_ms = tonumber(f[at] or ''), tonumber(f[at + 1] or ''), tonumber(f[at + 2] or '')
  if not (life and effective and until_ms) or until_ms <= now then
    return nil, 'oldest'
  end
  local offered = math.min(effective, life)
  local bound = offered < life and now + life - offered or nil
  local probe, share = f[at + 3], tonumber(f[at + 4] or '') or 0
  if not probe or probe == '' or draw >= share then
    return bound, 'oldest'
  end
  if probe == 'younger' then
    return bound, 'youngest'
  end
  local up_to = math.min(math.max(offered, tonumber(f[at + 5] or '') or offered), life)
  if probe == 'older' and bound and up_to > offered then
    return now + life - up_to, 'band', bound
  end
  return bound, 'oldest'
end

-- The pop's checks and take (see take_entry). Returns member, expires_at, now; or nil, error reply; or nil, nil.
-- A pop that fails removes nothing: checks and reads come first; whether the user may put an entry back (ZADD) is
-- asked before anything is taken; whatever fails after a take puts the entry back. Out of memory is refused by
-- Redis before the function starts (it is not flagged allow-oom).
local function take_checked(keys, cname, min_ttl)
  local meta, stats, queue = keys[1], keys[2], keys[3]
  local known = redis.call('HMGET', meta, 'mode', 'c:' .. cname, 'e:' .. cname, 'identity', unpack(FRESH_FIELDS))
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
  local here = current_mark(known[4])
  if known[3] ~= here and check_data_set(meta, stats, queue, nil, 'e:' .. cname, here, known[3]) then
    return nil, nil
  end
  if not redis.acl_check_cmd('ZADD', queue, '0', '') then
    return nil, redis.error_reply('NOPERM this user may not run ZADD on the queue (a pop needs it to put back '
      .. 'an entry it cannot hand out)')
  end

  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- The clock's last four digits of microseconds: a draw in [0, 1) that no caller controls, for the probes' share.
  local bound, how, band_top = fresh_bound(known, 5, now, (tonumber(t[2]) % 10000) / 10000)
  local least = math.max(now + min_ttl, now + 1, bound or 0)
  if not bound and how == 'oldest' then
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
      note_change(keys, mode, cname, now)
      return head[1], score, now
    end
    -- Otherwise put the head back (atomically: nobody saw it gone) unless it is dead, and look further.
    if score > now then
      put_back(queue, head[1], score)
    end
  end
  -- The oldest entry with the life asked for (and young enough: the effective max_age), or the youngest for a
  -- probe; and whether another lives longer (then the queue's expiry stays as it is).
  redis.pcall('ZREMRANGEBYSCORE', queue, '-inf', now) -- the dead entries (tidying: may be refused)
  -- (ZRANGE ... BYSCORE REV, not ZREVRANGEBYSCORE, nor ZCOUNT: what the README's starter ACL allows.)
  local found, top = {}, false
  if how == 'band' and band_top > least then
    found = redis.call('ZRANGE', queue, '(' .. band_top, least, 'BYSCORE', 'REV', 'LIMIT', 0, 1, 'WITHSCORES')
    if found[1] then
      top = redis.call('ZRANGE', queue, -1, -1)[1] == found[1]
    else
      least = band_top -- nothing past the effective value within the band: an ordinary pop
    end
  end
  if how == 'youngest' then
    found = redis.call('ZRANGE', queue, '+inf', least, 'BYSCORE', 'REV', 'LIMIT', 0, 1, 'WITHSCORES')
    top = true
  elseif not found[1] then
    found = redis.call('ZRANGEBYSCORE', queue, least, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
    top = not found[3]
  end
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
  if top then
    -- It was the longest-lived entry: the queue's expiry moves to the next one. Past the count nothing may fail
    -- the pop; a user not allowed to move the expiry leaves it a little long, never loses the entry.
    local next_top = redis.pcall('ZRANGE', queue, -1, -1, 'WITHSCORES')
    if type(next_top) == 'table' and next_top[2] then
      redis.pcall('PEXPIREAT', queue, next_top[2])
    end
  end
  note_change(keys, mode, cname, now)
  return found[1], expires_at, now
end

local RETAIN_MS = 30000 -- how long a pop's result is kept for a retry of the same request (its reply lost)
local REQUEST = '^[%w_%-]+$'

-- The pop's keys and arguments, checked before anything is read: every key of the pool of KEYS[1], and the queue
-- the one of the cname given (a pop for room-1 never reads room-2's queue). Returns min_ttl; or nil, error reply.
local function pop_args(keys, args)
  local tag, rest = key_parts(keys[1] or '')
  if rest ~= ':meta' then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[1] must be PREFIX:{POOL}:meta')
  end
  local cname = args[1]
  if cname == nil or #keys < 3 or #keys > 6 then
    return nil, redis.error_reply('BAD_ARGUMENT a pop takes 3 to 6 keys and a cname, min_ttl_ms and record_miss')
  end
  if keys[2] ~= tag .. ':stats' then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[2] must be ' .. tag .. ':stats')
  end
  if keys[3] ~= queue_of(tag, cname) then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[3] must be the queue of the cname given, ' .. queue_of(tag, cname))
  end
  if keys[4] and keys[4] ~= tag .. ':ann' then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[4] must be ' .. tag .. ':ann')
  end
  if keys[5] and keys[5] ~= tag .. ':changes' then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[5] must be ' .. tag .. ':changes')
  end
  local record = keys[6]
  if record and (string.sub(record, 1, #tag + 8) ~= tag .. ':popped:' or #record < #tag + 24
      or #record > #tag + 72 or not string.find(record, REQUEST, #tag + 9)) then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[6] must be ' .. tag .. ':popped:<request id: 16 to 64 of '
      .. 'A-Z a-z 0-9 _ ->')
  end
  local min_ttl = whole(args[2], 0, MAX_LIFE_MS - 1)
  if not min_ttl then
    return nil, redis.error_reply('BAD_ARGUMENT min_ttl_ms must be a whole number from 0 to below 300000')
  end
  if args[3] ~= '0' and args[3] ~= '1' then
    return nil, redis.error_reply("BAD_ARGUMENT record_miss must be '0' or '1'")
  end
  return min_ttl
end

-- The pop itself, shared by ridpool_pop and ridpool_pop_packed: checks, then takes the entry out.
-- Returns member, expires_at, now; or nil, error reply; or nil, nil for a miss (counted when ARGV[3] is '1').
-- With KEYS[6], the entry popped is kept there (as 'expiresAt\nmember', for as long as it has min_ttl left, at
-- most RETAIN_MS), and the same call sent again (a retry after its reply was lost) gets that entry again.
-- Reading and writing the record may be refused (a user without GET or SET): the pop goes on without it.
local function take_entry(keys, args)
  local min_ttl, bad = pop_args(keys, args)
  if not min_ttl then
    return nil, bad
  end
  local record = keys[6]
  if record then
    local done = redis.pcall('GET', record)
    local cut = type(done) == 'string' and string.find(done, '\n', 1, true)
    if cut then
      local now = now_ms()
      local expires_at = tonumber(string.sub(done, 1, cut - 1))
      if expires_at and expires_at - now >= math.max(min_ttl, 1) then
        return string.sub(done, cut + 1), expires_at, now
      end
    end
  end
  local member, expires_at, now = take_checked(keys, args[1], min_ttl)
  if member == nil then
    if expires_at == nil and args[3] == '1' then
      redis.call('HINCRBY', keys[2], 'misses', 1)
    end
    return member, expires_at, now
  end
  if record then
    local keep = math.max(1, math.min(RETAIN_MS, expires_at - now - min_ttl))
    redis.pcall('SET', record, expires_at .. '\n' .. member, 'PX', keep)
  end
  return member, expires_at, now
end

--[[
ridpool_pop: hand out the oldest entry that still has at least min_ttl to live; never the same one twice. With
auto_max_age, only entries younger than the pool's effective max_age are offered (the daemon's decision in the
meta hash, see ridpool_freshen), and the share of pops the decision asks for probes: it takes the youngest entry
('younger'), or the youngest entry past the effective value and younger than the next age edge ('older').
KEYS[1] meta   PREFIX:{POOL}:meta
KEYS[2] stats  PREFIX:{POOL}:stats
KEYS[3] queue  PREFIX:{POOL}:q (template pool) or PREFIX:{POOL}:q:<encoded cname> (named channel, see keys.py)
KEYS[4] ann    PREFIX:{POOL}:ann (read for an `announced` pool)
KEYS[5] changes PREFIX:{POOL}:changes (the daemon's change feed: written for named and announced channels)
        (a template pool may be popped with KEYS[1..3] alone)
KEYS[6] popped PREFIX:{POOL}:popped:<request id> (optional, with KEYS[4..5]): a request id unique to this pop (16
               to 64 of A-Z a-z 0-9 _ -); the same call sent again after its reply was lost returns the same entry
ARGV[1] cname        '' for a template pool, else the channel to pop for (as written, not encoded)
ARGV[2] min_ttl_ms   the least remaining life the caller accepts (whole ms, 0 <= min_ttl_ms < 300000)
ARGV[3] record_miss  '1' to count an empty answer as a miss ('0' for the early tries of a waiting pop)
Reply: a flat array of field/value pairs: resourceId, appid, cname, uid, pool, sentAt (server ms), expiresAt
(server ms), expiresIn (ms), requestId; or nil when nothing fresh enough is there.
Errors: 'UNKNOWN_POOL ...', 'CNAME_REQUIRED ...', 'CNAME_NOT_SERVED ...', 'BAD_ARGUMENT ...' (keys not of one pool,
or the queue not the cname's; an argument out of range), 'BAD_ENTRY ...'; Redis's own (WRONGTYPE, OOM, a command the user may not run): in every case nothing was removed.
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
KEYS[9] ann:queues  PREFIX:{POOL}:ann:queues: such a channel is listed there until its newest entry expires
KEYS[10] changes  PREFIX:{POOL}:changes: such a channel's announcement changed (what it lacks), for the daemon
ARGV[1] entry     msgpack entry (see the top of this file); its expiresAt is ARGV[3]
ARGV[2] resourceId
ARGV[3] expires_at_ms  server time at which the entry stops being offered
ARGV[4] lease token ('' for none)
ARGV[5] uid to hold in the uids zset until the entry expires ('' when the pool's uid is fixed)
ARGV[6] slot      the queue's channel as written ('' for a template pool): names its data-set mark, and the
                  channel whose quota the entry uses up
ARGV[7] acquired  '1' when the daemon stores what its acquire brought: the pool's `acquires` counts it, and its
                  state is `ok` again with no failures in a row, whatever the reply ('' or '0' otherwise)
ARGV[8] identity  of the config the entry was acquired under (meta field 'identity'; '' or absent: not checked):
                  another one, or none, published means the entry is not what the pool's owner serves
Reply: 'ADDED'; 'EXISTS' (this very entry is already queued: a retried add); 'REFUSED' (the ID was added
before and popped or replaced: never offered twice); 'EXPIRED' (already past its time: not stored);
'CONFLICT' (ARGV[8] is not the identity published: not stored, its lease and uid released).
Errors: 'BAD_ARGUMENT ...' (keys of another pool or channel, no resourceId, an expiry out of range).
A queue filled in another data set (a restore, a failover) is dropped before the entry joins it.
]]
local function add(keys, args)
  local bad = check_keys(keys, {
    ':stats', ':ledger', '', '', ':inflight', ':uids', ':meta', ':ann:left', ':ann:queues', ':changes',
  })
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
  local identity = redis.call('HGET', keys[7], 'identity')
  if args[8] and args[8] ~= '' and identity ~= args[8] then
    -- Acquired under a config the pool's owner does not publish (a replica that disagrees, an acquire in flight
    -- across a change of owner or config): never stored, so no pop can return it.
    if uid ~= '' then
      redis.call('ZREM', uids, uid)
    end
    return 'CONFLICT'
  end
  if args[7] == '1' then
    -- Counted once per acquire: a retried add of the very same entry (EXISTS, below) takes this back.
    redis.call('HINCRBY', stats, 'acquires', 1)
    redis.call('HSET', stats, 'state', 'ok', 'failures', 0)
  end
  check_data_set(keys[7], stats, queue, ready, 'e:' .. slot, current_mark(identity))
  local digest = redis.sha1hex(rid)
  redis.call('ZREMRANGEBYSCORE', ledger, '-inf', now)
  if redis.call('ZSCORE', ledger, digest) then
    if redis.call('ZSCORE', queue, entry) then
      if args[7] == '1' then
        redis.call('HINCRBY', stats, 'acquires', -1)
      end
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
    redis.call('ZADD', keys[9], 'GT', expires_at, slot)
    expire_with_top(keys[9])
    redis.call('ZADD', keys[10], now, slot)
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
ridpool_reserve: lease acquires for channels of one pool, up to what each lacks and within the pool's in-flight
cap across replicas, so that replicas together never overfill a channel.
KEYS[1] inflight  KEYS[2] uids  KEYS[3] hold (set while the pool backs off)  KEYS[4] stats
KEYS[5] quota     PREFIX:{POOL}:ann:left: a channel with a field there (what its announcement still lacks) never
                  gets more leases than that field says
KEYS[6..] the queue of each slot asked about, in order
ARGV[1] cap         acquires in flight for the whole pool, across replicas
ARGV[2] lease_ms    how long a lease holds unless renewed; a lost replica's leases lapse after it
ARGV[3] token_base  unique per call; tokens are token_base:k (a re-sent call gets its own leases back)
ARGV[4] pops_seen   the pool's `pops` counter when the caller planned
ARGV[5] stale_ms    entries with less than this left of their life are past the pool's effective max_age
                    (auto_max_age: max_age - effective; 0 otherwise): kept for the pops' probes, not counted live
ARGV[6] n           slots asked about (at most CHUNK), then 4 values a slot:
  slot         the channel ('' for a template pool)
  target       entries to keep ready in it
  consumable   of the target, how many pops use up (a warm-up's): the pool's pops since `pops_seen` come off
               them (the caller's plan may predate pops made since, and such an entry must not be acquired again)
  want         the most leases this caller takes for it now
ARGV[7 + 4n ..] uid candidates, tried in order, for a uid_range pool (none for a fixed uid)
Reply: {status, leases in flight for the pool after the call, then per slot asked: its live entries, how many
leases it got (m), then m pairs of token, uid (uid '' for a fixed-uid pool)}. status is 'OK', 'HELD' (the pool
backs off: nothing leased) or 'CAP' (the cap was reached: slots after that point got nothing).
Errors: 'BAD_ARGUMENT ...' (keys of another pool or channel, a number out of range).
A lease token is '<token_base>:<k>\t<uid>\t<slot>' (the slot last: a web label may hold anything but a tab).
]]
local function reserve(keys, args)
  local bad = check_keys(keys, { ':inflight', ':uids', ':hold', ':stats', ':ann:left' })
  if bad then
    return bad
  end
  local cap, lease, base = whole(args[1], 0, 1e6), whole(args[2], 1, MAX_LIFE_MS), args[3]
  local seen, stale, n = whole(args[4], 0, 1e15), whole(args[5], 0, MAX_LIFE_MS), whole(args[6], 0, CHUNK)
  if not (cap and lease and base and base ~= '' and seen and stale and n) or #keys ~= 5 + n
      or #args < 6 + 4 * n then
    return redis.error_reply('BAD_ARGUMENT reserve takes cap, lease_ms, token_base, pops_seen, stale_ms, n and n '
      .. 'slots of slot, target, consumable, want, with each slot\'s queue in KEYS')
  end
  local tag = key_parts(keys[1])
  local asked = {}
  for i = 1, n do
    local at = 6 + 4 * (i - 1)
    local slot, target = args[at + 1], whole(args[at + 2], 0, 1e9)
    local consumable, want = whole(args[at + 3], 0, 1e9), whole(args[at + 4], 0, 1e6)
    if not (target and consumable and want) then
      return redis.error_reply('BAD_ARGUMENT slot ' .. i .. ': target, consumable and want must be whole numbers')
    end
    if keys[5 + i] ~= queue_of(tag, slot) then
      return redis.error_reply('BAD_ARGUMENT KEYS[' .. (5 + i) .. '] must be the queue of slot ' .. slot)
    end
    asked[i] = { slot, target, consumable, want }
  end
  local inflight, uids, stats, quota = keys[1], keys[2], keys[4], keys[5]
  if redis.call('EXISTS', keys[3]) == 1 then
    return { 'HELD', redis.call('ZCARD', inflight) }
  end
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', uids, '-inf', now)
  local held, again = {}, {}
  local prefix = base .. ':'
  local leases = redis.call('ZRANGE', inflight, 0, -1)
  for _, token in ipairs(leases) do
    local uid, slot = lease_parts(token)
    if slot then
      held[slot] = (held[slot] or 0) + 1
      if string.sub(token, 1, #prefix) == prefix then
        -- This very call ran before and its reply was lost (the client re-sent it): hand back those leases
        -- rather than leave them held by nobody until they lapse.
        again[slot] = again[slot] or {}
        table.insert(again[slot], token)
        table.insert(again[slot], uid)
      end
    end
  end
  local in_flight = #leases
  local out = { 'OK', in_flight }
  if next(again) then
    for i = 1, n do
      local got = again[asked[i][1]] or {}
      out[#out + 1] = live_count(keys[5 + i], now, stale)
      out[#out + 1] = #got / 2
      for _, value in ipairs(got) do
        out[#out + 1] = value
      end
    end
    return out
  end
  local popped = 0
  for i = 1, n do
    if asked[i][3] > 0 then
      popped = math.max(0, tonumber(redis.call('HGET', stats, 'pops') or '0') - seen)
      break
    end
  end
  local candidate, k = 7 + 4 * n, 0
  local uid_range = #args >= candidate
  for i = 1, n do
    local slot, target, consumable, want = asked[i][1], asked[i][2], asked[i][3], asked[i][4]
    local queue = keys[5 + i]
    purge_dead(queue, now)
    local live, mine = live_count(queue, now, stale), held[slot] or 0
    local m = math.min(target - math.min(consumable, popped) - live - mine, want, cap - in_flight)
    local left = redis.call('HGET', quota, slot)
    if left then
      -- Never more than the channel's announcement still lacks (a plan made before a pop is stale).
      m = math.min(m, tonumber(left) - mine)
    end
    if cap - in_flight <= 0 and out[1] == 'OK' and target - live - mine > 0 then
      out[1] = 'CAP'
    end
    out[#out + 1] = live
    local count_at = #out + 1
    out[count_at] = 0
    for _ = 1, m do
      local uid = ''
      if uid_range then
        while args[candidate] and redis.call('ZSCORE', uids, args[candidate]) do
          candidate = candidate + 1
        end
        if not args[candidate] then
          break -- out of free uid candidates: fewer leases now, the next round brings new candidates
        end
        uid = args[candidate]
        candidate = candidate + 1
        redis.call('ZADD', uids, now + lease, uid)
      end
      k = k + 1
      local token = base .. ':' .. k .. '\t' .. uid .. '\t' .. slot
      redis.call('ZADD', inflight, now + lease, token)
      in_flight = in_flight + 1
      out[count_at] = out[count_at] + 1
      out[#out + 1] = token
      out[#out + 1] = uid
    end
  end
  out[2] = in_flight
  if k > 0 then
    expire_with_top(inflight)
    if uid_range then
      expire_with_top(uids)
    end
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
ridpool_sweep: the daemon's one look at a pool per round: what changed in its channels since it last looked (the
change feed, written by pops and announcements), and the state of the channels it asks about (those changed,
those whose oldest entry is due to expire, new ones). Its cost follows what changed, not what is stored.
KEYS[1] meta   KEYS[2] stats   KEYS[3] changes   KEYS[4] ann   KEYS[5] quota (PREFIX:{POOL}:ann:left)
KEYS[6] ann:at
KEYS[7..] per slot of ARGV[4..], in order: its queue and its wake-up list (two keys a slot)
ARGV[1] since_ms   feed entries scored at or after this are returned (-1: none)
ARGV[2] retire_ms  a slot with a quota (a pending announcement) retires entries that would expire within this
                   and before its instant (they would die before their starter could come), or, from the instant
                   on, before its announcement ends; it gets one more to acquire for each (0: none) and goes into
                   the feed
ARGV[3] keep_ms    the feed keeps entries this long (older ones are dropped; the key expires twice this after)
ARGV[4] stale_ms   entries with less life left than this are past the effective max_age (as ridpool_reserve):
                   neither counted live nor the oldest
ARGV[5..] the slots to sweep ('' for a template pool's queue), at most CHUNK
Reply: {now ms, the data set's id (the serving process's run_id: another one means a restore or a failover),
more (1: the feed holds more than returned; ask again from the last score), feed entries n, slot, score, ...,
then per slot asked: live entries, expiresAt of the oldest or -1, entries dropped because the queue was filled in
another data set, entries retired}.
Errors: 'BAD_ARGUMENT ...'.
]]
local function sweep(keys, args)
  local bad = check_keys(keys, { ':meta', ':stats', ':changes', ':ann', ':ann:left', ':ann:at' })
  if bad then
    return bad
  end
  local since, retire, keep = tonumber(args[1] or ''), whole(args[2], 0, MAX_LIFE_MS), whole(args[3], 1000, 86400000)
  local stale = whole(args[4], 0, MAX_LIFE_MS)
  local n = #args - 4
  if since == nil or since ~= since or retire == nil or keep == nil or stale == nil or n > CHUNK
      or #keys ~= 6 + 2 * n then
    return redis.error_reply('BAD_ARGUMENT sweep takes since_ms, retire_ms, keep_ms, stale_ms and at most ' .. CHUNK
      .. ' slots, each with its queue and wake-up list in KEYS')
  end
  local tag = key_parts(keys[1])
  for i = 1, n do
    local queue = queue_of(tag, args[4 + i])
    if keys[5 + 2 * i] ~= queue or keys[6 + 2 * i] ~= queue .. ':ready' then
      return redis.error_reply('BAD_ARGUMENT KEYS[' .. (5 + 2 * i) .. '] must be the queue of slot ' .. args[4 + i])
    end
  end
  local meta, stats, changes, ann, quota, ann_at = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', changes, '-inf', now - keep)
  local out = { now, instance(), 0, 0 }
  local here = current_mark(redis.call('HGET', meta, 'identity'))
  if since >= 0 then
    local feed = redis.call('ZRANGEBYSCORE', changes, since, '+inf', 'WITHSCORES', 'LIMIT', 0, CHUNK + 1)
    local count = math.min(#feed / 2, CHUNK)
    out[3], out[4] = #feed / 2 > CHUNK and 1 or 0, count
    for i = 1, 2 * count do
      out[#out + 1] = feed[i]
    end
    redis.call('PEXPIRE', changes, 2 * keep)
  end
  for i = 1, n do
    local slot, queue, ready = args[4 + i], keys[5 + 2 * i], keys[6 + 2 * i]
    local dropped = check_data_set(meta, stats, queue, ready, 'e:' .. slot, here) or 0
    purge_dead(queue, now)
    local retired = 0
    if retire > 0 and redis.call('HGET', quota, slot) then
      local ends = tonumber(redis.call('ZSCORE', ann, slot) or '-1')
      local at = tonumber(redis.call('ZSCORE', ann_at, slot) or '-1')
      if ends >= 0 then
        -- Before the instant, only an entry that dies before it is of no use; from the instant on, its starter
        -- may come any time until the announcement ends.
        local upto = now < at and math.min(now + retire, at) or math.min(now + retire, ends)
        retired = redis.call('ZREMRANGEBYSCORE', queue, '-inf', upto)
        if retired > 0 then
          expire_with_top(queue)
          redis.call('HINCRBY', quota, slot, retired)
          redis.call('ZADD', changes, now, slot)
        end
      end
    end
    local oldest = redis.call('ZRANGEBYSCORE', queue, '(' .. (now + stale), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    out[#out + 1] = live_count(queue, now, stale)
    out[#out + 1] = tonumber(oldest[2] or -1)
    out[#out + 1] = dropped
    out[#out + 1] = retired
  end
  return out
end

--[[
ridpool_count: how many live entries some queues hold, and their oldest; reads only (status, stats(), the
demand history read it, at most CHUNK queues a call).
KEYS[1..] queues (of one pool)
Reply: {now ms, then per queue: live entries (expiresAt after now), expiresAt of the oldest live one or -1}.
]]
local function count_live(keys, args)
  if #keys > CHUNK then
    return redis.error_reply('BAD_ARGUMENT at most ' .. CHUNK .. ' queues a call')
  end
  local tag = keys[1] and key_parts(keys[1])
  local now = now_ms()
  local out = { now }
  for _, queue in ipairs(keys) do
    local queue_tag, rest = key_parts(queue)
    if queue_tag ~= tag or string.sub(rest, 1, 2) ~= ':q' then
      return redis.error_reply('BAD_ARGUMENT every key must be a queue of one pool')
    end
    out[#out + 1] = redis.call('ZCOUNT', queue, '(' .. now, '+inf')
    local oldest = redis.call('ZRANGEBYSCORE', queue, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    out[#out + 1] = tonumber(oldest[2] or -1)
  end
  return out
end

--[[
ridpool_publish: publish a pool's configuration, unless another live replica publishes a different one. Cheap
when nothing changed (the fingerprint is compared; only the owner and the time are written), and never a step
that removes what it has not replaced.
KEYS[1] meta
ARGV[1] owner        the publishing replica's id
ARGV[2] fingerprint  of the whole configuration, channels included (replicas with the same config publish the
                     same one); '' to release: the owner leaving, its publication no longer counts as live
ARGV[3] live_ms      a publication younger than this, by another owner, of another fingerprint, wins
ARGV[4] step         'check' or 'commit'
ARGV[5..] field, value pairs of the pool's settings (mode, appid, size, max_age_ms, ...; never its channels,
          which ridpool_channels writes), at most CHUNK pairs
Reply: {outcome, owner}: 'CONFLICT' (another live replica's configuration stands: nothing written), 'CURRENT'
(this fingerprint is published already: owner and time written), 'SYNC' (the settings written; now bring the
channels up to date with ridpool_channels, then call again with 'commit'), 'PUBLISHED' (after 'commit': the
fingerprint written) or 'RELEASED'. A replica that dies between SYNC and commit leaves the old fingerprint, so
the next publish syncs again.
]]
local function publish(keys, args)
  local bad = check_keys(keys, { ':meta' })
  if bad then
    return bad
  end
  local owner, fingerprint, live, step = args[1], args[2], whole(args[3], 0, 1e12), args[4]
  if not owner or not fingerprint or not live or (step ~= 'check' and step ~= 'commit') or #args % 2 ~= 0
      or #args > 4 + 2 * CHUNK then
    return redis.error_reply("BAD_ARGUMENT publish takes owner, fingerprint, live_ms, 'check' or 'commit' and "
      .. 'field, value pairs')
  end
  local meta = keys[1]
  local now = now_ms()
  local held = redis.call('HMGET', meta, 'owner', 'fingerprint', 'published_at_ms')
  if fingerprint == '' then
    -- A replica leaving: its publication stops counting as live, so a successor with another config (the same
    -- service restarted after a config change) takes over at once.
    if held[1] == owner then
      redis.call('HSET', meta, 'published_at_ms', 0)
    end
    return { 'RELEASED', owner }
  end
  if held[2] and held[2] ~= fingerprint and held[1] ~= owner and now - (tonumber(held[3]) or 0) < live then
    return { 'CONFLICT', held[1] }
  end
  if held[2] == fingerprint then
    redis.call('HSET', meta, 'owner', owner, 'published_at_ms', now)
    return { 'CURRENT', owner }
  end
  if #args > 4 then
    redis.call('HSET', meta, unpack(args, 5))
  end
  if step == 'commit' then
    redis.call('HSET', meta, 'owner', owner, 'fingerprint', fingerprint, 'published_at_ms', now)
    return { 'PUBLISHED', owner }
  end
  return { 'SYNC', owner }
end

--[[
ridpool_channels: add or remove channels of a named pool's publication (the fields c:<cname> pops look up), at
most CHUNK a call; a publisher adds the new ones before it removes the dropped ones, so a channel both configs
serve is never missing.
KEYS[1] meta
ARGV[1] 'add' or 'remove'   ARGV[2..] channel names
Reply: how many fields were added or removed.
]]
local function publish_channels(keys, args)
  local bad = check_keys(keys, { ':meta' })
  if bad then
    return bad
  end
  local how = args[1]
  if (how ~= 'add' and how ~= 'remove') or #args > 1 + CHUNK then
    return redis.error_reply("BAD_ARGUMENT channels takes 'add' or 'remove' and at most " .. CHUNK .. ' names')
  end
  if #args == 1 then
    return 0
  end
  local fields = {}
  for i = 2, #args do
    if how == 'add' then
      fields[#fields + 1] = 'c:' .. args[i]
      fields[#fields + 1] = '1'
    else
      fields[#fields + 1] = 'c:' .. args[i]
    end
  end
  if how == 'add' then
    return redis.call('HSET', keys[1], unpack(fields))
  end
  return redis.call('HDEL', keys[1], unpack(fields))
end

--[[
ridpool_conflict: a replica says that its config for a pool differs from the one a live owner published (so it
neither overwrites the publication nor refills the pool), or that it no longer does. `status` and `stats()` show
the pool in state `conflict` while a replica says so; a replica that dies without withdrawing its record is
forgotten after live_ms.
KEYS[1] conflicts  PREFIX:{POOL}:conflicts (hash: replica -> '<until ms> <message>'; holds no ID)
ARGV[1] replica    the replica's id
ARGV[2] live_ms    how long the record holds unless said again; 0 withdraws it
ARGV[3] message    what differs, for operators
Reply: how many replicas say so now (records past their time are dropped).
]]
local function conflict(keys, args)
  local bad = check_keys(keys, { ':conflicts' })
  if bad then
    return bad
  end
  local replica, live = args[1], whole(args[2], 0, 86400000)
  if not replica or replica == '' or not live then
    return redis.error_reply('BAD_ARGUMENT conflict takes replica, live_ms (0 to 86400000) and a message')
  end
  local key, now = keys[1], now_ms()
  if live > 0 then
    redis.call('HSET', key, replica, (now + live) .. ' ' .. (args[3] or ''))
  else
    redis.call('HDEL', key, replica)
  end
  local top, n = 0, 0
  for _, field in ipairs(redis.call('HKEYS', key)) do -- one field per replica that disagrees: a handful
    local until_ms = tonumber(string.match(redis.call('HGET', key, field) or '', '^(%d+)')) or 0
    if until_ms <= now then
      redis.call('HDEL', key, field)
    else
      n, top = n + 1, math.max(top, until_ms)
    end
  end
  if n > 0 then
    redis.call('PEXPIREAT', key, top)
  end
  return n
end

--[[
The account's shared budget: a sliding log of grants (zset PREFIX:{acct:NAME}:rate, member -> the server time in
us the grant's request may leave), read by every replica and every starter. At most `limit` grants in any
`window_ms`, and each at least 0.9 * window_ms / limit after the one before.
A sliding log, not a token bucket: a ceiling on every window, even when requests reach Agora bunched together.
The spacing keeps grants from leaving in bursts, which the network and the senders bunch up the most.

Starters first: a starter's request (its start, query or stop, an acquire on the spot) waits in line for its turn
(ridpool_take), earliest deadline first across processes, hosts and languages (first come first served among
requests that name no deadline; see ridpool_take), and the daemon's refills
(ridpool_take_refills) take only what no starter waits for. A ticket in line lapses when its starter stops asking
(a dead process), so it never holds the line for long. While starters wait, the refills of all replicas together
still get one grant per `floor_ms`, so a starter that runs away cannot starve the pools.
]]

local MAX_LIMIT = 1000000 -- grants per window
local MAX_WINDOW_MS = 100000000 -- about 28 hours: a rate of one request a day still fits
local MAX_WAIT_MS = 60000 -- the longest hold or cooldown anyone may set (ridpool_hold, ridpool_cooldown)
local MAX_EPOCH_MS = 1e15 -- a server time in ms beyond any clock (year 33658)
local TURN_ASK_MS = 5000 -- a starter in line asks again at least this often (a thousand far back: ~200 asks/s) ...
local COOLDOWN_ASK_MS = 1000 -- ... every second during a cooldown (so that one deleted is noticed) ...
local TURN_GRACE_MS = 500 -- ... and its ticket lapses once it is this much later than it was told to come
-- A request that names no time by which it must go out is placed as one that must go out this long after it asked:
-- requests without one stay first come first served among themselves, and a starter holding an entry that must
-- be started sooner goes ahead of them (see ridpool_take).
local TURN_HORIZON_US = 60000000
local MAX_BATCH = 64 -- grants one refill call may book
local LEAD_US = 5000 -- refills book at most this far ahead (see ridpool_take_refills)
local ID = '^[%w_:%-]+$' -- tickets and call ids: 1 to 64 of A-Z a-z 0-9 _ : -

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The checks every budget call makes: keys of one account with the suffixes asked for, limit and window in range,
-- an id. Returns limit, window_ms; or nil, the error reply.
local function budget_args(keys, args, rests)
  local bad = check_keys(keys, rests)
  if bad then
    return nil, bad
  end
  if not string.find(keys[1], '{acct:', 1, true) then
    return nil, redis.error_reply('BAD_ARGUMENT KEYS[1] must be an account key, PREFIX:{acct:NAME}' .. rests[1])
  end
  local limit, window = whole(args[1], 1, MAX_LIMIT), whole(args[2], 1, MAX_WINDOW_MS)
  if not limit then
    return nil, redis.error_reply('BAD_ARGUMENT limit must be a whole number from 1 to ' .. MAX_LIMIT)
  end
  if not window then
    return nil, redis.error_reply('BAD_ARGUMENT window_ms must be a whole number from 1 to ' .. MAX_WINDOW_MS)
  end
  local id = args[3]
  if id == nil or #id > 64 or not string.find(id, ID) then
    return nil, redis.error_reply('BAD_ARGUMENT the ticket must be 1 to 64 of A-Z a-z 0-9 _ : -')
  end
  return limit, window
end

-- The earliest server time (us) at which the log allows one more grant. Grants are logged in time order (each at
-- least a spacing after the newest), so the limit-th newest decides the window.
local function next_free(rate, now, limit, window_us, spacing)
  local n = redis.call('ZCARD', rate)
  if n == 0 then
    return now
  end
  local free = math.max(now, tonumber(redis.call('ZRANGE', rate, -1, -1, 'WITHSCORES')[2]) + spacing)
  if n >= limit then
    free = math.max(free, tonumber(redis.call('ZRANGE', rate, n - limit, n - limit, 'WITHSCORES')[2]) + window_us)
  end
  return free
end

-- Log one grant. A member already logged (a ticket used again within a window) gets a grant of its own: a reused
-- name never hides a grant from the count.
local function log_grant(rate, at, member)
  if redis.call('ZADD', rate, 'NX', at, member) == 0 then
    redis.call('ZADD', rate, at, member .. '/' .. at)
  end
end

-- Forget tickets whose starters stopped asking, a bounded number per call (the others go on the next calls).
local function drop_lapsed(turns, leases, now_ms)
  for _ = 1, 8 do
    local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms, 'LIMIT', 0, 64)
    if #gone == 0 then
      return
    end
    redis.call('ZREM', leases, unpack(gone))
    redis.call('ZREM', turns, unpack(gone))
    if #gone < 64 then
      return
    end
  end
end

-- The line's two keys live as long as its latest lease.
local function expire_line(turns, leases)
  local top = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', leases, top[2])
    redis.call('PEXPIREAT', turns, top[2])
  else
    redis.call('DEL', leases, turns)
  end
end

--[[
ridpool_take: a starter's turn at the account's budget, before each of its own calls to Agora (start, query,
stop, an acquire on the spot), ahead of the daemon's refills. The line is served earliest deadline first: a request
that gives USE_BY (a start with an entry of a named or announced channel: the entry's expiresAt less min_ttl) is
placed at that time (from now to at most five minutes ahead, an entry's longest life), one that gives none at the
time it first asked plus TURN_HORIZON_US (60 s). So requests without a USE_BY are served first come first served
among themselves, a start whose entry must go out within the minute goes ahead of them, and the starters of a
burst, all asking at once, are served in the order their entries expire: the order the daemon acquired them in,
which is what lets every entry of a burst larger than one max_age of budget be started before it expires.
KEYS[1] rate         PREFIX:{acct:NAME}:rate
KEYS[2] cooldown     PREFIX:{acct:NAME}:cooldown
KEYS[3] turns        PREFIX:{acct:NAME}:turns (zset: waiting tickets -> their place in line, server us)
KEYS[4] turns:lease  PREFIX:{acct:NAME}:turns:lease (zset: waiting tickets -> the ms by which they must ask again)
ARGV[1] limit        grants per window (whole number >= 1): floor(rate_limit)
ARGV[2] window_ms    the window (whole ms): ceil(1000 * (1 + jitter))
ARGV[3] ticket       this request's place in line, the same on every ask until it is granted (1 to 64 of
                     A-Z a-z 0-9 _ : -); a new one for the next request. Asking again with a ticket granted less
                     than a window ago (its grant came too late to use) puts it at the head of the line, once.
ARGV[4] use_by_ms    optional ('' or absent: none): the server time (whole ms) by which the request must go out;
                     read on its first ask
Reply: 0 when granted (send the request now), else the ms to wait before asking again with the same ticket
(at most 5000; 1000 during a 429 cooldown). A ticket that does not ask again within 500 ms of that lapses and
loses its place.
Errors: 'BAD_ARGUMENT ...'.
]]
local function take(keys, args)
  local limit, window = budget_args(keys, args, {':rate', ':cooldown', ':turns', ':turns:lease'})
  if not limit then
    return window
  end
  local rate, cooldown, turns, leases, ticket = keys[1], keys[2], keys[3], keys[4], args[3]
  local given = args[4] ~= nil and args[4] ~= ''
  local use_by = given and whole(args[4], 0, MAX_EPOCH_MS)
  if given and not use_by then
    return redis.error_reply('BAD_ARGUMENT use_by_ms must be a whole number of server ms from 0 to 10^15')
  end
  local now = now_us()
  local now_ms = math.floor(now / 1000)
  drop_lapsed(turns, leases, now_ms)
  -- A ticket granted within the window asking again: its grant came too late to be used (a slow reply, a busy
  -- starter; or the reply was lost and this is the retry). It goes to the head of the line, once: the late grant
  -- stays counted, the second is logged as '<ticket>+', and a third ask waits at the back like a new request.
  local again = redis.call('ZSCORE', rate, ticket) and not redis.call('ZSCORE', rate, ticket .. '+')
  if again then
    redis.call('ZADD', turns, 0, ticket)
  else
    local place = now + TURN_HORIZON_US
    if use_by then
      place = math.min(math.max(now, use_by * 1000), now + MAX_LIFE_MS * 1000)
    end
    redis.call('ZADD', turns, 'NX', place, ticket)
  end
  local rank = redis.call('ZRANK', turns, ticket)
  local window_us = window * 1000
  local spacing = 0.9 * window_us / limit
  local wait = math.min(redis.call('PTTL', cooldown), COOLDOWN_ASK_MS)
  if wait <= 0 then
    redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window_us)
    local free = next_free(rate, now, limit, window_us, spacing)
    if rank == 0 and free <= now then
      log_grant(rate, now, again and ticket .. '+' or ticket)
      redis.call('PEXPIREAT', rate, math.ceil(tonumber(redis.call('ZRANGE', rate, -1, -1, 'WITHSCORES')[2]) / 1000) + window)
      redis.call('ZREM', turns, ticket)
      redis.call('ZREM', leases, ticket)
      expire_line(turns, leases)
      return 0
    end
    -- Its turn comes after the free instant and a spacing per starter ahead of it, or later (the window's ceiling,
    -- the refills' floor): an estimate that errs early, so that the head never keeps the line waiting.
    wait = math.ceil((free - now + rank * spacing) / 1000)
  end
  wait = math.max(1, math.min(wait, TURN_ASK_MS))
  redis.call('ZADD', leases, now_ms + wait + TURN_GRACE_MS, ticket)
  expire_line(turns, leases)
  return wait
end

--[[
ridpool_take_refills: the daemon's refills draw from the same budget, after the starters. One call may book
several grants, spaced as the log requires, the first now or a little ahead, all within LEAD_US (5 ms) of now:
one replica draws every grant the window allows at any rate (at 2,000/s a spacing, 0.47 ms, is shorter than a
round trip plus asyncio's 1 ms timer, so one grant per call would reach half the window), and neither a starter
arriving next nor a cooldown set by a 429 waits more than those 5 ms behind grants already booked. While starters
wait, refills get one grant per floor_ms (all replicas together) and book no more.
KEYS[1] rate  KEYS[2] cooldown  KEYS[3] turns  KEYS[4] turns:lease (as ridpool_take)
KEYS[5] refilled     PREFIX:{acct:NAME}:refilled (string: exists for floor_ms after a refill was granted)
ARGV[1] limit        ARGV[2] window_ms (as ridpool_take)
ARGV[3] call id      unique per call (1 to 64 of A-Z a-z 0-9 _ : -): grants are logged as '<id>/<n>'
ARGV[4] count        grants wanted (1 to 64)
ARGV[5] floor_ms     while starters wait, refills get one grant per this many ms (1 to 60000)
Reply: {0, offset_us, ...}: grants booked, each to be sent offset_us after the server time of this call (the
first may be 0); or {ms}: none now, ask again after ms.
Errors: 'BAD_ARGUMENT ...'.
]]
local function take_refills(keys, args)
  local limit, window = budget_args(keys, args, {':rate', ':cooldown', ':turns', ':turns:lease', ':refilled'})
  if not limit then
    return window
  end
  local count, floor = whole(args[4], 1, MAX_BATCH), whole(args[5], 1, MAX_WAIT_MS)
  if not count or not floor then
    return redis.error_reply('BAD_ARGUMENT count must be 1 to ' .. MAX_BATCH .. ' and floor_ms 1 to ' .. MAX_WAIT_MS)
  end
  local rate, cooldown, turns, leases, refilled = keys[1], keys[2], keys[3], keys[4], keys[5]
  local wait = redis.call('PTTL', cooldown)
  if wait > 0 then
    return {wait}
  end
  local now = now_us()
  local window_us = window * 1000
  local spacing = 0.9 * window_us / limit
  local lead = LEAD_US
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window_us)
  drop_lapsed(turns, leases, math.floor(now / 1000))
  local free = next_free(rate, now, limit, window_us, spacing)
  if redis.call('EXISTS', turns) == 1 then
    -- Starters wait: only the floor's grant, once it is due (ask again then).
    local held = redis.call('PTTL', refilled)
    if held > 0 then
      return {held}
    end
    count = 1
  end
  if free > now + lead then
    -- Come back a little before the next free instant (rounded down), ahead of a starter told to come at it.
    return {math.max(1, math.floor((free - now - lead) / 1000))}
  end
  local out = {0}
  local at = free
  for n = 1, count do
    log_grant(rate, at, args[3] .. '/' .. n)
    out[#out + 1] = math.floor(at - now)
    local following = n < count and next_free(rate, now, limit, window_us, spacing)
    if not following or following > now + lead then
      break
    end
    at = following
  end
  redis.call('PEXPIREAT', rate, math.ceil(at / 1000) + window)
  redis.call('SET', refilled, '1', 'PX', floor)
  return out
end

--[[
ridpool_hold and ridpool_cooldown: make every replica wait at least `ms` from now, in one atomic step that never
shortens a longer wait another replica set. ridpool_hold holds a pool after failed acquires (its hold key stops
ridpool_reserve); ridpool_cooldown pauses an account's budget after a 429 (its cooldown key stops the takes).
KEYS[1] hold       PREFIX:{POOL}:hold (ridpool_hold), PREFIX:{acct:NAME}:cooldown (ridpool_cooldown)
ARGV[1] ms         how long to wait (whole ms, 1 to 60000: the longest wait anyone may set)
Reply: the wait now in force, ms.
Errors: 'BAD_ARGUMENT ...'.
]]
local function wait_at_least(keys, args, rest)
  local bad = check_keys(keys, {rest})
  if bad then
    return bad
  end
  local ms = whole(args[1], 1, MAX_WAIT_MS)
  if not ms then
    return redis.error_reply('BAD_ARGUMENT the wait must be a whole number of ms from 1 to ' .. MAX_WAIT_MS)
  end
  if redis.call('PTTL', keys[1]) < ms then
    redis.call('SET', keys[1], '1', 'PX', ms)
  end
  return redis.call('PTTL', keys[1])
end

local function hold(keys, args)
  return wait_at_least(keys, args, ':hold')
end

local function cooldown(keys, args)
  if keys[1] and not string.find(keys[1], '{acct:', 1, true) then
    return redis.error_reply('BAD_ARGUMENT KEYS[1] must be an account key, PREFIX:{acct:NAME}:cooldown')
  end
  return wait_at_least(keys, args, ':cooldown')
end

--[[
ridpool_report: a starter says how `start` went with a popped entry, so failure rates by ID age can be seen
and max_age tuned on evidence (auto_max_age) rather than argued. Counters only, never an ID.
KEYS[1] starts   PREFIX:{POOL}:starts (hash of counters; holds no ID)
KEYS[2] meta     PREFIX:{POOL}:meta (only a published pool takes reports)
ARGV[1] sent_at_ms   the entry's sentAt (whole ms, server time)
ARGV[2] outcome      'ok' or 'failed'
ARGV[3] code         Agora's error code for a failure ('' when none): an integer, else counted as 'other'
Fields counted, by the ID's age at report time in the buckets of EDGES ('0-2', '2-5', ..., '240-270', '270-300';
an age of 300 s or more counts in the last):
  '<minute>:<outcome>:<edge>'  per minute (server ms / 60000) and bucket (its lower edge, s): the last
                               REPORT_MINUTES minutes only, older minutes are deleted as new ones begin
  '<outcome>:<bucket>'         since the hash was made (the counters /metrics exports)
  'code:<code>'                failures by Agora code; past MAX_CODES codes, new ones count as 'code:other'
  'last'                       the newest minute reported; 'codes' how many code fields there are
The hash expires REPORTS_KEPT_MS after the last report. Reply: the age in ms.
Errors: 'UNKNOWN_POOL ...', 'BAD_ARGUMENT ...'.
]]
local MAX_CODES = 48
local REPORT_MINUTES = 61 -- minutes of per-minute reports kept: the daemon's decisions read the last 60
local REPORTS_KEPT_MS = 7 * 24 * 3600 * 1000
local MAX_MS = 2 ^ 50 -- a server time in ms, with room to spare
local OUTCOMES = { 'ok', 'failed' }

-- The bucket an age falls in: its lower edge and its label ('0-2', ..., '270-300').
local function age_bucket(age_ms)
  local i = 1
  while EDGES[i + 1] and EDGES[i + 1] * 1000 <= age_ms do
    i = i + 1
  end
  return EDGES[i], EDGES[i] .. '-' .. (EDGES[i + 1] or AGE_TOP)
end

-- Delete the per-minute fields of the minutes from `first` to `last` (both included).
local function forget_minutes(starts, first, last)
  for m = first, last do
    local fields = {}
    for _, outcome in ipairs(OUTCOMES) do
      for _, edge in ipairs(EDGES) do
        fields[#fields + 1] = m .. ':' .. outcome .. ':' .. edge
      end
    end
    redis.call('HDEL', starts, unpack(fields))
  end
end

local function report(keys, args)
  local bad = check_keys(keys, {':starts', ':meta'})
  if bad then
    return bad
  end
  local sent = whole(args[1], 0, MAX_MS)
  local outcome = args[2]
  if #keys ~= 2 or #args ~= 3 or sent == nil or (outcome ~= 'ok' and outcome ~= 'failed') then
    return redis.error_reply("BAD_ARGUMENT report takes 2 keys (starts, meta) and sent_at_ms (whole ms), 'ok' or "
      .. "'failed', and a code or ''")
  end
  if redis.call('EXISTS', keys[2]) == 0 then
    return redis.error_reply('UNKNOWN_POOL no daemon has published this pool; reports are kept only for pools')
  end
  local starts = keys[1]
  local now = now_ms()
  local age = math.max(0, now - sent)
  local edge, bucket = age_bucket(age)
  local minute = math.floor(now / 60000)
  local last = tonumber(redis.call('HGET', starts, 'last') or '')
  if last == nil or minute > last then
    if last ~= nil then
      -- The minutes that leave the kept window as this one begins (at most REPORT_MINUTES of them, once a minute).
      forget_minutes(starts, math.max(last - REPORT_MINUTES + 1, 0), math.min(last, minute - REPORT_MINUTES))
    end
    redis.call('HSET', starts, 'last', minute)
  end
  if last == nil or minute > last - REPORT_MINUTES then -- (a minute already forgotten is not written again)
    redis.call('HINCRBY', starts, minute .. ':' .. outcome .. ':' .. edge, 1)
  end
  redis.call('HINCRBY', starts, outcome .. ':' .. bucket, 1)
  if outcome == 'failed' and args[3] ~= '' then
    local code = string.match(args[3], '^-?%d%d?%d?%d?%d?%d?%d?%d?%d?$') and args[3] or 'other'
    local field = 'code:' .. code
    if redis.call('HEXISTS', starts, field) == 0 then
      if tonumber(redis.call('HGET', starts, 'codes') or '0') >= MAX_CODES then
        field = 'code:other'
      end
      if redis.call('HEXISTS', starts, field) == 0 then
        redis.call('HINCRBY', starts, 'codes', 1)
      end
    end
    redis.call('HINCRBY', starts, field, 1)
  end
  redis.call('PEXPIRE', starts, REPORTS_KEPT_MS)
  return age
end

--[[
ridpool_freshen: store a pool's effective max_age (auto_max_age), decided by a daemon from the reports (see
daemon/freshness.py); pops read it from the meta hash. One decision per minute: the first replica to store one for
a minute does, the others get 'DECIDED'; a replica whose configuration is not the published one stores nothing.
KEYS[1] meta      PREFIX:{POOL}:meta
ARGV[1] fingerprint  the caller's configuration of the pool (as ridpool_publish): must be the published one
ARGV[2] minute       the minute decided (server ms / 60000)
ARGV[3] max_age_ms   the effective max_age (1 to 300000); or 'off' to remove the decision (auto_max_age false)
ARGV[4] since        the minute the value was last changed (at most `minute`)
ARGV[5] probe        '', 'younger' or 'older': what the pops' probe share does
ARGV[6] share        the share of pops that probe (0 to 1)
ARGV[7] up_to_ms     for 'older': entries up to this age may be offered to the probes (0 to 300000)
ARGV[8] hold_ms      the decision holds this long unless stored again (1 to 3600000): pops go back to the
                     configured max_age after it when no daemon decides any more
ARGV[9] reason       the decision in words (at most 1000 bytes)
Meta fields written: fresh_max_age_ms, fresh_since, fresh_minute, fresh_until (server ms), fresh_probe,
fresh_share, fresh_up_to_ms, fresh_reason.
Reply: 'STORED', 'DECIDED' (this minute was stored already), 'CONFLICT' (another configuration is published),
'CLEARED'. Errors: 'UNKNOWN_POOL ...', 'BAD_ARGUMENT ...'.
]]
local FRESH_WRITTEN = { 'fresh_max_age_ms', 'fresh_since', 'fresh_minute', 'fresh_until', 'fresh_probe',
  'fresh_share', 'fresh_up_to_ms', 'fresh_reason' }
local function freshen(keys, args)
  local bad = check_keys(keys, { ':meta' })
  if bad then
    return bad
  end
  local fingerprint, minute, off = args[1], whole(args[2], 0, 1e12), args[3] == 'off'
  local max_age, since = whole(args[3], 1, MAX_LIFE_MS), whole(args[4], 0, 1e12)
  local probe, share, up_to = args[5], tonumber(args[6] or ''), whole(args[7], 0, MAX_LIFE_MS)
  local hold_ms, reason = whole(args[8], 1, 3600000), args[9]
  if #keys ~= 1 or #args ~= 9 or not fingerprint or fingerprint == '' or not minute or not (off or max_age)
      or not since or since > minute or (probe ~= '' and probe ~= 'younger' and probe ~= 'older')
      or not share or share ~= share or share < 0 or share > 1 or not up_to or not hold_ms or #reason > 1000 then
    return redis.error_reply("BAD_ARGUMENT freshen takes the meta key and fingerprint, minute, max_age_ms (1 to "
      .. "300000, or 'off'), since (at most minute), probe ('', 'younger' or 'older'), share (0 to 1), up_to_ms, "
      .. 'hold_ms (1 to 3600000) and a reason of at most 1000 bytes')
  end
  local meta = keys[1]
  local held = redis.call('HMGET', meta, 'mode', 'fingerprint', 'fresh_minute')
  if not held[1] then
    return redis.error_reply('UNKNOWN_POOL no daemon has published this pool')
  end
  if held[2] ~= fingerprint then
    return 'CONFLICT'
  end
  if off then
    redis.call('HDEL', meta, unpack(FRESH_WRITTEN))
    return 'CLEARED'
  end
  if tonumber(held[3] or '-1') >= minute then
    return 'DECIDED'
  end
  redis.call('HSET', meta, 'fresh_max_age_ms', max_age, 'fresh_since', since, 'fresh_minute', minute,
    'fresh_until', now_ms() + hold_ms, 'fresh_probe', probe, 'fresh_share', args[6], 'fresh_up_to_ms', up_to,
    'fresh_reason', reason)
  return 'STORED'
end

-- Announcements: channels named at run time, to be ready at an instant. They hold no ID: three small keys of the
-- pool (ann: cname -> until, ann:at: cname -> at, ann:left: cname -> entries still to acquire), all expiring
-- with the last announcement's end; and ann:queues (cname -> the expiry of its newest entry) lists the channels
-- whose queues may hold entries, ended announcements included, for `status` and `stats()`.
local MAX_LEAD_MS = 7 * 24 * 3600 * 1000
local MAX_PENDING = 100000 -- announcements pending in one pool (check-config and the README say so)
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

-- Forget at most CHUNK announcements that have ended; returns how many were, and whether more have.
local function end_announcements(ann, at, left, now)
  local ended = redis.call('ZRANGEBYSCORE', ann, '-inf', now, 'LIMIT', 0, CHUNK + 1)
  local n = math.min(#ended, CHUNK)
  if n == 0 then
    return 0, false
  end
  local names = { unpack(ended, 1, n) }
  redis.call('ZREM', ann, unpack(names))
  redis.call('ZREM', at, unpack(names))
  redis.call('HDEL', left, unpack(names))
  expire_announcements(ann, at, left)
  return n, #ended > CHUNK
end

--[[
ridpool_announce: announce that channel CNAME of an `announced` pool is to be recorded at AT: the daemon
acquires COUNT entries for it to be ready then. Announcing a channel again replaces its announcement.
KEYS[1] meta      PREFIX:{POOL}:meta
KEYS[2] ann       PREFIX:{POOL}:ann
KEYS[3] ann:at    PREFIX:{POOL}:ann:at
KEYS[4] ann:left  PREFIX:{POOL}:ann:left
KEYS[5] changes   PREFIX:{POOL}:changes (the daemon's change feed)
ARGV[1] cname     the channel, checked against Agora's rules for the pool's scene
ARGV[2] at        Unix time in ms (Redis server clock), or '+MS': that many ms from now; at most 7 days ahead,
                  and an instant already past is served as soon as possible
ARGV[3] count     entries to have ready (1 to 1000)
Reply: {at ms, until ms}: the instant (server ms) and the end of the announcement (at + the pool's grace);
pops use its entries up, and one about to expire unpopped is replaced until then.
Errors: 'UNKNOWN_POOL ...', 'NOT_ANNOUNCED ...' (the pool does not take announcements), 'BAD_CNAME ...',
'BAD_ARGUMENT ...' (also when the pool already has MAX_PENDING announcements pending).
]]
local function announce(keys, args)
  local bad = check_keys(keys, { ':meta', ':ann', ':ann:at', ':ann:left', ':changes' })
  if bad then
    return bad
  end
  local meta, ann, at_key, left, changes = keys[1], keys[2], keys[3], keys[4], keys[5]
  local cname, when, count = args[1] or '', args[2] or '', whole(args[3], 1, 1000)
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
  if count == nil then
    return redis.error_reply('BAD_ARGUMENT count must be an integer from 1 to 1000')
  end
  local now = now_ms()
  local at
  if string.sub(when, 1, 1) == '+' then
    local delay = whole(string.sub(when, 2), 0, MAX_LEAD_MS)
    at = delay and now + delay
  else
    at = whole(when, 0, 1e15)
  end
  if at == nil then
    return redis.error_reply("BAD_ARGUMENT at must be Unix ms or '+ms' from now (whole, not negative)")
  end
  if at > now + MAX_LEAD_MS then
    return redis.error_reply('BAD_ARGUMENT at must be at most 7 days ahead')
  end
  end_announcements(ann, at_key, left, now)
  if redis.call('ZCARD', ann) >= MAX_PENDING and not redis.call('ZSCORE', ann, cname) then
    return redis.error_reply('BAD_ARGUMENT the pool has ' .. MAX_PENDING .. ' announcements pending, the most it '
      .. 'takes; announce again once some have ended')
  end
  local ends = math.max(at, now) + tonumber(known[3] or '300000')
  redis.call('ZADD', ann, ends, cname)
  redis.call('ZADD', at_key, at, cname)
  redis.call('HSET', left, cname, count)
  expire_announcements(ann, at_key, left)
  redis.call('ZADD', changes, now, cname)
  return { at, ends }
end

--[[
ridpool_announcements: the pending announcements of a pool whose instant falls in a window, at most CHUNK a
call, by instant (the daemon reads the ones due within its planning horizon; `status` pages through all). Reads
only: announcements that have ended are left out here and forgotten by ridpool_announce_end.
KEYS[1] ann       KEYS[2] ann:at    KEYS[3] ann:left
ARGV[1] from_ms   ARGV[2] to_ms  (the window of `at`, both included)
ARGV[3] offset    how many of the window's announcements to skip (to page through one instant's many)
ARGV[4] limit     at most CHUNK
Reply: {server now ms, announcements pending in all, entries this page read (some may have ended and are left
out: page on while this equals the limit), then cname, at ms, until ms, left, ... for this page}.
]]
local function announcements(keys, args)
  local bad = check_keys(keys, { ':ann', ':ann:at', ':ann:left' })
  if bad then
    return bad
  end
  local from, to = tonumber(args[1] or ''), tonumber(args[2] or '')
  local offset, limit = whole(args[3], 0, 1e9), whole(args[4], 1, CHUNK)
  if from == nil or to == nil or from ~= from or to ~= to or not offset or not limit then
    return redis.error_reply('BAD_ARGUMENT announcements takes from_ms, to_ms, offset and limit (1 to ' .. CHUNK .. ')')
  end
  local now = now_ms()
  local out = { now, redis.call('ZCOUNT', keys[1], '(' .. now, '+inf') }
  local found = redis.call('ZRANGEBYSCORE', keys[2], from, to, 'WITHSCORES', 'LIMIT', offset, limit)
  out[3] = #found / 2
  for i = 1, #found, 2 do
    local cname = found[i]
    local ends = tonumber(redis.call('ZSCORE', keys[1], cname) or '-1')
    if ends > now then
      out[#out + 1] = cname
      out[#out + 1] = tonumber(found[i + 1])
      out[#out + 1] = ends
      out[#out + 1] = tonumber(redis.call('HGET', keys[3], cname) or '0')
    end
  end
  return out
end

--[[
ridpool_announce_end: forget announcements that have ended, at most CHUNK a call.
KEYS[1] ann       KEYS[2] ann:at    KEYS[3] ann:left
Reply: {how many were forgotten, 1 when more have ended (call again) else 0}.
]]
local function announce_end(keys, args)
  local bad = check_keys(keys, { ':ann', ':ann:at', ':ann:left' })
  if bad then
    return bad
  end
  local n, more = end_announcements(keys[1], keys[2], keys[3], now_ms())
  return { n, more and 1 or 0 }
end

--[[
ridpool_sample: write one step (a minute) of a pool's demand history: what was added, popped, missed and
expired unused since the last sample. Counters only, never an ID. The first caller in a step writes it; any
other replica calling in the same step gets -1, so replicas need no election of their own.
KEYS[1] stats     PREFIX:{POOL}:stats
KEYS[2] history   PREFIX:{POOL}:history (hash: '<step>' -> 'added pops misses expired'; 'last', 'at:*' snapshot)
ARGV[1] step_ms       60000 (a minute); tests use shorter steps
ARGV[2] retention_ms  how long the history is kept (the key's TTL; the step that old is dropped)
ARGV[3] live          the pool's live entries now, counted by the caller with ridpool_count (a pool may have
                      more queues than one call should read)
Reply: the step written (server ms / step_ms, floored), or -1 when this step was already written.
]]
local function sample(keys, args)
  local bad = check_keys(keys, { ':stats', ':history' })
  if bad then
    return bad
  end
  local stats, history = keys[1], keys[2]
  local step, retention, live = whole(args[1], 1, 86400000), whole(args[2], 1, 1e12), whole(args[3], 0, 1e12)
  if not (step and retention and live) then
    return redis.error_reply('BAD_ARGUMENT sample takes step_ms, retention_ms and live as whole numbers')
  end
  local now = now_ms()
  local index = math.floor(now / step)
  local last = tonumber(redis.call('HGET', history, 'last') or -1)
  if last >= index then
    return -1
  end
  local c = redis.call('HMGET', stats, 'added', 'pops', 'misses', 'dropped')
  local added, pops, misses = tonumber(c[1] or 0), tonumber(c[2] or 0), tonumber(c[3] or 0)
  local current = { added, pops, misses, math.max(0, added - pops - tonumber(c[4] or 0) - live) }
  local names = { 'at:added', 'at:pops', 'at:misses', 'at:expired' }
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
ARGV[1] hold ms   whole ms, 1 to 300000 (no ID lives longer)
ARGV[2..] candidates, tried in order: 1 to 64 uids, each a whole number from 1 to 4294967295
Reply: the uid held, or '' when every candidate is taken (ask again with others).
Errors: 'BAD_ARGUMENT ...'.
]]
local MAX_UID = 4294967295
local function hold_uid(keys, args)
  local bad = check_keys(keys, {':uids'})
  if bad then
    return bad
  end
  local ms = whole(args[1], 1, MAX_LIFE_MS)
  if not ms or #args < 2 or #args > 65 then
    return redis.error_reply('BAD_ARGUMENT hold_uid takes a hold of 1 to 300000 ms and 1 to 64 candidate uids')
  end
  for i = 2, #args do
    if not whole(args[i], 1, MAX_UID) or string.find(args[i], '[^0-9]') then
      return redis.error_reply('BAD_ARGUMENT a candidate uid must be a whole number from 1 to ' .. MAX_UID)
    end
  end
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  for i = 2, #args do
    if not redis.call('ZSCORE', keys[1], args[i]) then
      redis.call('ZADD', keys[1], now + ms, args[i])
      expire_with_top(keys[1])
      return args[i]
    end
  end
  return ''
end

redis.register_function('ridpool_pop', pop)
redis.register_function('ridpool_pop_packed', pop_packed)
redis.register_function('ridpool_report', report)
redis.register_function('ridpool_freshen', freshen)
redis.register_function('ridpool_add', add)
redis.register_function('ridpool_reserve', reserve)
redis.register_function('ridpool_release', release)
redis.register_function('ridpool_sweep', sweep)
redis.register_function { function_name = 'ridpool_count', callback = count_live, flags = { 'no-writes' } }
redis.register_function('ridpool_publish', publish)
redis.register_function('ridpool_channels', publish_channels)
redis.register_function('ridpool_conflict', conflict)
redis.register_function('ridpool_take', take)
redis.register_function('ridpool_take_refills', take_refills)
redis.register_function('ridpool_cooldown', cooldown)
redis.register_function('ridpool_hold', hold)
redis.register_function('ridpool_announce', announce)
redis.register_function { function_name = 'ridpool_announcements', callback = announcements, flags = { 'no-writes' } }
redis.register_function('ridpool_announce_end', announce_end)
redis.register_function('ridpool_hold_uid', hold_uid)
redis.register_function('ridpool_sample', sample)
redis.register_function {
  function_name = 'ridpool_version',
  callback = function()
    return LIBRARY_VERSION
  end,
  flags = { 'no-writes' },
}
