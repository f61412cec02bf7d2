-- heartbeat.lua: a pipeline replica says it is alive (or leaving) and learns
-- how many replicas share the provider now.
--
-- KEYS[1]  replicas sorted set   <prefix>:replicas:{<provider>}
--                                member = replica id, score = expiry (Unix ms, Redis time)
-- ARGV[1]  op         beat | leave
-- ARGV[2]  replica    replica id (non-empty)
-- ARGV[3]  ttl_ms     integer in [1, 3600000]: how long this beat keeps the replica live
--
-- Expired members are removed first; the key itself expires ttl_ms after the
-- last beat, so a provider nobody uses leaves nothing behind.
-- Reply: integer, live replicas after the call.
-- Errors: INVALID_ARGUMENT op|replica|ttl_ms=<value> ...

local op, id, ttl = ARGV[1], ARGV[2], num(ARGV[3])
if op ~= 'beat' and op ~= 'leave' then
  return invalid('op', op, 'one of beat, leave')
end
if id == nil or id == '' then
  return invalid('replica', '', 'a non-empty id')
end
if not (ttl ~= nil and ttl == math.floor(ttl) and ttl >= 1 and ttl <= 3600000) then
  return invalid('ttl_ms', ARGV[3], 'an integer in [1, 3600000]')
end
local now_ms = math.floor(now_us() / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now_ms))
if op == 'leave' then
  redis.call('ZREM', KEYS[1], id)
else
  redis.call('ZADD', KEYS[1], int(now_ms + ttl), id)
  redis.call('PEXPIRE', KEYS[1], int(ttl))
end
return redis.call('ZCARD', KEYS[1])
