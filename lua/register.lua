-- register.lua: create or update a provider's shared bucket. Idempotent: the
-- same arguments twice change nothing.
--
-- KEYS[1]  config hash   <prefix>:{<provider>}:config
-- KEYS[2]  bucket hash   <prefix>:{<provider>}:bucket
-- KEYS[3]  scale hash    <prefix>:{<provider>}:scale
-- ARGV[1]  capacity             integer in [1, 1e9]: the most tokens the bucket holds
-- ARGV[2]  refill_rate          number in (0, 1e9]: base tokens per second at scale 1
-- ARGV[3]  cooldown_sec         number in [0, 86400]: default length of a cooldown
-- ARGV[4]  breaker_threshold    integer in [0, 1e6]: consecutive failures that open the breaker (0 = no breaker)
-- ARGV[5]  breaker_timeout_sec  number in (0, 86400]: how long an open breaker refuses
-- ARGV[6]  max_scale            number in [1, 100]: the highest scale set_scale accepts
--
-- Reply: status string "created", "updated" or "unchanged".
-- A new provider starts with a full bucket and scale 1. An update first
-- settles the bucket at the old rate, then caps its tokens at the new
-- capacity, and lowers a stored scale above the new max_scale to max_scale.
-- Errors: INVALID_ARGUMENT <field>=<value> must be <range>.

local names = {'capacity', 'refill_rate', 'cooldown_sec', 'breaker_threshold',
  'breaker_timeout_sec', 'max_scale'}
local v = {}
for i, name in ipairs(names) do
  v[name] = num(ARGV[i])
end

local function whole(x) return x ~= nil and x == math.floor(x) end

if not (whole(v.capacity) and v.capacity >= 1 and v.capacity <= 1e9) then
  return invalid('capacity', ARGV[1], 'an integer in [1, 1000000000]')
end
if not (finite(v.refill_rate) and v.refill_rate > 0 and v.refill_rate <= 1e9) then
  return invalid('refill_rate', ARGV[2], 'a number in (0, 1000000000]')
end
if not (finite(v.cooldown_sec) and v.cooldown_sec >= 0 and v.cooldown_sec <= 86400) then
  return invalid('cooldown_sec', ARGV[3], 'a number in [0, 86400]')
end
if not (whole(v.breaker_threshold) and v.breaker_threshold >= 0 and v.breaker_threshold <= 1e6) then
  return invalid('breaker_threshold', ARGV[4], 'an integer in [0, 1000000]')
end
if not (finite(v.breaker_timeout_sec) and v.breaker_timeout_sec > 0 and v.breaker_timeout_sec <= 86400) then
  return invalid('breaker_timeout_sec', ARGV[5], 'a number in (0, 86400]')
end
if not (finite(v.max_scale) and v.max_scale >= 1 and v.max_scale <= 100) then
  return invalid('max_scale', ARGV[6], 'a number in [1, 100]')
end

local now = now_us()
-- A corrupt stored config or scale is replaced: the bucket settles without
-- refill (never more than it held). A corrupt scale stays for the operator
-- to set (acquire refuses to decide on it).
local old, corrupt_config = load_config(KEYS[1])
local scale = load_scale(KEYS[3])
local result = 'created'

if corrupt_config then
  local tokens = settle(KEYS[2], now, v.capacity, 0, 0)
  store_bucket(KEYS[2], math.min(tokens, v.capacity), now)
  result = 'updated'
elseif old == nil then
  store_bucket(KEYS[2], v.capacity, now)
else
  local same = true
  for _, name in ipairs(names) do
    if old[name] ~= v[name] then same = false end
  end
  if same then
    return {ok = 'unchanged'}
  end
  local tokens = settle(KEYS[2], now, old.capacity, old.refill_rate, scale or 0)
  if tokens > v.capacity then tokens = v.capacity end
  store_bucket(KEYS[2], tokens, now)
  result = 'updated'
end

local args = {'HSET', KEYS[1]}
for i, name in ipairs(names) do
  table.insert(args, name)
  table.insert(args, dec(v[name])) -- as parsed: " 50" or "5e1" is stored as 50
end
redis.call(unpack(args))

if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'scale', '1', 'level', 'ok', 'source', 'register',
    'seq', '0', 'updated_at', int(now))
elseif scale and scale > v.max_scale then
  redis.call('HSET', KEYS[3], 'scale', ARGV[6], 'source', 'register', 'updated_at', int(now))
  redis.call('HINCRBY', KEYS[3], 'seq', 1)
end
return {ok = result}
