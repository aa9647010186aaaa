-- Publish one event to one or more channels, atomically: hand out the next hub-wide
-- id, append the event to each channel's history stream, trim that history, and
-- announce the event on each channel's live pub/sub name. Because it is one script,
-- a node that confirmed its SUBSCRIBE before reading history can never miss an event
-- between the two.
--
-- KEYS[1]     {prefix}clock            hash: ms, n (last id), since (history start, ms)
-- KEYS[2..]   {prefix}stream:{channel} one per channel
-- ARGV[1]     event type ("message" unless the publisher chose one)
-- ARGV[2]     data (any bytes)
-- ARGV[3]     history size: entries kept per channel
-- ARGV[4]     history age in ms: entries older are trimmed (0: no age limit)
-- ARGV[5..]   {prefix}live:{channel}, one per stream key, in the same order
-- Returns the event id "<ms>-<n>".
--
-- Live message format: "<id>\n<prev id on this channel or empty>\n<event>\n<data>".

if #KEYS < 2 or #ARGV ~= #KEYS + 3 then
  return redis.error_reply('ERR hub publish: expected clock + N stream keys and 4 + N args')
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
for i = 2, #KEYS do
  local key = KEYS[i]
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  local prev = ''
  if last[1] then
    prev = last[1][1]
  end
  redis.call('XADD', key, 'MAXLEN', size, id, 'e', event, 'd', data, 'p', prev)
  if age > 0 then
    redis.call('XTRIM', key, 'MINID', string.format('%d-0', ms - age))
    redis.call('PEXPIRE', key, string.format('%d', age))
  end
  redis.call('PUBLISH', ARGV[i + 3], id .. '\n' .. prev .. '\n' .. event .. '\n' .. data)
end
return id
