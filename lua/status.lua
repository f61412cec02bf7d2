-- status.lua: one consistent snapshot of a provider, for inspection. Writes nothing.
--
-- KEYS[1]  config hash    KEYS[2]  bucket hash    KEYS[3]  scale hash
-- KEYS[4]  breaker hash   KEYS[5]  cooldown key   KEYS[6]  replicas sorted set
-- (key names as in acquire.lua and heartbeat.lua)
--
-- Reply: array of 8
--   [1] now_us (integer, Redis time)
--   [2] config  field/value pairs (HGETALL)
--   [3] scale   field/value pairs (HGETALL)
--   [4] breaker field/value pairs (HGETALL; empty = closed, no failures)
--   [5] cooldown JSON string, or "" when none
--   [6] live replicas: flat id/expiry_ms pairs
--   [7] tokens now (string): the bucket settled at the current scale
--   [8] bucket field/value pairs (HGETALL, as stored)
-- Errors: UNKNOWN_PROVIDER <config key>.

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local now = now_us()
local scale, bad_scale = load_scale(KEYS[3])
if bad_scale then
  return bad_scale
end
local tokens = settle(KEYS[2], now, cfg.capacity, cfg.refill_rate, scale)
local live = redis.call('ZRANGEBYSCORE', KEYS[6], '(' .. int(math.floor(now / 1000)), '+inf', 'WITHSCORES')
return {now, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]), redis.call('GET', KEYS[5]) or '', live, dec(tokens),
  redis.call('HGETALL', KEYS[2])}
