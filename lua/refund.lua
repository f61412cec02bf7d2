-- refund.lua: put tokens that a process took with acquire but did not use
-- back into the provider's shared bucket (pkg/limiter's token lease returns
-- what is left of a lease this way). The bucket is refilled to now first and
-- never holds more than its capacity, so a refund can only give back what
-- was taken: the bound "granted <= capacity + refill" still holds.
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash    <prefix>:{<provider>}:bucket
-- KEYS[3]  scale hash     <prefix>:{<provider>}:scale
-- ARGV[1]  n              integer in [1, 1e9]: tokens to put back
--
-- Reply: string, the tokens in the bucket after the refund.
-- Errors: UNKNOWN_PROVIDER <config key>; CORRUPT ... (capacity, refill_rate
-- or scale not a number); INVALID_ARGUMENT n=<value> ...

local n = num(ARGV[1])
if not (n ~= nil and n % 1 == 0 and n >= 1 and n <= 1e9) then
  return invalid('n', ARGV[1], 'an integer in [1, 1000000000]')
end
local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local scale, bad_scale = load_scale(KEYS[3])
if bad_scale then
  return bad_scale
end
local now = now_us()
local tokens = settle(KEYS[2], now, cfg.capacity, cfg.refill_rate, scale)
tokens = math.min(cfg.capacity, tokens + n)
store_bucket(KEYS[2], tokens, now)
return dec(tokens)
