-- Spend one unit of a rate allowance (HUB_PUBLISH_RATE): a token bucket kept as GCRA's
-- one number, the "theoretical arrival time" of the next unit, on Redis' own clock so
-- that every node counts alike. A burst of `count` units, then one per `interval`.
--
-- KEYS[1]   {prefix}rate:{who}   string: that time, in ms (expires once it has passed)
-- ARGV[1]   interval: ms per unit (the period divided by the count)
-- ARGV[2]   tolerance: ms of burst ((count - 1) * interval)
-- ARGV[3]   units to spend at once (a batch of events; 1 if absent)
-- Returns 0 when the units were spent, else the ms to wait before they will be.

local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local units = tonumber(ARGV[3] or '1')
if interval == nil or tolerance == nil or units == nil or interval <= 0 or tolerance < 0
    or units < 1 then
  return redis.error_reply('ERR hub rate: interval, tolerance and units must be numbers')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then
  tat = now
end
tat = tat + interval * units
local allowed_at = tat - tolerance - interval
if now < allowed_at then
  return math.ceil(allowed_at - now)
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
return 0
