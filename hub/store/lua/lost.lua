-- Record that a channel's events were lost: ids in (after, upto] were delivered live by
-- a node but are not in the channel's history any more (an asynchronous-replication
-- failover). Several nodes may report the same loss, or later ones: the range only
-- widens. The stream's last id moves up to upto's, so that the events published from
-- now on get ids after every id a client may hold (a new master's clock may be behind).
--
-- KEYS[1]   {prefix}{<tag>}:lost        hash: channel -> "<after> <upto>" (event ids)
-- KEYS[2]   {prefix}{<tag>}:s:{channel} the channel's stream
-- ARGV[1]   the channel
-- ARGV[2]   after: the newest id this Redis still had ("<ms>-<seq>.<h>")
-- ARGV[3]   upto: the newest id the reporting node had seen
-- Returns the recorded range "<after> <upto>".

local function parse(id)
  local ms, seq, h = string.match(id, '^(%d+)-(%d+)%.([0-9a-z]+)$')
  if ms == nil then
    return nil
  end
  return {tonumber(ms), tonumber(seq), tonumber(h, 36) or 0, ms .. '-' .. seq}
end

local function less(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end

local channel, after, upto = ARGV[1], ARGV[2], ARGV[3]
if parse(after) == nil or parse(upto) == nil then
  return redis.error_reply('ERR hub lost: ids must look like <ms>-<seq>.<h>')
end
local known = redis.call('HGET', KEYS[1], channel)
if known then
  local ka, ku = string.match(known, '^(%S+) (%S+)$')
  if ka and parse(ka) and less(parse(ka), parse(after)) then
    after = ka
  end
  if ku and parse(ku) and less(parse(upto), parse(ku)) then
    upto = ku
  end
end
redis.call('HSET', KEYS[1], channel, after .. ' ' .. upto)
-- An entry at the fence, deleted at once: the stream keeps the fence as its last id.
-- (Refused when the stream is past it already: nothing to do then.)
local fence = parse(upto)[4]
local added = redis.pcall('XADD', KEYS[2], fence, 'e', 'hub.fence', 'd', '')
if type(added) ~= 'table' then
  redis.call('XDEL', KEYS[2], fence)
end
return after .. ' ' .. upto
