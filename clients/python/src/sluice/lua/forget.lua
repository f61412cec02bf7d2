-- sluice Lua prelude: prepended to every script in this directory (see docs/lua.md).
-- It defines helpers only and runs no Redis command by itself.





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







-- forget.lua: remove from a consumer group the consumers that have left:
-- those with no pending entry that have been idle for longer than ARGV[2]
-- milliseconds. The check and XGROUP DELCONSUMER run in one step, so a
-- consumer that reads or claims meanwhile is not removed and no pending
-- entry is ever lost with a removed consumer (DELCONSUMER drops its
-- pending list: here it is empty).
--
-- KEYS[1]  write stream   <prefix>:stream:{<stream>}
-- ARGV[1]  group          the consumer group (sluice: coordinators)
-- ARGV[2]  idle_ms        integer >= -1: the idle time, in milliseconds, a
--                         consumer must exceed (-1: any)
-- ARGV[3]… consumers      only these consumers (none given: every consumer
--                         of the group)
--
-- Reply: array of strings, the names of the consumers removed.
-- Errors: INVALID_ARGUMENT idle_ms=<value> ...; Redis's own (NOGROUP).

local limit = num(ARGV[2])
if not (limit ~= nil and limit % 1 == 0 and limit >= -1) then
  return invalid('idle_ms', ARGV[2], 'an integer >= -1')
end
local only = nil
if #ARGV > 2 then
  only = {}
  for i = 3, #ARGV do
    only[ARGV[i]] = true
  end
end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local h = {}
  for i = 1, #c, 2 do
    h[c[i]] = c[i + 1]
  end
  if (only == nil or only[h.name]) and h.pending == 0 and h.idle > limit then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], h.name)
    removed[#removed + 1] = h.name
  end
end
return removed
