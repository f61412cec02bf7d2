-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.

-- now_us returns the Redis server time in microseconds since the Unix epoch,
-- and the same as a decimal string (what int would write, made by joining
-- TIME's two strings: formatting a number costs a call into C).
-- Replicas' clocks are never used, so skewed pods cannot cheat.
local function now_us()
  local t = redis.call('TIME')
  local us = t[2]
  if #us < 6 then
    us = ('00000'):sub(#us) .. us
  end
  return t[1] * 1000000 + t[2], t[1] .. us -- arithmetic reads the digit strings: no tonumber calls
end

-- int formats a whole number without exponent (tostring would print 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end

-- dec formats a number with 15 significant digits; a whole one (a full
-- bucket's tokens, say) as an integer, which is what %.15g writes for it
-- too, at a third of the cost.
local function dec(x)
  if x % 1 == 0 and x > -1e15 and x < 1e15 then
    return string.format('%d', x)
  end
  return string.format('%.15g', x)
end

-- finite reports whether x is a number that is neither NaN nor infinite.
-- (x - x is 0 for every finite x, NaN for infinities; math.huge is not
-- infinite in every interpreter: gopher-lua, which miniredis runs, makes it
-- the largest float.)
local function finite(x)
  return type(x) == 'number' and x - x == 0
end

-- num parses a number strictly: an optional minus sign, decimal digits with
-- an optional fraction and exponent (what dec and int write, and what any
-- client's decimal formatting writes). Hex, spaces, underscores, nan and
-- inf are nil, and so is a number too large to be finite; so is nil or
-- false (a missing field). s is a string, nil or false.
--
-- It runs on every number acquire reads, so it makes two calls into C (a
-- call into C costs about as much as a dozen lines of Lua here): one
-- pattern keeps out what tonumber would read besides decimals (hex needs
-- an x, inf and nan letters; spaces are not allowed), and tonumber refuses
-- what the pattern lets through that is not a number ("1.2.3", "1e").
local function num(s)
  if not s or not s:find('^%-?[%d.][%d.eE+-]*$') then
    return nil
  end
  local x = tonumber(s)
  if x == nil then -- an interpreter without exponents in tonumber (gopher-lua)
    local m, e = s:match('^(%-?%d*%.?%d*)[eE]([+-]?%d+)$')
    x = m and tonumber(m) and tonumber(m) * 10 ^ tonumber(e)
  end
  if x and x - x == 0 then -- finite
    return x
  end
  return nil
end

-- guard reads a number that a script wrote (acquire, register, set_scale,
-- each of which writes decimals only, checked by num on the way in), once
-- per call on the hot path: tonumber alone, and nil unless the result is
-- finite. It does not check the spelling, as num does: a hand-written hex
-- or space-padded value reads as the number it spells (a call into C
-- less: the pattern costs more than tonumber). nan, inf, 1e999, words and
-- the empty string are nil, and so is nil or false (a missing field); the
-- caller checks the range. s is a string, nil or false.
local function guard(s)
  local x = tonumber(s)
  if x == nil then
    return s and num(s) or nil -- an interpreter without exponents in tonumber (gopher-lua)
  end
  if x - x == 0 then -- finite
    return x
  end
  return nil
end

-- corrupt is the error for a stored field that is not a number any more
-- (or, with hint, not what hint says): the script refuses to decide on it
-- (it never widens the budget).
local function corrupt(key, field, value, hint)
  return redis.error_reply('CORRUPT ' .. key .. ' ' .. field .. '=' .. tostring(value) .. (hint or
    ' is not a finite decimal number in its range: set it again (sluice register / sluice scale) or delete the key'))
end

local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end


-- load_config reads the provider config hash: nil when the provider is not
-- registered; nil and a CORRUPT error reply when a field is not a number.
local function load_config(key)
  local c = redis.call('HMGET', key, 'capacity', 'refill_rate', 'cooldown_sec',
    'breaker_threshold', 'breaker_timeout_sec', 'max_scale')
  if not c[1] then
    return nil
  end
  local names = {'capacity', 'refill_rate', 'cooldown_sec', 'breaker_threshold', 'breaker_timeout_sec', 'max_scale'}
  local defaults = {nil, nil, 0, 0, 0, 1}
  local v = {}
  for i, name in ipairs(names) do
    if c[i] then
      v[name] = num(c[i])
      if v[name] == nil then
        return nil, corrupt(key, name, c[i])
      end
    elseif defaults[i] == nil then
      return nil, corrupt(key, name, '(missing)')
    else
      v[name] = defaults[i]
    end
  end
  return v
end


-- load_scale returns the stored scale factor (1 when the hash or the field
-- is absent), or nil and a CORRUPT error reply when it is not a number.
local function load_scale(key)
  local raw = redis.call('HGET', key, 'scale')
  if not raw then
    return 1
  end
  local s = num(raw)
  if s == nil then
    return nil, corrupt(key, 'scale', raw)
  end
  return s
end

-- settle returns the bucket's tokens at now: the stored tokens plus refill at
-- rate * scale per second since ts, capped at capacity. A missing bucket is
-- full; a corrupt one (tokens or ts not a number) is empty at now. The second result is true when ts is ahead of now (Redis's clock went
-- backwards, e.g. after a failover): nothing is refilled, and the caller
-- should store the bucket at now so refill resumes from there.
local function settle(bucket_key, now, capacity, rate, scale)
  local b = redis.call('HMGET', bucket_key, 'tokens', 'ts')
  if not b[1] and not b[2] then
    return capacity, false
  end
  local tokens, ts = guard(b[1]), guard(b[2])
  if tokens == nil or ts == nil or tokens < 0 then
    -- Corrupt (no script writes tokens below 0): repaired empty, as of now
    -- (the caller stores it). Never full, which would widen the budget.
    return 0, true
  end
  local elapsed = now - ts
  if elapsed > 0 then
    tokens = tokens + elapsed * rate * scale / 1000000
  end
  if tokens > capacity then
    tokens = capacity
  end
  return tokens, elapsed < 0
end

local function store_bucket(bucket_key, tokens, now)
  redis.call('HSET', bucket_key, 'tokens', dec(tokens), 'ts', int(now))
end

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
