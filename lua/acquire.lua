-- acquire.lua: take n tokens from a provider's shared bucket, or say why not
-- and for how long. One call is the whole decision: config, cooldown, breaker,
-- scale and bucket are read and updated atomically, at Redis time.
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash    <prefix>:{<provider>}:bucket
-- KEYS[3]  scale hash     <prefix>:{<provider>}:scale
-- KEYS[4]  breaker hash   <prefix>:{<provider>}:breaker
-- KEYS[5]  cooldown key   <prefix>:{<provider>}:cooldown
-- ARGV[1]  n              integer in [1, 1e9]: tokens wanted
--
-- Reply: array of 10
--   [1] allowed         integer 1 or 0
--   [2] tokens          string: tokens left in the bucket after this decision
--   [3] retry_after_us  integer: 0 when allowed; -1 when no wait will do
--                       (paused, or n > capacity); else microseconds to wait
--   [4] scale           string: the scale factor in force
--   [5] reason          ok | probe | rate_limited | paused | cooldown |
--                       circuit_open | exceeds_capacity
--   [6] level           string: pressure level in the scale hash (ok/soft/hard)
--   [7] capacity        string
--   [8] refill_rate     string: the base rate (not scaled)
--   [9] breaker         closed | open | half_open (after this decision)
--   [10] now_us         integer: Redis time of the decision
--
-- Order of checks: n > capacity, cooldown, breaker, pause (scale 0: no grant,
-- not even from banked tokens), tokens. A grant while the breaker's timeout has
-- passed is the half-open probe (reason "probe"): the breaker becomes half_open
-- and refuses everyone else until the probe is reported (breaker.lua) or
-- breaker_timeout_sec passes again. A denial writes nothing, except to move
-- the bucket's ts back to now when Redis's clock went backwards.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT n=<value> ...

local n = tonumber(ARGV[1])
if not (n ~= nil and n == math.floor(n) and n >= 1 and n <= 1e9) then
  return invalid('n', ARGV[1], 'an integer in [1, 1000000000]')
end
local cfg = load_config(KEYS[1])
if cfg == nil then
  return unknown_provider(KEYS[1])
end

local now = now_us()
local sh = redis.call('HMGET', KEYS[3], 'scale', 'level')
local scale = tonumber(sh[1]) or 1
local level = sh[2] or 'ok'
local br = redis.call('HMGET', KEYS[4], 'state', 'opened_at', 'probe_until')
local state = br[1] or 'closed'

local function reply(allowed, tokens, retry, reason)
  return {allowed, dec(tokens), retry, dec(scale), reason, level,
    dec(cfg.capacity), dec(cfg.refill_rate), state, now}
end

local tokens, behind = settle(KEYS[2], now, cfg.capacity, cfg.refill_rate, scale)
if behind then
  store_bucket(KEYS[2], tokens, now)
end

if n > cfg.capacity then
  return reply(0, tokens, -1, 'exceeds_capacity')
end

local cd = redis.call('GET', KEYS[5])
if cd then
  local ok, c = pcall(cjson.decode, cd)
  local until_us = ok and type(c) == 'table' and tonumber(c.until_ms) and tonumber(c.until_ms) * 1000
  if until_us and until_us > now then
    return reply(0, tokens, math.ceil(until_us - now), 'cooldown')
  end
end

local probe = false
local timeout_us = cfg.breaker_timeout_sec * 1000000
if state == 'open' then
  local reopen = (tonumber(br[2]) or 0) + timeout_us
  if reopen > now then
    return reply(0, tokens, math.ceil(reopen - now), 'circuit_open')
  end
  probe = true
elseif state == 'half_open' then
  local probe_until = tonumber(br[3]) or 0
  if probe_until > now then
    return reply(0, tokens, math.ceil(probe_until - now), 'circuit_open')
  end
  probe = true
end

if scale <= 0 then
  return reply(0, tokens, -1, 'paused')
end

if tokens < n then
  local rate = cfg.refill_rate * scale
  return reply(0, tokens, math.ceil((n - tokens) * 1000000 / rate), 'rate_limited')
end

tokens = tokens - n
store_bucket(KEYS[2], tokens, now)
if probe then
  state = 'half_open'
  redis.call('HSET', KEYS[4], 'state', state, 'probe_until', int(now + timeout_us))
  return reply(1, tokens, 0, 'probe')
end
return reply(1, tokens, 0, 'ok')
