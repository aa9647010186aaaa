-- Record that this Redis lost events: ids in (after, upto] were delivered live by a
-- node but are not in the history any more (an asynchronous-replication failover).
-- Several nodes may report the same loss, or later losses: the range only widens.
--
-- KEYS[1]   {prefix}clock   hash: lost_after, lost_upto (ids "<ms>-<n>")
-- ARGV[1]   after: the newest id this Redis still had
-- ARGV[2]   upto: the newest id the reporting node had seen
-- Returns the recorded range {after, upto}.

local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  if ms == nil then
    return nil
  end
  return {tonumber(ms), tonumber(n)}
end

local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local after, upto = ARGV[1], ARGV[2]
if parse(after) == nil or parse(upto) == nil then
  return redis.error_reply('ERR hub lost: ids must look like <ms>-<n>')
end
local known = redis.call('HMGET', KEYS[1], 'lost_after', 'lost_upto')
if known[1] and parse(known[1]) and less(parse(known[1]), parse(after)) then
  after = known[1]
end
if known[2] and parse(known[2]) and less(parse(upto), parse(known[2])) then
  upto = known[2]
end
redis.call('HSET', KEYS[1], 'lost_after', after, 'lost_upto', upto)
return {after, upto}
