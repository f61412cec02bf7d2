-- set_scale.lua: change a provider's scale factor for every replica. The
-- bucket is first settled at the old scale up to now, then the new scale is
-- stored, so a change never applies retroactively. Capacity is not scaled.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash   <prefix>:{<provider>}:bucket
-- KEYS[3]  scale hash    <prefix>:{<provider>}:scale
-- ARGV[1]  scale         number in [0, max_scale]; 0 pauses the provider
-- ARGV[2]  source        free text stored as the scale hash's "source" (who changed it)
-- ARGV[3]  channel       pub/sub channel told "scale <new>" when the scale changed
--                        ("" = publish nothing); waiters paused at scale 0 listen there
--
-- Reply: array of 6
--   [1] old scale (string)  [2] new scale (string)  [3] changed (1|0)
--   [4] seq (integer, +1 on every change)  [5] tokens at the change (string)
--   [6] now_us (integer, Redis time of the call)
-- Setting the scale already in force writes nothing and publishes nothing.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT scale=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local new = num(ARGV[1])
if not (finite(new) and new >= 0 and new <= cfg.max_scale) then
  return invalid('scale', ARGV[1], 'a finite number in [0, ' .. dec(cfg.max_scale) .. '] (max_scale)')
end

local now = now_us()
-- A corrupt stored scale is repaired: the bucket settles without refill
-- (never more than it held), then the new scale is written.
local old, corrupt_scale = load_scale(KEYS[3])
old = old or 0
local tokens, behind = settle(KEYS[2], now, cfg.capacity, cfg.refill_rate, old)
local seq = num(redis.call('HGET', KEYS[3], 'seq')) or 0
if old == new and not corrupt_scale and not behind then
  return {dec(old), dec(new), 0, seq, dec(tokens), now}
end

store_bucket(KEYS[2], tokens, now)
seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HSET', KEYS[3], 'scale', dec(new), 'source', ARGV[2], 'updated_at', int(now))
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], 'scale ' .. dec(new))
end
return {dec(old), dec(new), 1, seq, dec(tokens), now}
