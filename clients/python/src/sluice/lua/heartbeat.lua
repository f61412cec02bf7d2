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



local function invalid(field, value, range)
  return redis.error_reply('INVALID_ARGUMENT ' .. field .. '=' .. tostring(value) .. ' must be ' .. range)
end







-- heartbeat.lua: a pipeline replica says it is alive (or leaving) and learns
-- how many replicas share the provider now.
--
-- KEYS[1]  replicas sorted set   <prefix>:replicas:{<provider>}
--                                member = replica id, score = expiry (Unix ms, Redis time)
-- ARGV[1]  op         beat | leave
-- ARGV[2]  replica    replica id (non-empty)
-- ARGV[3]  ttl_ms     integer in [1, 3600000]: how long this beat keeps the replica live
--
-- Expired members are removed first; the key itself expires ttl_ms after the
-- last beat, so a provider nobody uses leaves nothing behind.
-- Reply: integer, live replicas after the call.
-- Errors: INVALID_ARGUMENT op|replica|ttl_ms=<value> ...

local op, id, ttl = ARGV[1], ARGV[2], num(ARGV[3])
if op ~= 'beat' and op ~= 'leave' then
  return invalid('op', op, 'one of beat, leave')
end
if id == nil or id == '' then
  return invalid('replica', '', 'a non-empty id')
end
if not (ttl ~= nil and ttl == math.floor(ttl) and ttl >= 1 and ttl <= 3600000) then
  return invalid('ttl_ms', ARGV[3], 'an integer in [1, 3600000]')
end
local now_ms = math.floor(now_us() / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now_ms))
if op == 'leave' then
  redis.call('ZREM', KEYS[1], id)
else
  redis.call('ZADD', KEYS[1], int(now_ms + ttl), id)
  redis.call('PEXPIRE', KEYS[1], int(ttl))
end
return redis.call('ZCARD', KEYS[1])
