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




-- cooldown.lua: start or clear a provider's shared cooldown. While it lasts,
-- acquire.lua refuses every replica with reason "cooldown".
--
-- KEYS[1]  config hash    <prefix>:{<provider>}:config
-- KEYS[2]  cooldown key   <prefix>:{<provider>}:cooldown (string, JSON, with TTL)
-- ARGV[1]  op             set | clear
-- ARGV[2]  scope          free text: what tripped it (e.g. "pacing", "historical")
-- ARGV[3]  reason         free text
-- ARGV[4]  duration_ms    integer in [0, 86400000], or "" for the provider's cooldown_sec
-- ARGV[5]  channel        pub/sub channel told "cooldown cleared" on clear ("" = none)
--
-- set: the key holds {"scope":..,"reason":..,"until_ms":..,"set_at_ms":..} and
-- expires at until_ms. A cooldown is never shortened by a later, shorter set:
-- the one that ends last wins. A duration of 0 sets nothing.
-- Reply: array of 2: [1] until_ms (integer, 0 when none), [2] remaining_ms (integer).
-- Errors: UNKNOWN_PROVIDER <config key>; INVALID_ARGUMENT op|duration_ms=<value> ...

local cfg, bad = registered_config(KEYS[1])
if not cfg then
  return bad
end
local op = ARGV[1]
if op ~= 'set' and op ~= 'clear' then
  return invalid('op', op, 'one of set, clear')
end
local now_ms = math.floor(now_us() / 1000)

if op == 'clear' then
  if redis.call('DEL', KEYS[2]) == 1 and ARGV[5] ~= '' then
    redis.call('PUBLISH', ARGV[5], 'cooldown cleared')
  end
  return {0, 0}
end

local d = cfg.cooldown_sec * 1000
if ARGV[4] ~= '' then
  d = num(ARGV[4])
  if not (d ~= nil and d == math.floor(d) and d >= 0 and d <= 86400000) then
    return invalid('duration_ms', ARGV[4], 'an integer in [0, 86400000]')
  end
end
d = math.floor(d)

local until_ms = now_ms + d
local cur = redis.call('GET', KEYS[2])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  local cur_until = ok and type(c) == 'table' and tonumber(c.until_ms)
  if cur_until and cur_until >= until_ms then
    return {cur_until, cur_until - now_ms}
  end
end
if d <= 0 then
  return {0, 0}
end
local value = '{"scope":' .. cjson.encode(ARGV[2]) .. ',"reason":' .. cjson.encode(ARGV[3]) ..
  ',"until_ms":' .. int(until_ms) .. ',"set_at_ms":' .. int(now_ms) .. '}'
redis.call('SET', KEYS[2], value, 'PX', d)
return {until_ms, d}
