-- Publish one event to one or more channels, atomically: hand out the next hub-wide
-- id, append the event to each channel's history stream, trim that history, and
-- announce the event on each channel's live pub/sub name. Because it is one script,
-- a node that confirmed its SUBSCRIBE before reading history can never miss an event
-- between the two.
--
-- Two call forms. The short one (native publishers in any language):
--
-- KEYS[1]     {prefix}clock            hash: ms, n (last id), since (history start, ms)
-- KEYS[2..]   {prefix}stream:{channel} one per channel
-- ARGV[1]     event type ("message" unless the publisher chose one)
-- ARGV[2]     data (any bytes)
-- ARGV[3]     history size: entries kept per channel
-- ARGV[4]     history age in ms: entries older are trimmed (0: no age limit)
-- ARGV[5..]   {prefix}live:{channel}, one per stream key, in the same order
--
-- The full one (the hub's own publishers) also feeds the Mercure door: N channels,
-- KEYS = clock, N streams, {prefix}log, {prefix}mercure-ids; ARGV = the four above,
-- then [5] Mercure id chosen by the publisher ('' for none), [6] retry ('' for none),
-- [7] private ('1' or ''), [8] log size (0: the event is announced but not kept in the
-- log, as subscription events are), [9] {prefix}mercure-all (pub/sub for nodes
-- with URI-template subscribers), [10..9+N] {prefix}live:{channel},
-- [10+N..9+2N] {prefix}mercure:{channel}, [10+2N..9+3N] the channel names, and
-- optionally [10+3N] the publisher's token subject (field 's' of each history entry).
-- A private event goes to the log and the Mercure names only: the native live path
-- and per-channel history never carry it (the native API serves it from the log).
--
-- A chosen Mercure id still held by an event in the log is refused with an error reply
-- starting "HUBCONFLICT", before anything is written: otherwise one topic's publisher
-- could move another topic's subscribers' cursors.
--
-- Returns the event id "<ms>-<n>".
--
-- Live message format: "<id>\n<prev id on this channel or empty>\n<event>\n<data>".
-- Mercure message format: "<id>\n<mercure id>\n<event>\n<retry>\n<private>\n<channels,
-- space-separated>\n<data>" (channel names never contain whitespace).

local n_chan
local full = false
if #KEYS >= 2 and #ARGV == #KEYS + 3 then
  n_chan = #KEYS - 1
elseif #KEYS >= 4 and (#ARGV == 9 + 3 * (#KEYS - 3) or #ARGV == 10 + 3 * (#KEYS - 3)) then
  n_chan = #KEYS - 3
  full = true
else
  return redis.error_reply('ERR hub publish: expected clock + N stream keys and 4 + N args')
end

if full and ARGV[5] ~= '' then
  local log, ids = KEYS[n_chan + 2], KEYS[n_chan + 3]
  local taken = redis.call('HGET', ids, ARGV[5])
  if taken and #redis.call('XRANGE', log, taken, taken) > 0 then
    return redis.error_reply('HUBCONFLICT the id is already used by event ' .. taken)
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = redis.call('HMGET', KEYS[1], 'ms', 'n')
local ms = tonumber(clock[1])
local n = 0
if ms == nil then
  redis.call('HSET', KEYS[1], 'since', string.format('%d', now))
  ms = now
elseif now > ms then
  ms = now
else
  -- Same millisecond, or the clock went backwards (failover to a host with another
  -- clock): keep ids increasing.
  n = tonumber(clock[2]) + 1
end
redis.call('HSET', KEYS[1], 'ms', string.format('%d', ms), 'n', string.format('%d', n))
local id = string.format('%d-%d', ms, n)

local event, data = ARGV[1], ARGV[2]
local size = ARGV[3]
local age = tonumber(ARGV[4])
local private = full and ARGV[7] == '1'
local subject = nil
if full and #ARGV == 10 + 3 * n_chan then
  subject = ARGV[#ARGV]
end
local live_base = 4
if full then
  live_base = 9
end
if not private then
  for i = 1, n_chan do
    local key = KEYS[i + 1]
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    local prev = ''
    if last[1] then
      prev = last[1][1]
    end
    if subject then
      redis.call('XADD', key, 'MAXLEN', size, id, 'e', event, 'd', data, 'p', prev, 's', subject)
    else
      redis.call('XADD', key, 'MAXLEN', size, id, 'e', event, 'd', data, 'p', prev)
    end
    if age > 0 then
      redis.call('XTRIM', key, 'MINID', string.format('%d-0', ms - age))
      redis.call('PEXPIRE', key, string.format('%d', age))
    end
    redis.call('PUBLISH', ARGV[live_base + i], id .. '\n' .. prev .. '\n' .. event .. '\n' .. data)
  end
end

if full then
  local log, ids = KEYS[n_chan + 2], KEYS[n_chan + 3]
  local mid, retry, log_size = ARGV[5], ARGV[6], tonumber(ARGV[8])
  local names = {}
  for i = 1, n_chan do
    names[i] = ARGV[9 + 2 * n_chan + i]
  end
  -- Forget publisher-chosen ids whose events are about to be trimmed from the log.
  -- Only while some are mapped: Redis drops the hash when its last field goes, and
  -- this look at the log's head was a fifth of the script's cost (bench/redis_cost.py).
  local excess = 0
  if log_size > 0 and redis.call('EXISTS', ids) == 1 then
    excess = redis.call('XLEN', log) - log_size + 1
  end
  if excess > 0 then
    for _, entry in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', excess)) do
      local fields = entry[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'm' and fields[j + 1] ~= '' then
          if redis.call('HGET', ids, fields[j + 1]) == entry[1] then
            redis.call('HDEL', ids, fields[j + 1])
          end
        end
      end
    end
  end
  local flag = ''
  if private then
    flag = '1'
  end
  local channels = table.concat(names, ' ')
  if log_size > 0 then
    redis.call('XADD', log, 'MAXLEN', log_size, id, 'c', channels, 'e', event, 'd', data,
      'm', mid, 'r', retry, 'x', flag)
    if mid ~= '' then
      redis.call('HSET', ids, mid, id)
    end
  end
  if age > 0 and log_size > 0 then
    redis.call('XTRIM', log, 'MINID', string.format('%d-0', ms - age))
    redis.call('PEXPIRE', log, string.format('%d', age))
    redis.call('PEXPIRE', ids, string.format('%d', age))
  end
  local message = id .. '\n' .. mid .. '\n' .. event .. '\n' .. retry .. '\n' .. flag .. '\n'
    .. channels .. '\n' .. data
  for i = 1, n_chan do
    redis.call('PUBLISH', ARGV[9 + n_chan + i], message)
  end
  redis.call('PUBLISH', ARGV[9], message)
end
return id
