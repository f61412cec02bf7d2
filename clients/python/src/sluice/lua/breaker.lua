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




-- breaker.lua: report the outcome of a call to the provider, or reset the
-- shared circuit breaker. Failures are consecutive: a success in the closed
-- state sets the count back to 0.
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  breaker hash   <prefix>:{<provider>}:breaker (state, failures, opened_at, probe_until)
-- ARGV[1]  op             failure | success | reset
-- ARGV[2]  channel        pub/sub channel told "breaker closed" when it closes ("" = none)
--
-- failure: closed -> count it; at breaker_threshold the breaker opens (opened_at = now).
--          half_open (the probe failed) -> open again from now.
--          open -> counted; the open period is not extended.
--          breaker_threshold 0 disables the breaker: nothing is written.
-- success: closed -> failures back to 0; half_open (the probe succeeded) -> closed;
--          open -> nothing (the call began before the breaker opened).
-- reset:   closed, whatever the state (operator override).
-- A closed breaker with no failures is stored as no key at all.
--
-- Reply: array of 3: [1] state after the call, [2] failures (integer),
--   [3] retry_after_us (integer: time left while open, else 0).
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT op=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local op = ARGV[1]
if op ~= 'failure' and op ~= 'success' and op ~= 'reset' then
  return invalid('op', op, 'one of failure, success, reset')
end

local now = now_us()
local b = redis.call('HMGET', KEYS[2], 'state', 'failures', 'opened_at')
local state = b[1] or 'closed'
local failures = num(b[2]) or 0
local opened_at = num(b[3]) or 0
local timeout_us = cfg.breaker_timeout_sec * 1000000

local function close()
  redis.call('DEL', KEYS[2])
  if state ~= 'closed' and ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], 'breaker closed')
  end
  return {'closed', 0, 0}
end

local function open_reply()
  local left = opened_at + timeout_us - now
  if left < 0 then left = 0 end
  return {state, failures, math.ceil(left)}
end

if op == 'reset' then
  return close()
end

if op == 'success' then
  if state == 'half_open' or (state == 'closed' and failures > 0) then
    return close()
  end
  if state == 'open' then
    return open_reply()
  end
  return {'closed', 0, 0}
end

-- failure
if cfg.breaker_threshold == 0 then
  return {'closed', 0, 0}
end
failures = failures + 1
if state == 'half_open' or (state == 'closed' and failures >= cfg.breaker_threshold) then
  state = 'open'
  opened_at = now
  redis.call('HSET', KEYS[2], 'state', state, 'failures', failures, 'opened_at', int(now))
  redis.call('HDEL', KEYS[2], 'probe_until')
  return open_reply()
end
redis.call('HSET', KEYS[2], 'state', state, 'failures', failures)
if state == 'open' then
  return open_reply()
end
return {state, failures, 0}
