-- The Mercure subscriptions registry, one node's part of it, atomically.
--
-- KEYS[1]  {prefix}subscriptions:{node}  hash: subscription id -> JSON, this node's
-- KEYS[2]  {prefix}subscription-nodes    sorted set: node -> expiry (ms)
-- ARGV[1]  node id
-- ARGV[2]  ttl in ms: the node's entries vanish this long after its last heartbeat
-- ARGV[3]  'add', 'remove' or 'alive'
-- ARGV[4..] for 'add': id, JSON, id, JSON...; for 'remove': ids
--
-- Every call is also a heartbeat, and drops nodes whose time is up from the set.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local op = ARGV[3]
if op == 'add' then
  for i = 4, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
elseif op == 'remove' then
  for i = 4, #ARGV do
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
elseif op ~= 'alive' then
  return redis.error_reply('ERR hub subscriptions: unknown operation ' .. op)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return now
