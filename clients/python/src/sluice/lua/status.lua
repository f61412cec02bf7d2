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


local function unknown_provider(key)
  return redis.error_reply('UNKNOWN_PROVIDER ' .. key)
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

-- registered_config is load_config for a script that needs the provider:
-- the config, or nil and the error reply (UNKNOWN_PROVIDER or CORRUPT).
local function registered_config(key)
  local cfg, bad = load_config(key)
  if bad then
    return nil, bad
  end
  if cfg == nil then
    return nil, unknown_provider(key)
  end
  return cfg
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
