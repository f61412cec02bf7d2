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
-- ARGV[4]  expect        optional compare-and-set: a number; the scale is set only
--                        if the scale in force equals it (absent or "" = always set)
--
-- Reply: array of 7
--   [1] old scale (string: the scale in force before the call)  [2] new scale
--   (string: in force after it)  [3] changed (1|0)
--   [4] seq (integer, +1 on every change)  [5] tokens at the change (string)
--   [6] now_us (integer, Redis time of the call)
--   [7] updated_at (integer, Redis µs of the last change of the scale in force
--       after the call; 0 = never set)
-- Setting the scale already in force writes nothing and publishes nothing.
-- An expect other than the scale in force (a conflict) writes nothing: the
-- reply has new = old, changed 0. So ARGV[1] = ARGV[4] is a read.
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT scale=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local new = num(ARGV[1])
if not (finite(new) and new >= 0 and new <= cfg.max_scale) then
  return invalid('scale', ARGV[1], 'a finite number in [0, ' .. dec(cfg.max_scale) .. '] (max_scale)')
end
local expect = nil
if ARGV[4] and ARGV[4] ~= '' then
  expect = num(ARGV[4])
  if not finite(expect) then
    return invalid('expect', ARGV[4], 'a finite number (the scale in force to compare with), or "" for none')
  end
end

local now = now_us()
-- A corrupt stored scale is repaired: the bucket settles without refill
-- (never more than it held), then the new scale is written.
local old, corrupt_scale = load_scale(KEYS[3])
old = old or 0
local tokens, behind = settle(KEYS[2], now, cfg.capacity, cfg.refill_rate, old)
local stored = redis.call('HMGET', KEYS[3], 'seq', 'updated_at')
local seq = num(stored[1]) or 0
local updated = int(num(stored[2]) or 0)
if expect ~= nil and expect ~= old then
  return {dec(old), dec(old), 0, seq, dec(tokens), now, updated}
end
if old == new and not corrupt_scale and not behind then
  return {dec(old), dec(new), 0, seq, dec(tokens), now, updated}
end

store_bucket(KEYS[2], tokens, now)
seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HSET', KEYS[3], 'scale', dec(new), 'source', ARGV[2], 'updated_at', int(now))
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], 'scale ' .. dec(new))
end
return {dec(old), dec(new), 1, seq, dec(tokens), now, int(now)}
