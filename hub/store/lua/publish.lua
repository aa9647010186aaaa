-- Publish one event to one or more channels, atomically: append it to each channel's
-- history stream and announce it on each channel's live pub/sub name. Because it is one
-- script, a node that confirmed its SUBSCRIBE before reading history can never miss an
-- event between the two. On a Redis Cluster a call names the channels of ONE partition
-- (one hash slot), and an event of several partitions is one call per partition; on a
-- Redis that is not a cluster (where slots mean nothing) it is one call for all.
--
-- Nothing here is shared with publishes to other partitions: no clock, no log. An event
-- of one channel takes its id from XADD * (the server's clock, after the stream's last
-- id); an event of several channels takes the first id after now and after each of their
-- last ids, and is stored under that same id in each (hub/store/ids.py says how ids of
-- different channels are ordered).
--
-- KEYS[1..n]      {prefix}{<tag>}:s:{channel}, one per channel
-- KEYS[n+1..2n]   {prefix}{<tag>}:trimmed of each channel's partition (hash: channel ->
--                 newest trimmed id)
-- KEYS[2n+1..3n]  {prefix}{<tag>}:index of each (sorted set: channel -> a time after its
--                 newest event)
-- KEYS[3n+1..4n]  {prefix}{<tag>}:ids of each (hash: chosen Mercure id -> event id)
-- ARGV[1]     the live message between its id and its data: "<flags>\n<event>\n
--             <channels>\n<origin>\n<mercure id>\n<retry>\n" (hub/store/records.py)
-- ARGV[2]     event type
-- ARGV[3]     data
-- ARGV[4..3+n] {prefix}{<tag>}:l:{channel}, in the order of KEYS
-- One channel and no options but ``fire`` (the common case) may pass its history key
-- alone: KEYS is then that one key, and ARGV the same arguments.
-- then, only when they apply, option names and values:
--   c      the event's channels, space-separated (history field c)
--   o      "<part> <token>" of an event whose channels span partitions (field o)
--   m, k   a publisher-chosen Mercure id (field m; refused with an error starting
--          HUBCONFLICT while the partition maps it to another event), and the key
--          suffix (".<h>") of its event id, for the ids hash
--   r, x, s  retry, private ("1"), the publisher's token subject (fields r, x, s)
--   ttl    ms: history expires after this long without a publish
--   names  the channels, space-separated (with trim and idx)
--   trim   N: trim each history to its newest N events now, noting the newest trimmed
--          id in the trimmed hash (publishers ask every so many publishes, not each)
--   idx    W (ms): score each channel in the index at the event's time + W
--   fire   a pub/sub name that gets every event (a cluster's {prefix}{<tag>}:all)
--   kept   "0": announce the event live but keep it in no history (the Mercure
--          subscription events: one channel per subscription would pile up keys); its
--          id comes from the server's clock
--   after  "<ms>-<seq>": the id may be no smaller than this (a part of an event of
--          several partitions comes at or after the part published before it)
--
-- Returns the entry id "<ms>-<seq>".
--
-- Called with ARGV "batch", F, then four per event (head, type, data, live name) and
-- KEYS each event's history stream (one slot), it publishes several events of one
-- channel each and no options, as the fast path would one by one: F is the firehose
-- they also go to, or "". Returns each event's id, or its error, in order.
--
-- Called with ARGV "raise", "<ms>-<seq>" and KEYS history streams of one slot, it
-- raises each stream's last generated id to that id if it is below it, so that the
-- streams' next events come after it (hub/store/parts.py says why). Returns 1.

local head, event, data = ARGV[1], ARGV[2], ARGV[3]

local fast = #ARGV == 4 or (#ARGV == 6 and ARGV[5] == 'fire')
if fast and (#KEYS == 1 or #KEYS == 4) then
  -- The common case: one channel, no options but a cluster's firehose. As few calls as
  -- the job allows.
  local id = redis.call('XADD', KEYS[1], '*', 'e', event, 'd', data)
  local message = id .. '\n' .. head .. data
  redis.call('PUBLISH', ARGV[4], message)
  if ARGV[6] then
    redis.call('PUBLISH', ARGV[6], message)
  end
  return id
end
if ARGV[1] == 'batch' then
  -- The fast path for each event. An event that fails (a key of another type) gets its
  -- error in its place, and the others still go, as they would one call each.
  local fire = ARGV[2]
  local ids = {}
  for i = 1, #KEYS do
    local at = 4 * i - 1
    local id = redis.pcall('XADD', KEYS[i], '*', 'e', ARGV[at + 1], 'd', ARGV[at + 2])
    if type(id) == 'string' then
      local message = id .. '\n' .. ARGV[at] .. ARGV[at + 2]
      redis.call('PUBLISH', ARGV[at + 3], message)
      if fire ~= '' then
        redis.call('PUBLISH', fire, message)
      end
    end
    ids[i] = id
  end
  return ids
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- The newest id a stream handed out (its newest entry's, or higher after a raise),
-- or nil for a stream that does not exist.
local function last_generated(key)
  if redis.call('EXISTS', key) == 0 then
    return nil
  end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
  return nil
end

if ARGV[1] == 'raise' and #ARGV == 2 then
  local ms, seq = parse(ARGV[2])
  for i = 1, #KEYS do
    local last = last_generated(KEYS[i])
    if last then
      local lms, lseq = parse(last)
      if lms < ms or (lms == ms and lseq < seq) then
        redis.call('XSETID', KEYS[i], ARGV[2])
      end
    end
  end
  return 1
end

local n = #KEYS / 4
if n < 1 or n % 1 ~= 0 or #ARGV < 3 + n or (#ARGV - 3 - n) % 2 ~= 0 then
  return redis.error_reply('ERR hub publish: expected 4 keys per channel, and 3 + N args + options')
end

local opt = {}
for i = 4 + n, #ARGV, 2 do
  opt[ARGV[i]] = ARGV[i + 1]
end
if opt.m then
  for i = 1, n do
    local held = redis.call('HGET', KEYS[3 * n + i], opt.m)
    if held then
      return redis.error_reply('HUBCONFLICT the id is already used by event ' .. held)
    end
  end
end

local fields = {'e', event, 'd', data}
for _, name in ipairs({'c', 'o', 'm', 'r', 'x', 's'}) do
  if opt[name] then
    fields[#fields + 1] = name
    fields[#fields + 1] = opt[name]
  end
end

local id
if opt.kept == '0' then
  local t = redis.call('TIME')
  id = string.format('%d-%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[2]) % 1000)
elseif n == 1 and not opt.after then
  id = redis.call('XADD', KEYS[1], '*', unpack(fields))
else
  -- One id for every channel: at or after now and the floor, and after each stream's
  -- last generated id.
  local t = redis.call('TIME')
  local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 0
  if opt.after then
    local fms, fseq = parse(opt.after)
    if fms > ms or (fms == ms and fseq > seq) then
      ms, seq = fms, fseq
    end
  end
  for i = 1, n do
    local last = last_generated(KEYS[i])
    if last then
      local lms, lseq = parse(last)
      if lms > ms or (lms == ms and lseq >= seq) then
        ms, seq = lms, lseq + 1
      end
    end
  end
  id = string.format('%d-%d', ms, seq)
  for i = 1, n do
    redis.call('XADD', KEYS[i], id, unpack(fields))
  end
end

local message = id .. '\n' .. head .. data
for i = 1, n do
  redis.call('PUBLISH', ARGV[3 + i], message)
end
if opt.fire then
  redis.call('PUBLISH', opt.fire, message)
end

if opt.kept == '0' then
  return id
end

local ttl = tonumber(opt.ttl or '0')
if ttl > 0 then
  for i = 1, n do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
if opt.m then
  for i = 1, n do
    redis.call('HSET', KEYS[3 * n + i], opt.m, id .. opt.k)
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[3 * n + i], ttl)
    end
  end
end

local names = {}
if opt.names then
  for name in string.gmatch(opt.names, '%S+') do
    names[#names + 1] = name
  end
end

if opt.idx then
  local score = parse(id) + tonumber(opt.idx)
  for i = 1, #names do
    redis.call('ZADD', KEYS[2 * n + i], 'GT', score, names[i])
  end
end

if opt.trim then
  local keep = tonumber(opt.trim)
  local now_ms = nil
  if ttl > 0 then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  for i = 1, n do
    local key, trimmed, ids = KEYS[i], KEYS[n + i], KEYS[3 * n + i]
    local mapped = redis.call('EXISTS', ids) == 1
    local len = redis.call('XLEN', key)
    local old = {}
    if len > keep then
      old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - keep)
    end
    if now_ms then
      -- Age as well as count: whichever trims more (both are prefixes of the stream).
      local stale = redis.call('XRANGE', key, '-', string.format('(%d-0', now_ms - ttl), 'COUNT', len)
      if #stale > #old then
        old = stale
      end
    end
    if #old > 0 then
      local last = old[#old]
      local lms, lseq = parse(last[1])
      redis.call('XTRIM', key, 'MINID', string.format('%d-%d', lms, lseq + 1))
      -- The trimmed event's first channel gives the rest of its id (its key's h).
      local first = names[i]
      for j = 1, #last[2], 2 do
        if last[2][j] == 'c' then
          first = string.match(last[2][j + 1], '^%S+')
        end
      end
      redis.call('HSET', trimmed, names[i], last[1] .. ' ' .. first)
      if mapped then
        -- Chosen ids of trimmed events are free again.
        for _, entry in ipairs(old) do
          local f = entry[2]
          for j = 1, #f, 2 do
            if f[j] == 'm' then
              local held = redis.call('HGET', ids, f[j + 1])
              if held and string.sub(held, 1, #entry[1] + 1) == entry[1] .. '.' then
                redis.call('HDEL', ids, f[j + 1])
              end
            end
          end
        end
      end
    end
  end
end
return id
